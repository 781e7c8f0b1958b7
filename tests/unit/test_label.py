"""Devices with an identity (invariant 5): a target opens only on a device formatted for it,
and checking a device never writes to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import NoDevice
from shoal.target.label import check_device, read_label
from shoal.target.mdt import MDT
from shoal.target.ost import OST


def ost(device: Path, name: str = "scratch-OST0000", fs: str = "scratch") -> OST:
    return OST(name, device, fs=fs, commit_interval=3600, index=int(name[-4:], 16))


def test_an_unformatted_or_missing_device_is_refused_and_left_alone(tmp_path: Path) -> None:
    missing = tmp_path / "ost0-typo"
    with pytest.raises(NoDevice, match="does not exist"):
        ost(missing).open()
    assert not missing.exists()  # nothing was created where the typo points
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoDevice, match="not formatted"):
        ost(empty).open()
    assert list(empty.iterdir()) == []


def test_format_writes_a_label_once_and_open_checks_it(tmp_path: Path) -> None:
    dev = tmp_path / "ost0"
    assert ost(dev).format() is True
    label = read_label(dev)
    assert label is not None
    assert (label.fs, label.target, label.kind, label.index) == ("scratch", "scratch-OST0000",
                                                                "OST", 0)
    assert len(label.uuid) == 36
    assert ost(dev).format() is False  # already this target's: nothing changes
    assert read_label(dev) == label
    o = ost(dev)
    o.open()
    assert o.epoch == 1
    o._close_db()
    assert check_device(dev, "scratch", "scratch-OST0000") == label


def test_another_targets_or_file_systems_device_is_refused(tmp_path: Path) -> None:
    dev = tmp_path / "ost1"
    ost(dev, "scratch-OST0001").format()
    with pytest.raises(NoDevice, match="holds scratch/scratch-OST0001, not scratch/scratch-OST0000"):
        ost(dev).open()
    with pytest.raises(NoDevice, match="holds scratch/scratch-OST0001"):
        ost(dev).format()  # never formatted over
    with pytest.raises(NoDevice, match="not other/scratch-OST0001"):
        ost(dev, "scratch-OST0001", fs="other").open()
    mdt = tmp_path / "mdt"
    MDT("scratch-MDT0000", mdt, fs="scratch", ost_count=2).format()
    with pytest.raises(NoDevice, match="holds scratch/scratch-MDT0000"):
        check_device(mdt, "scratch", "scratch-OST0000")
