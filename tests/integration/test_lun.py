"""Targets on shared block devices (loop devices standing in for SAN LUNs): `shoal format`
makes ext4 with the target inside and a raw label at the LUN's end; a node checks the label
and claims the MMP block without mounting, mounts only to serve, and unmounts on release."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.errors import NoDevice
from shoal.node.host import HostSpec
from shoal.node.server import NodeServer
from shoal.node.services import format_targets
from shoal.node.spec import ClusterSpec, TargetSpec, write_key
from shoal.protocol.mmp import MmpBlock
from shoal.target.label import check_device, read_label
from shoal.target.mmp import read_block, write_block

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"),
    reason="needs root, losetup and mkfs.ext4 (loop devices stand in for LUNs)")


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[list[Path]]:
    made: list[Path] = []
    try:
        for i in range(2):
            image = tmp_path / f"lun{i}.img"
            with open(image, "wb") as f:
                f.truncate(64 << 20)
            dev = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                                 capture_output=True, text=True).stdout.strip()
            made.append(Path(dev))
        yield made
    finally:
        for dev in made:
            subprocess.run(["losetup", "-d", str(dev)], check=False)


def spec_for(devs: list[Path], port: int = 1) -> ClusterSpec:
    targets = [TargetSpec("MGS", "MGT", 0, ["n1"], {"n1": str(devs[0])}),
               TargetSpec("lunfs-OST0000", "OST", 0, ["n1"], {"n1": str(devs[1])},
                          fs="lunfs")]
    return ClusterSpec(fs="lunfs", port=port, nids={"n1": "127.0.0.1"}, targets=targets)


def test_format_labels_the_lun_raw_and_refuses_another_target(loops: list[Path]) -> None:
    spec = spec_for(loops)
    assert read_label(loops[1]) is None  # a blank LUN: no label, no file system touched
    assert format_targets(spec) == {"MGS": True, "lunfs-OST0000": True}
    label = read_label(loops[1])
    assert label is not None and (label.fs, label.target) == ("lunfs", "lunfs-OST0000")
    assert check_device(loops[1], "lunfs", "lunfs-OST0000") == label
    with pytest.raises(NoDevice, match="holds lunfs/lunfs-OST0000"):
        check_device(loops[1], "lunfs", "lunfs-OST0001")
    assert format_targets(spec) == {"MGS": False, "lunfs-OST0000": False}  # never twice
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(loops[1])],
                           capture_output=True, text=True).stdout.strip()
    assert blkid == "ext4"


def test_mmp_block_lives_raw_on_the_lun(loops: list[Path]) -> None:
    format_targets(spec_for(loops))
    assert read_block(loops[1]) is None
    block = MmpBlock(7, "n1", 42, time.time())
    write_block(loops[1], block)
    assert read_block(loops[1]) == block
    assert read_label(loops[1]) is not None  # the label beside it is intact


async def test_a_node_mounts_the_lun_to_serve_and_unmounts_on_release(
        loops: list[Path], tmp_path: Path) -> None:
    spec = spec_for(loops)
    format_targets(spec)
    write_key(tmp_path)
    server = NodeServer(HostSpec.single(spec, "n1"), b"k" * 32, tmp_path)
    svc = await server.start_target("lunfs-OST0000")
    where = tmp_path / "targets" / "lunfs-OST0000"
    assert os.path.ismount(where) and svc.device == where
    assert svc.epoch == 1
    await server.stop_target("lunfs-OST0000")
    assert not os.path.ismount(where)
    svc = await server.start_target("lunfs-OST0000")  # the epoch was kept on the LUN
    assert svc.epoch == 2
    await server.stop_target("lunfs-OST0000")
    assert not os.path.ismount(where)
