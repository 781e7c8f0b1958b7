"""Two mounts of one file system, each keeping names and attributes in the kernel under the
MDT's locks (issue 20): what one changes, the other sees at the next look, however long the
kernel would otherwise keep it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from tests.mount.conftest import Mount


def test_what_one_mount_changes_the_other_sees_at_once(work: Path, mnt: Mount, mnt2: Mount,
                                                        lib: SyncClient) -> None:
    rel = work.relative_to(mnt.path)
    a, b = work, mnt2.path / rel
    (a / "f").write_bytes(b"1234")
    for _ in range(3):  # cached by both kernels now
        assert stat.S_IMODE((b / "f").stat().st_mode) == 0o644
        assert (a / "f").stat().st_size == 4
    os.chmod(a / "f", 0o600)
    assert stat.S_IMODE((b / "f").stat().st_mode) == 0o600
    (b / "f").write_bytes(b"123456789")
    assert (a / "f").stat().st_size == 9
    assert (a / "f").read_bytes() == b"123456789"
    os.rename(b / "f", b / "g")
    assert not (a / "f").exists()
    assert (a / "g").read_bytes() == b"123456789"
    (a / "d").mkdir()
    assert sorted(p.name for p in b.iterdir()) == ["d", "g"]
    os.rmdir(a / "d")
    with pytest.raises(FileNotFoundError):
        (b / "d").stat()
    os.unlink(b / "g")
    assert not (a / "g").exists()
    # the library (no locks) and the mounts agree
    lib.create(f"/{rel}/h", 0o640)
    assert stat.S_IMODE((a / "h").stat().st_mode) == 0o640
    lib.chmod(f"/{rel}/h", 0o604)
    assert stat.S_IMODE((b / "h").stat().st_mode) == 0o604
    assert stat.S_IMODE((a / "h").stat().st_mode) == 0o604
