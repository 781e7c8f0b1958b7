"""Real FUSE mounts of a real local cluster: `shoal mount --foreground` processes."""

from __future__ import annotations

import itertools
import os
import socket
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from shoal.mount.run import check_fuse
from shoal.workload.bench_mount import start_mount, stop_mount
from tests.mount.failover_helpers import Mounts

_FUSE = check_fuse()
if not _FUSE.ok:
    pytest.skip(f"FUSE is not available here: {_FUSE.reason}", allow_module_level=True)

_names = itertools.count()


@dataclass
class Mount:
    path: Path
    log: Path
    pid: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def mount_on(cluster: LocalCluster, where: Path, *options: str) -> Iterator[Mount]:
    mountpoint = where / "mnt"
    mountpoint.mkdir(parents=True)
    log = where / "mount.log"
    proc = start_mount(cluster.dir, mountpoint, list(options), log)
    try:
        yield Mount(mountpoint, log, proc.pid)
    finally:
        stop_mount(proc)


def metered(cluster: LocalCluster, where: Path
            ) -> Iterator[tuple[Mount, Callable[[], dict[str, float]]]]:
    """A mount serving its metrics, and a function that reads them: its FUSE requests so
    far by operation, its early reads by outcome (`early_<outcome>`), and `kernel_late`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def read() -> dict[str, float]:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our own mount
            text = r.read().decode()
        samples = [x for fam in text_string_to_metric_families(text) for x in fam.samples]
        return {**{x.labels["op"]: x.value for x in samples
                   if x.name == "shoal_mount_requests_total"},
                **{f"early_{x.labels['outcome']}": x.value for x in samples
                   if x.name == "shoal_mount_early_reads_total"},
                "kernel_late": sum(x.value for x in samples
                                   if x.name == "shoal_mount_kernel_late_total")}

    for m in mount_on(cluster, where, f"metrics=127.0.0.1:{port}"):
        yield m, read


@pytest.fixture(scope="session")
def mnt(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """The session cluster mounted (a client of its own); tests use their own directories."""
    yield from mount_on(cluster, tmp_path_factory.mktemp("mount-a"))


@pytest.fixture(scope="session")
def mnt2(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """A second mount of the same cluster: another client."""
    yield from mount_on(cluster, tmp_path_factory.mktemp("mount-b"))


@pytest.fixture
def work(mnt: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory on the mount for one test."""
    d = mnt.path / f"{request.node.name[:40]}-{os.getpid()}-{next(_names)}"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def lib(cluster: LocalCluster) -> Iterator[SyncClient]:
    """The library, as a third client, to check what the mounts did."""
    with SyncClient.from_cluster_dir(cluster.dir) as c:
        yield c


@pytest.fixture
def mounts(fresh_cluster: LocalCluster, tmp_path: Path) -> Iterator[Mounts]:
    """Mounts of a test's own cluster (failover tests); each is stopped cleanly at the end
    and its log shows no error and no module loaded in the recovery path."""
    ms = Mounts(fresh_cluster, tmp_path)
    try:
        yield ms
    finally:
        codes = [stop_mount(m.proc) for m in ms.all]
    assert codes == [0] * len(codes), [m.log.read_text(errors="replace")[-2000:] for m in ms.all]
    for m in ms.all:
        m.check_log()
