"""The MDT against the kernel: random namespace operations, same errors, same tree.

Every step runs one operation on the MDT and the same one on a real directory in a temp
dir through os; the errno names must agree (success included), and after each step both
trees must hold the same paths with the same types, link counts and hard-link groups.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shoal.protocol import messages as m
from shoal.target.mdt import MDT

NAME = "scratch-MDT0000"

paths = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))


class NamespaceVsKernel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mdt-model-"))
        self.root = self.tmp / "local"
        self.root.mkdir()
        self.mdt = MDT(NAME, self.tmp / "mdt", fs="scratch", ost_count=2)
        self.mdt.open(create=True)
        self.xid = 0

    def teardown(self) -> None:
        self.mdt._close_db()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def local(self, path: str) -> str:
        return str(self.root) + path

    def call(self, op: str, **args: Any) -> m.Reply:
        self.xid += 1
        reply, _ = self.mdt.handle("model", m.Request(self.xid, op, NAME, args))
        return reply

    def both(self, local: Callable[[], object], op: str, **args: Any) -> None:
        try:
            local()
            want = None
        except OSError as exc:
            want = errno.errorcode[exc.errno]
        got = self.call(op, **args)
        assert got.status == want, f"{op} {args}: MDT {got.status} ({got.message}), os {want}"

    # -- operations ----------------------------------------------------------------------
    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.both(lambda: os.mkdir(self.local(path)), "mkdir", path=path)

    @rule(path=paths)
    def create(self, path: str) -> None:
        def local() -> None:
            os.close(os.open(self.local(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

        self.both(local, "create", path=path, mode=0o644)

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(lambda: os.unlink(self.local(path)), "unlink", path=path)

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(lambda: os.rmdir(self.local(path)), "rmdir", path=path)

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self.both(lambda: os.rename(self.local(src), self.local(dst)), "rename", src=src, dst=dst)

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.both(lambda: os.link(self.local(src), self.local(dst)), "link", src=src, path=dst)

    # -- the trees must agree ------------------------------------------------------------
    def local_tree(self) -> dict[str, tuple[str, int, int]]:
        out: dict[str, tuple[str, int, int]] = {}

        def walk(rel: str) -> None:
            for entry in os.scandir(self.local(rel or "/")):
                p = f"{rel}/{entry.name}"
                s = entry.stat(follow_symlinks=False)
                kind = "d" if entry.is_dir(follow_symlinks=False) else "f"
                out[p] = (kind, s.st_nlink, s.st_ino)
                if kind == "d":
                    walk(p)

        walk("")
        return out

    def mdt_tree(self) -> dict[str, tuple[str, int, int]]:
        out: dict[str, tuple[str, int, int]] = {}

        def walk(path: str) -> None:
            cookie = 0
            while True:
                r = self.call("readdir", path=path or "/", cookie=cookie, count=2)
                assert r.status is None, r.message
                for name, ino, kind in r.data["entries"]:
                    p = f"{path}/{name}"
                    attr = self.call("getattr", path=p).data
                    assert (attr["ino"], attr["type"]) == (ino, kind)
                    out[p] = (kind, attr["nlink"], ino)
                    if kind == "d":
                        walk(p)
                cookie = r.data["cookie"]
                if not cookie:
                    return

        walk("")
        return out

    @staticmethod
    def groups(tree: dict[str, tuple[str, int, int]]) -> set[frozenset[str]]:
        by_ino: dict[int, set[str]] = {}
        for p, (_, _, ino) in tree.items():
            by_ino.setdefault(ino, set()).add(p)
        return {frozenset(g) for g in by_ino.values()}

    @invariant()
    def same_tree(self) -> None:
        local, mdt = self.local_tree(), self.mdt_tree()
        assert {p: v[:2] for p, v in mdt.items()} == {p: v[:2] for p, v in local.items()}
        assert self.groups(mdt) == self.groups(local)
        assert self.call("getattr", path="/").data["nlink"] == os.stat(self.root).st_nlink
        assert self.call("statfs").data["files"] == 1 + len(self.groups(mdt))


NamespaceVsKernel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_namespace_matches_the_kernel = NamespaceVsKernel.TestCase
