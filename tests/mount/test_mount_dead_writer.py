"""A mount that kept a file's pages sees what a writer that died wrote to it, once the nodes
have evicted the writer (node/evictor.py moves the file's ctime, which the mount checks
beside the version before it keeps pages: mount/handles.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.sync import SyncClient
from shoal.cluster.local import LocalCluster
from tests.conftest import EXAMPLE
from tests.evict_helpers import exports, start_dead_writer, wait_for, with_evict_timeout
from tests.helpers import ost_reads
from tests.mount.conftest import Mount, mount_on

MiB = 1 << 20


@pytest.fixture
def evicting(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster")
    c.up(with_evict_timeout(EXAMPLE, tmp_path, 2.0), timeout=60)
    yield c
    c.down()


@pytest.fixture
def emnt(evicting: LocalCluster, tmp_path: Path) -> Iterator[Mount]:
    yield from mount_on(evicting, tmp_path / "m")


def test_pages_kept_of_a_file_a_dead_writer_changed_are_dropped(evicting: LocalCluster,
                                                                emnt: Mount) -> None:
    with SyncClient.from_cluster_dir(evicting.dir) as lib:
        lib.write_file("/inplace", b"A" * MiB)
    f = emnt.path / "inplace"
    assert f.read_bytes() == b"A" * MiB
    reads = ost_reads(evicting.dir)
    assert f.read_bytes() == b"A" * MiB
    assert ost_reads(evicting.dir) == reads  # the pages are kept: nothing read again
    writer = start_dead_writer(evicting, "dead-writer")  # same size, in place, no close
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    wait_for("the dead writer evicted", lambda: "dead-writer" not in exports(evicting))
    assert f.read_bytes() == b"B" * MiB
