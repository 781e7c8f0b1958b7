"""run_store_bench, shortened: every number is there and none is absurd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.store.bench import run_store_bench


@pytest.mark.etcd
async def test_store_bench_reports_both_backends(tmp_path: Path) -> None:
    messages: list[str] = []
    out = await run_store_bench(tmp_path, messages.append, trials=1, ttl=1.0, rate_seconds=0.2)
    for backend in ("sqlite", "etcd"):
        late, total = out[f"detect_s_{backend}"], out[f"detect_total_s_{backend}"]
        # A lease never expires before its deadline; how late is machine noise, loosely bounded.
        assert -0.05 <= late < 5.0, (backend, late)
        # total - late is the TTL the store granted: 1 s asked, etcd's minimum is 2 s.
        assert round(total - late, 3) == (1.0 if backend == "sqlite" else 2.0)
        assert out[f"detect_trials_{backend}"] == [late]
        assert out[f"cas_per_s_{backend}"] > 10 and out[f"put_per_s_{backend}"] > 10
        assert 0 < out[f"watch_ms_{backend}"] < 1000
    assert any("etcd" in m for m in messages) and any("sqlite" in m for m in messages)
    state = json.loads((tmp_path / "store-bench" / "etcd" / "etcd-cluster.json").read_text())
    assert [m["pid"] for m in state["members"]] == [0]  # the bench stopped its etcd
