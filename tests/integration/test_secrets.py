"""Secrets stay secret (issue 17): a fence agent's password is masked wherever Shoal shows
the configuration (config show, the config write diff, status), and every file that holds
it, or the file system's data, is private to its owner (0600 files, 0700 directories)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import shoal

SECRET = "hunter2"
FS_DEFS = f"""fs_name="sec"
NID_MAP="n1=127.0.8.1 n2=127.0.8.2"
MGSDEV="n1:mgt n2:mgt"
MDSDEV[0]="n1:mdt0 n2:mdt0"
OSTDEV[0]="n2:ost0 n1:ost0"
FENCE_METHOD="local"
FENCE[n2]="fence-agent:fence_ipmilan ip=10.0.0.2 username=admin password={SECRET} lanplus=1"
"""


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("sec")
    (d / "sec.fs_defs").write_text(FS_DEFS)
    shoal("up", "--fs-defs", str(d / "sec.fs_defs"), cluster_dir=d / "run")
    try:
        yield d
    finally:
        shoal("down", cluster_dir=d / "run", check=False)


def test_the_password_is_masked_wherever_the_configuration_is_shown(sec: Path) -> None:
    run = sec / "run"
    for fmt in ("fs_defs", "json", "tables"):
        out = shoal("config", "show", "--format", fmt, cluster_dir=run).stdout
        assert SECRET not in out and "password=***" in out, fmt
    shown = shoal("config", "show", "--show-secrets", cluster_dir=run).stdout
    assert f"password={SECRET}" in shown  # for the administrator who asks
    changed = sec / "changed.fs_defs"
    changed.write_text(FS_DEFS.replace("lanplus=1", "lanplus=0"))
    diff = shoal("config", "write", "--dry-run", str(changed), cluster_dir=run)
    assert SECRET not in diff.stdout + diff.stderr and "password=***" in diff.stdout
    status = shoal("status", "--json", cluster_dir=run).stdout
    assert SECRET not in status


def test_files_that_hold_secrets_or_data_are_private(sec: Path, tmp_path: Path) -> None:
    run = sec / "run"
    src = tmp_path / "data"
    src.write_bytes(os.urandom(300_000))
    shoal("fs", "put", str(src), "/data", cluster_dir=run)
    for name in ("cluster.json", "store.db", "key"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name
    loose = []
    for root, dirs, files in os.walk(run / "devices"):
        for name in dirs:
            if stat.S_IMODE(os.stat(Path(root) / name).st_mode) & 0o077:
                loose.append(str(Path(root) / name))
        for name in files:
            if stat.S_IMODE(os.stat(Path(root) / name).st_mode) & 0o077:
                loose.append(str(Path(root) / name))
    assert not loose, loose[:10]
    for log in (run / "logs").iterdir():
        assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0, log
