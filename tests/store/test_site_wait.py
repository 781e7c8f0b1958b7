"""A client or command that reads the configuration while the store does not answer (an etcd
electing a new leader after its leader's host lost power) waits for it, within a bound,
instead of failing at once (cluster/site.py store_specs): the rig's torture saw two load
clients crash on it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from shoal.cluster.site import store_specs
from shoal.config.fs_defs import parse_fs_defs_text
from shoal.config.write_conf import write_conf
from shoal.errors import StoreUnreachable
from shoal.store import open_store
from shoal.store.etcd_server import EtcdCluster
from tests.conftest import EXAMPLE

pytestmark = pytest.mark.etcd


async def configure(url: str) -> None:
    async with open_store(url) as store:
        await write_conf(store, [parse_fs_defs_text(EXAMPLE.read_text(), str(EXAMPLE))[0]])


async def test_the_configuration_is_read_once_the_store_answers_again(
        etcd_solo: EtcdCluster, tmp_path: Path) -> None:
    await configure(etcd_solo.url)
    etcd_solo.kill_member(0, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    loop.call_later(3.0, etcd_solo.kill_member, 0, signal.SIGCONT)
    t0 = time.monotonic()
    specs = await store_specs(etcd_solo.url, devices_dir=tmp_path)
    assert list(specs) == ["scratch"] and time.monotonic() - t0 >= 2.5


async def test_a_store_that_stays_away_is_unreachable_after_the_wait(
        etcd_solo: EtcdCluster, tmp_path: Path) -> None:
    await configure(etcd_solo.url)
    etcd_solo.kill_member(0, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnreachable):
            await store_specs(etcd_solo.url, devices_dir=tmp_path, wait=3.0)
    finally:
        etcd_solo.kill_member(0, signal.SIGCONT)
