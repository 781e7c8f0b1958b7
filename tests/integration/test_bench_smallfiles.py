"""`shoal bench smallfiles` on a small tree of its own: every row measured on both sides, the
copy on the mount the same as the local one (diff -r passes, or the row fails); with
--against, every row in a third directory too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cluster.local import LocalCluster
from shoal.workload.bench_smallfiles import ROWS, remount_far, run_bench_smallfiles


def small_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    lib = tree / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    for i in range(40):
        (lib / f"mod{i}.py").write_text(f"X = {i}\n")
        (tree / f"data{i}.txt").write_text("x" * (i * 100))
    return tree


def test_every_row_on_both_sides(cluster: LocalCluster, tmp_path: Path) -> None:
    tree = small_tree(tmp_path)
    steps: list[str] = []
    res = run_bench_smallfiles(cluster.dir, tree=tree, lib="lib", step=steps.append)
    assert res["modules"] == 41 and res["entries"] == 83
    for row in ROWS:
        assert res[f"{row}_mount_s"] > 0, row
        assert res[f"{row}_ratio"] > 0, row
    assert any("the mount" in s for s in steps)


def consistent(r: float, num: float, den: float) -> bool:
    """r (3 decimals) is num / den, taken before both were rounded to the millisecond."""
    lo, hi = (num - 5e-4) / (den + 5e-4), (num + 5e-4) / max(den - 5e-4, 1e-9)
    return lo - 5e-4 <= r <= hi + 5e-4


def test_every_row_against_another_directory(cluster: LocalCluster, tmp_path: Path) -> None:
    tree = small_tree(tmp_path)
    far = tmp_path / "far"
    far.mkdir()
    (far / "kept").write_text("not the bench's")
    steps: list[str] = []
    res = run_bench_smallfiles(cluster.dir, tree=tree, lib="lib", against=far,
                               against_remount="true", step=steps.append)
    assert res["against"] == str(far) and res["against_cold"] is True
    for row in ROWS:
        local, mount, there = (res[f"{row}_{s}_s"] for s in ("local", "mount", "against"))
        assert there > 0 and mount > 0, row
        assert consistent(res[f"{row}_against_ratio"], local, there), row
        assert consistent(res[f"{row}_vs_against"], there, mount), row
        assert res[f"{row}_ratio"] > 0, row
    assert any(str(far) in s for s in steps)
    assert [p.name for p in far.iterdir()] == ["kept"]  # the bench's own directory is gone
    # a remount that fails, or that does not bring the directory back, stops the bench
    with pytest.raises(RuntimeError, match="exit 3: gone wrong"):
        remount_far("echo gone wrong >&2; exit 3", far)
    with pytest.raises(RuntimeError, match="is gone after it"):
        remount_far("true", far / "not-there")


@pytest.mark.parametrize("args, reason", [
    (["--against", "/no/such/dir"], "does not exist"),
    (["--against", __file__], "is a file"),
    (["--against-remount", "true"], "needs --against"),
])
def test_a_wrong_against_is_a_usage_error(tmp_path: Path, args: list[str], reason: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "shoal", "bench", "smallfiles", "--dir",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert reason in proc.stderr and "Traceback" not in proc.stderr
