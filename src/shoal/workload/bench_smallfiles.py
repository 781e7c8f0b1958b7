"""`shoal bench smallfiles`: the work of many small files, on the mount against the local disk.

The tree is a directory of the machine (default /usr/lib/python3: about 7,600 entries and
160 MB, the tree of the table in issue 20), packed into a tarball once. Each row runs the
same command on both sides and reports both times and `<row>_ratio` (local time / mount
time: 1.0 is as fast as the local disk):

    untar        tar x of the tree, then sync
    find_cold    find -ls, on a mount just made (nothing cached in the client or the kernel)
    find_warm    find -ls again
    du           du -s
    diff         diff -r against the other side's copy
    rsync_dry    rsync -a --dry-run from the other side's copy (no changes)
    import_1     python3 importing up to 400 modules from the tree (byte code written)
    import_2     the same again
    git_clone    git clone --no-local of Shoal's own repository (when this is a checkout)
    git_status   git status in the clone
    rm_rf        rm -rf of everything above

The local side runs in the run's directory on the machine's disk. Its caches are warm for
every row (dropping them would disturb the rest of a shared machine): a cold row compares
a cold mount with a warm local disk.

With `against` (a directory on another file system: a GlusterFS or NFS mount), every row
also runs there, in a directory of its own removed at the end, and each row gains
`<row>_against_s`, `<row>_against_ratio` (local time / its time) and `<row>_vs_against`
(its time / mount time: above 1 the mount is ahead). Its find_cold is cold only when
`against_remount` (a shell command, run before that row) remounts it; else its caches are
as warm as the local disk's (`against_cold` says which).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shoal.workload.bench_mount import start_mount, stop_mount
from shoal.workload.rounds import Round, in_turn, ratio, run_rounds

ROWS = ("untar", "find_cold", "find_warm", "du", "diff", "rsync_dry", "import_1", "import_2",
        "git_clone", "git_status", "rm_rf")
IMPORTS = 400
CMD_TIMEOUT = 1800.0
REPO = Path(__file__).resolve().parents[3]  # a checkout of Shoal, when it is one


def _run(argv: list[str], *, cwd: Path | None = None, ok: tuple[int, ...] = (0,),
         env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         timeout=CMD_TIMEOUT, env=env, check=False)
    if res.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: "
                           f"{res.stderr.decode(errors='replace')[-500:]}")
    return time.perf_counter() - t0


def pack(tree: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w") as tar:
        tar.add(str(tree), arcname=tree.name)


def importable(lib: Path, limit: int = IMPORTS) -> list[str]:
    """Top-level modules of `lib` that import cleanly in a fresh interpreter, at most `limit`."""
    names = sorted({p.stem if p.suffix == ".py" else p.name for p in lib.iterdir()
                    if (p.suffix == ".py" or (p / "__init__.py").exists())
                    and p.stem.isidentifier() and not p.name.startswith("_")})
    ok: list[str] = []
    for name in names:
        if len(ok) >= limit:
            break
        res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=lib,
                             capture_output=True, timeout=60, check=False,
                             env={**os.environ, "PYTHONPATH": str(lib),
                                  "PYTHONDONTWRITEBYTECODE": "1"})
        if res.returncode == 0:
            ok.append(name)
    return ok


def _side(base: Path, other: Path, tarball: Path, tree_name: str, lib_rel: str,
          modules: list[str], remount: Callable[[], None]) -> dict[str, float]:
    """Every row on one side (`base`), `other` being the other side's copy of the tree."""
    t: dict[str, float] = {}
    tree = base / tree_name
    t["untar"] = _run(["tar", "xf", str(tarball), "-C", str(base)])
    t["untar"] += _run(["sync"])
    remount()
    t["find_cold"] = _run(["find", str(tree), "-ls"])
    t["find_warm"] = _run(["find", str(tree), "-ls"])
    t["du"] = _run(["du", "-s", str(tree)])
    t["diff"] = _run(["diff", "-r", str(other / tree_name), str(tree)])
    t["rsync_dry"] = _run(["rsync", "-a", "--dry-run", f"{other / tree_name}/", f"{tree}/"])
    lib = tree / lib_rel
    env = {**os.environ, "PYTHONPATH": str(lib)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # one after the other, each on its own: together some fight (setuptools' distutils
    # shim against another's distutils), and a row must not fail for that
    code = (f"for m in {modules!r}:\n try:\n  __import__(m)\n except Exception:\n  pass")
    t["import_1"] = _run([sys.executable, "-c", code], cwd=lib, env=env)
    t["import_2"] = _run([sys.executable, "-c", code], cwd=lib, env=env)
    clone = base / "clone"
    if (REPO / ".git").exists():
        t["git_clone"] = _run(["git", "clone", "-q", "--no-local", str(REPO), str(clone)])
        t["git_status"] = _run(["git", "status", "--porcelain"], cwd=clone)
    else:
        t["git_clone"] = t["git_status"] = 0.0
    t["rm_rf"] = _run(["rm", "-rf", str(tree), str(clone)])
    return t


@contextmanager
def _far_dir(against: Path | None) -> Iterator[Path | None]:
    """A directory of the bench's own in `against` (None without it), removed at the end."""
    if against is None:
        yield None
        return
    far = Path(tempfile.mkdtemp(prefix="shoal-bench-smallfiles-", dir=against))
    try:
        yield far
    finally:
        shutil.rmtree(far, ignore_errors=True)


def remount_far(cmd: str | None, far: Path) -> None:
    """Run --against-remount's command (nothing without one), then check `far` is back."""
    if not cmd:
        return
    res = subprocess.run(cmd, shell=True, capture_output=True, timeout=CMD_TIMEOUT, check=False)
    if res.returncode:
        raise RuntimeError(f"--against-remount {cmd!r}: exit {res.returncode}: "
                           f"{res.stderr.decode(errors='replace')[-500:].strip()}")
    if not far.is_dir():
        raise RuntimeError(f"--against-remount {cmd!r}: {far} is gone after it (does it "
                           f"mount the same file system back at the same place?)")


def run_bench_smallfiles(cluster_dir: Path, *, tree: Path = Path("/usr/lib/python3"),
                         lib: str = "dist-packages", rounds: int = 1,
                         options: list[str] | None = None, against: Path | None = None,
                         against_remount: str | None = None,
                         step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    cluster_dir = Path(os.path.abspath(cluster_dir))
    tree = Path(tree)
    if not (tree / lib).is_dir():
        lib = "."
    with (tempfile.TemporaryDirectory(prefix="bench-smallfiles-", dir=cluster_dir) as tmp,
          _far_dir(against) as far):
        work = Path(tmp)
        tarball = work / "tree.tar"
        step("packing the tree")
        pack(tree, tarball)
        local, mnt, seed = work / "local", work / "mnt", work / "seed"
        for d in (local, mnt, seed):
            d.mkdir()
        with tarfile.open(tarball) as tar:
            tar.extractall(seed, filter="tar")  # the copy each side is compared with
        step("finding importable modules")
        modules = importable(seed / tree.name / lib)
        log = work / "mount.log"
        mount = [start_mount(cluster_dir, mnt, options or [], log)]

        def remount() -> None:
            stop_mount(mount[0])
            mount[0] = start_mount(cluster_dir, mnt, options or [], log)

        # each side: its directory, what makes it cold before find_cold, its name in steps
        sides: dict[str, tuple[Path, Callable[[], None], str]] = {
            "local": (local, lambda: None, "the local disk"),
            "mount": (mnt, remount, "the mount")}
        if far is not None:
            sides["against"] = (far, lambda: remount_far(against_remount, far), str(against))

        def one_round(i: int) -> Round:
            t: dict[str, dict[str, float]] = {}
            for name in in_turn(list(sides), i):
                base, cold, label = sides[name]
                step(f"round {i + 1}: {label}")
                t[name] = _side(base, seed, tarball, tree.name, lib, modules, cold)
            lt, mt = t["local"], t["mount"]
            r: Round = {}
            for row in ROWS:
                r[f"{row}_local_s"] = round(lt[row], 3)
                r[f"{row}_mount_s"] = round(mt[row], 3)
                r[f"{row}_ratio"] = ratio(lt[row], mt[row])
                if "against" in t:
                    at = t["against"][row]
                    r[f"{row}_against_s"] = round(at, 3)
                    r[f"{row}_against_ratio"] = ratio(lt[row], at)
                    r[f"{row}_vs_against"] = ratio(at, mt[row])
            return r

        try:
            res = run_rounds(rounds, one_round)
        finally:
            stop_mount(mount[0])
            shutil.rmtree(seed, ignore_errors=True)
    entries = sum(len(d) + len(f) for _r, d, f in os.walk(tree))
    far_keys = ({"against": str(against), "against_cold": bool(against_remount)}
                if against is not None else {})
    return {"tree": str(tree), "entries": entries, "modules": len(modules), **far_keys, **res}
