"""Devices with an identity (issue 16, invariant 5): a typo in a backup's device path makes
the takeover fail loudly. Before, the backup formatted an empty OST at the typo path, served
it in epoch 1, and `fs get` of a 20 MiB file returned zeros with exit status 0."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from tests.scenarios.harness import (
    Load,
    Probe,
    assert_clean,
    events,
    served_by,
    targets,
    wait_for,
)

OSS_A, OSS_B = "nid00062", "nid00063"
OST0 = "scratch-OST0000"

pytestmark = pytest.mark.timeout(150)


def typo_fs_defs(tmp_path: Path) -> Path:
    example = Path(__file__).resolve().parents[2] / "src/shoal/cluster/scratch.fs_defs"
    text = example.read_text()
    good = 'OSTDEV[0]="nid00062:ost0 nid00063:ost0"'
    assert good in text
    path = tmp_path / "fs_defs"
    path.write_text(text.replace(good, 'OSTDEV[0]="nid00062:ost0 nid00063:ost0-typo"'))
    return path


def test_a_device_path_typo_on_the_backup_is_refused_never_served(tmp_path: Path) -> None:
    cl = LocalCluster(tmp_path / "cluster")
    cl.up(typo_fs_defs(tmp_path), timeout=60)
    typo = Path(cl.spec.target(OST0).devices[OSS_B])
    assert typo.name == "ost0-typo" and not typo.exists()
    probe = Probe()
    c = probe.client(cl)
    data = hashlib.blake2b(b"precious").digest() * (1 << 15)  # 2 MiB
    try:
        probe.run(c.write_file("/precious", data, stripe_count=1, stripe_offset=0))
        probe.run(c.sync_all())
        load = Load(cl, clients=4, duration=8.0)
        time.sleep(1.0)
        t0 = time.time()
        assert cl.kill_node(OSS_A)

        def refused() -> bool:
            t = targets(cl)[OST0]
            return t["state"] == "DOWN" and "ost0-typo does not exist" in (t["reason"] or "")

        wait_for("OST0000 DOWN with the reason", refused, timeout=30)
        alerts = [e for e in events(cl, t0) if e.kind == "device_refused" and e.target == OST0]
        assert alerts and alerts[0].node == OSS_B and alerts[0].data.get("alert"), alerts
        assert not typo.exists()  # nothing was formatted, nothing created
        assert targets(cl)["scratch-OST0002"]["owner"] == OSS_B  # the good path failed over
        # the primary comes back and serves the OST from its real device, data and all
        cl.start_node(OSS_A)
        wait_for("OST0000 served by its primary again", served_by(cl, OSS_A, [OST0]),
                 timeout=40)
        assert probe.run(c.read_file("/precious")) == data
        assert_clean(load.result())
    finally:
        probe.close(c)
        cl.down()
