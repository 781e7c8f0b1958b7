"""The code's shape, checked from its imports (ast, not by running it):

- protocol/ is sans-I/O: it imports no sockets, clocks, threads, processes or event loops,
  and nothing of Shoal outside protocol/ except the one exception hierarchy (errors.py);
- layers point one way: cli -> workload/mount -> rig -> cluster/client/agent -> fence ->
  node -> target -> net/ldlm -> protocol, with errors, config and store usable from anywhere
  (the rig is what torture and the benchmarks strike, below them).
  Imports between the peers of one layer are listed below, each with its reason; a new one
  (or one going up) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "shoal"

IO_MODULES = {"socket", "asyncio", "time", "threading", "subprocess", "os", "select",
              "selectors", "ssl", "signal", "multiprocessing", "random", "uvloop", "grpc"}
SHARED = {"errors", "config", "store"}  # leaves every layer may use
LEVEL = {"__main__": -1, "cli": 0, "workload": 1, "mount": 1, "rig": 1.5, "cluster": 2,
         "client": 2, "agent": 2, "fence": 3, "node": 4, "target": 5, "net": 6, "ldlm": 6,
         "sim": 6.5, "protocol": 7}  # sim: protocol's classes in virtual time, nothing else
# (from, to): why a package imports a peer of its own layer
SIDEWAYS = {
    ("client", "cluster"): "Client.from_cluster_dir reads a local cluster's or the store's "
                           "layout (cluster/site.py), imported lazily",
    ("cluster", "agent"): "a local cluster reads the agents' records and status from the store",
    ("workload", "mount"): "bench mount mounts the file system it measures",
}


def imports(path: Path) -> list[str]:
    """The modules `path` imports at run time (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def package(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else path.stem


@pytest.mark.parametrize("path", sorted((SRC / "protocol").glob("*.py")), ids=lambda p: p.name)
def test_protocol_modules_are_pure(path: Path) -> None:
    bad = []
    for mod in imports(path):
        top = mod.split(".")[0]
        if top in IO_MODULES:
            bad.append(mod)
        elif top == "shoal" and mod.split(".")[1] not in ("protocol", "errors"):
            bad.append(mod)
    assert not bad, f"{path.name} imports {bad}"


def test_layers_point_one_way() -> None:
    found = set()
    wrong = []
    for path in SRC.rglob("*.py"):
        src = package(path)
        for mod in imports(path):
            parts = mod.split(".")
            if parts[0] != "shoal" or len(parts) < 2:
                continue
            dst = parts[1]
            if dst == src or dst in SHARED or src in SHARED:
                continue
            if (src, dst) in SIDEWAYS:
                found.add((src, dst))
                continue
            if src not in LEVEL or dst not in LEVEL or LEVEL[dst] <= LEVEL[src]:
                wrong.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not wrong, "\n".join(sorted(wrong))
    assert found == set(SIDEWAYS), f"no longer needed: {set(SIDEWAYS) - found}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import time\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    import socket\nfrom shoal.node import server\n")
    assert imports(f) == ["time", "typing", "shoal.node"]
