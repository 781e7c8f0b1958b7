"""`shoal bench smallfiles` on a small tree of its own: every row measured on both sides, the
copy on the mount the same as the local one (diff -r passes, or the row fails)."""

from __future__ import annotations

from pathlib import Path

from shoal.cluster.local import LocalCluster
from shoal.workload.bench_smallfiles import ROWS, run_bench_smallfiles


def test_every_row_on_both_sides(cluster: LocalCluster, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    lib = tree / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    for i in range(40):
        (lib / f"mod{i}.py").write_text(f"X = {i}\n")
        (tree / f"data{i}.txt").write_text("x" * (i * 100))
    steps: list[str] = []
    res = run_bench_smallfiles(cluster.dir, tree=tree, lib="lib", step=steps.append)
    assert res["modules"] == 41 and res["entries"] == 83
    for row in ROWS:
        assert res[f"{row}_mount_s"] > 0, row
        assert res[f"{row}_ratio"] > 0, row
    assert any("the mount" in s for s in steps)
