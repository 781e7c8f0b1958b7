"""The file accesses of a Python program's start, for `shoal bench boot` (issue 20).

A diskless node whose root lives on the file system reads everything a program needs at its
start from it: a burst of stats (most of them probes of files that do not exist), opens and
reads of byte code and extension modules, a few readlinks and directory listings. The trace
in boot_trace.json is one such start, recorded by `record()`, which any machine with strace
can run again (`python -m shoal.workload.boot_trace [OUT]`):

- a root directory gets a copy of the interpreter (`bin/python3.X`) and of its standard
  library (`lib/python3.X`, less its tests, IDLE, tkinter, and its site-packages, which is
  left empty), file times kept so that the byte code in `__pycache__` is valid and is what
  the start reads, as on an installed system;
- `strace -f -s 0 -e trace=%file,getdents64,read` runs that copy of the interpreter, in
  `root/home`, as `bin/python3.X -c "import json, email.parser, http.client, ..."` (MODULES,
  those this interpreter has), with PYTHONDONTWRITEBYTECODE set, so the start writes nothing;
- `parse()` turns the strace lines into ops {stat, lstat, open_read(bytes), readlink,
  listdir}, each with whether it succeeded (an ENOENT probe is an op like any other), and
  keeps only paths inside the root, relative to it: the dynamic loader's reads of
  /etc/ld.so.cache and libc, /proc and /dev are the node's, not the program's. An fstat of
  an open file is answered from what the open returned, so it is not an op; an open of a
  directory that getdents64 then reads is a listdir; a read adds to its open's bytes;
- the Python version in paths (python3.11, cpython-311, python311.zip) is written as
  {ver}, {tag} and {nodot}, so that the trace replays on another Python: `localise()` puts
  the running interpreter's back, and the bench copies what the trace names from
  sys.base_prefix. A file this machine does not have is not copied, and its ops then expect
  ENOENT, as the start of that program on this machine would have found.

The recording also keeps the tree (what each path that existed was: directory, file or
symlink and its target) and the names each listed directory held, so that the bench can
build the same directories (the names never opened as empty placeholders). `make_plan()`
says what to build on this machine and how each op must end there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACE_FILE = Path(__file__).with_name("boot_trace.json")
KINDS = ("stat", "lstat", "open_read", "readlink", "listdir")
MAX_LINKS = 8  # symlinks followed in one path walk
MODULES = (
    "json", "email.parser", "http.client", "urllib.request", "argparse", "logging",
    "subprocess", "asyncio", "decimal", "datetime", "collections", "dataclasses", "typing",
    "pathlib", "tempfile", "shutil", "csv", "sqlite3", "hashlib", "base64", "uuid", "random",
    "statistics", "textwrap", "pprint", "inspect", "unittest", "xml.etree.ElementTree",
    "html.parser", "zipfile", "tarfile", "gzip", "bz2", "lzma", "configparser", "socket",
    "ssl", "selectors", "threading", "queue", "concurrent.futures", "multiprocessing",
    "difflib", "fractions", "pickle", "struct", "glob", "getpass", "platform", "locale",
    "gettext", "ipaddress", "mimetypes", "secrets", "optparse", "contextvars", "string",
)
# what the copy of the standard library leaves out: large, and no start of MODULES reads it
SKIP_DIRS = ("test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "ensurepip",
             "site-packages", "lib2to3", "pydoc_data")

_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?:\s+(E[A-Z0-9]+))?")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")


@dataclass(slots=True)
class Op:
    kind: str  # one of KINDS
    path: str  # relative to the root ("" is the root itself), version tokens in it
    ok: bool  # whether it succeeded when recorded
    nbytes: int = 0  # open_read: bytes read

    def to_list(self) -> list[Any]:
        return [self.kind, self.path, self.ok, self.nbytes]

    @classmethod
    def from_list(cls, v: list[Any]) -> Op:
        return cls(str(v[0]), str(v[1]), bool(v[2]), int(v[3]))


@dataclass
class Trace:
    ops: list[Op]
    tree: dict[str, list[str]] = field(default_factory=dict)  # path: ["d"|"f"] or ["l", target]
    listings: dict[str, list[list[str]]] = field(default_factory=dict)  # dir: [[name, type]]
    about: dict[str, Any] = field(default_factory=dict)  # how and where it was recorded

    def to_dict(self) -> dict[str, Any]:
        return {"about": self.about, "ops": [o.to_list() for o in self.ops],
                "tree": self.tree, "listings": self.listings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        return cls([Op.from_list(v) for v in d["ops"]], dict(d.get("tree", {})),
                   dict(d.get("listings", {})), dict(d.get("about", {})))


def load(path: Path = TRACE_FILE) -> Trace:
    return Trace.from_dict(json.loads(path.read_text()))


# -- version tokens ------------------------------------------------------------------------
def _tokens(version: tuple[int, int], cache_tag: str) -> list[tuple[str, str]]:
    major, minor = version
    return [(cache_tag, "{tag}"), (f"python{major}.{minor}", "python{ver}"),
            (f"python{major}{minor}", "python{nodot}")]


def generalise(path: str, version: tuple[int, int] | None = None,
               cache_tag: str | None = None) -> str:
    """A path with the recording interpreter's version written as tokens."""
    for real, token in _tokens(version or sys.version_info[:2],
                               cache_tag or sys.implementation.cache_tag or "cpython"):
        path = path.replace(real, token)
    return path


def localise(path: str) -> str:
    """A trace path with this interpreter's version put in its tokens."""
    for real, token in _tokens(sys.version_info[:2], sys.implementation.cache_tag or "cpython"):
        path = path.replace(token, real)
    return path


# -- parsing strace ------------------------------------------------------------------------
def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    raw = s.encode("latin-1", "backslashreplace").decode("unicode_escape")
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


def _joined(lines: Iterable[str]) -> Iterable[str]:
    """Lines with each `<unfinished ...>` call put back together with its `resumed` half."""
    pending: dict[str, str] = {}
    for line in lines:
        line = line.rstrip("\n")
        if line.endswith(_UNFINISHED):
            pid = line.split(None, 1)[0]
            pending[pid] = line[: -len(_UNFINISHED)]
            continue
        m = _RESUMED.match(line)
        if m:
            head = pending.pop(m.group(1), None)
            if head is not None:
                yield head + m.group(3)
            continue
        yield line


class _Parser:
    def __init__(self, root: str, cwd: str) -> None:
        self.root = root.rstrip("/")
        self.cwd: dict[str, str] = {}
        self.start_cwd = cwd
        self.fds: dict[tuple[str, int], tuple[str, Op | None, bool]] = {}  # path, op, is dir
        self.ops: list[Op] = []
        self.skipped: dict[str, int] = {}

    def _abs(self, pid: str, dirfd: str | None, path: str) -> str:
        if path.startswith("/"):
            return os.path.normpath(path)
        base = self.cwd.get(pid, self.start_cwd)
        if dirfd not in (None, "AT_FDCWD"):
            base = self.fds.get((pid, _int(dirfd)), ("", None, False))[0] or base
        return os.path.normpath(os.path.join(base, path))

    def _rel(self, path: str) -> str | None:
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def _add(self, kind: str, path: str, ok: bool) -> Op | None:
        rel = self._rel(path)
        if rel is None:
            return None
        op = Op(kind, rel, ok)
        self.ops.append(op)
        return op

    def line(self, line: str) -> None:
        m = _LINE.match(line)
        if not m:
            return
        pid, call, args, ret, err = m.groups()
        ok = ret != "?" and int(ret) >= 0
        strings = [_unescape(s) for s in _STRING.findall(args)]
        first = args.split(",", 1)[0].strip()
        if call in ("openat", "open"):
            dirfd = first if call == "openat" else None
            if not strings:
                return
            path = self._abs(pid, dirfd, strings[0])
            if re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
                self.skipped[call + " (write)"] = self.skipped.get(call + " (write)", 0) + 1
                return
            is_dir = "O_DIRECTORY" in args
            # a directory's open is a listdir once getdents64 reads it, else a stat
            op = self._add("stat" if is_dir else "open_read", path, ok)
            if ok:
                self.fds[(pid, int(ret))] = (path, op, is_dir)
        elif call in ("newfstatat", "fstatat64", "statx"):
            if strings and strings[0] == "" and "AT_EMPTY_PATH" in args:
                return  # fstat of an open file: the open's reply answered it
            if not strings:
                return
            kind = "lstat" if "AT_SYMLINK_NOFOLLOW" in args else "stat"
            self._add(kind, self._abs(pid, first, strings[0]), ok)
        elif call in ("stat", "lstat", "access"):
            if strings:
                self._add("lstat" if call == "lstat" else "stat",
                          self._abs(pid, None, strings[0]), ok)
        elif call in ("faccessat", "faccessat2"):
            if strings:
                self._add("stat", self._abs(pid, first, strings[0]), ok)
        elif call in ("readlink", "readlinkat"):
            if strings:
                self._add("readlink",
                          self._abs(pid, first if call == "readlinkat" else None, strings[0]),
                          ok)
        elif call == "getdents64":
            got = self.fds.get((pid, _int(first)))
            if got and got[1] is not None and got[2]:
                got[1].kind = "listdir"
        elif call == "read":
            got = self.fds.get((pid, _int(first)))
            if got and got[1] is not None and got[1].kind == "open_read" and ok:
                got[1].nbytes += int(ret)
        elif call == "chdir":
            if ok and strings:
                self.cwd[pid] = self._abs(pid, None, strings[0])
        elif call in ("execve", "getcwd"):
            pass  # the exec of the interpreter itself; getcwd names nothing to look up
        else:
            self.skipped[call] = self.skipped.get(call, 0) + 1


def _int(s: str | None) -> int:
    try:
        return int(s or "")
    except ValueError:
        return -1


def parse(lines: Iterable[str], root: str, cwd: str = "/") -> list[Op]:
    """The ops of strace lines (`strace -f -s 0 -o`), paths relative to `root`; `cwd` is
    where the traced program started. Paths keep the recording's version as it is."""
    p = _Parser(root, cwd)
    for line in _joined(lines):
        p.line(line)
    return p.ops


# -- recording -----------------------------------------------------------------------------
def _type(p: Path) -> str:
    if p.is_symlink():
        return "l"
    return "d" if p.is_dir() else "f"


def _tree(root: Path, ops: list[Op]) -> dict[str, list[str]]:
    tree: dict[str, list[str]] = {}
    for op in ops:
        if not op.ok:
            continue
        parts = op.path.split("/") if op.path else []
        for i in range(len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel in tree:
                continue
            p = root / rel if rel else root
            if not p.exists() and not p.is_symlink():
                continue
            t = _type(p)
            if t == "l":
                target = os.readlink(p)
                if target.startswith(str(root) + "/"):
                    target = target[len(str(root)):]  # absolute within the root
                tree[rel] = ["l", target]
            else:
                tree[rel] = [t]
    return tree


def record(out: Path = TRACE_FILE, modules: Iterable[str] = MODULES) -> Trace:
    """Record the trace again with the running interpreter (needs strace), write it to
    `out` and return it."""
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeError("strace is not installed")
    exe = Path(os.path.realpath(sys.executable))
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = Path(sys.base_prefix) / "lib" / f"python{ver}"
    have = [m for m in modules if subprocess.run(
        [str(exe), "-c", f"import {m}"], capture_output=True, check=False).returncode == 0]
    code = f"import {', '.join(have)}"
    with tempfile.TemporaryDirectory(prefix="shoal-boot-trace-") as tmp:
        root = Path(tmp) / "root"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(exe, root / "bin" / exe.name)
        shutil.copytree(stdlib, root / "lib" / f"python{ver}", symlinks=True,
                        ignore=shutil.ignore_patterns(*SKIP_DIRS))
        (root / "lib" / f"python{ver}" / "site-packages").mkdir()
        (root / "home").mkdir()
        log = Path(tmp) / "strace.txt"
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        subprocess.run([strace, "-f", "-s", "0", "-o", str(log), "-e",
                        "trace=%file,getdents64,read", str(root / "bin" / exe.name), "-c", code],
                       cwd=root / "home", env=env, check=True, capture_output=True)
        with log.open(errors="replace") as f:
            ops = parse(f, str(root), str(root / "home"))
        tree = _tree(root, ops)
        listings = {op.path: sorted([e.name, _type(Path(e.path))]
                                    for e in os.scandir(root / op.path))
                    for op in ops if op.kind == "listdir" and op.ok}
    trace = Trace(
        [Op(o.kind, generalise(o.path), o.ok, o.nbytes) for o in ops],
        {generalise(k): v for k, v in tree.items()},
        {generalise(k): [[generalise(n), t] for n, t in v] for k, v in listings.items()},
        {"python": sys.version.split()[0], "command": f"bin/python{{ver}} -c {code!r}",
         "cwd": "home", "strace": "strace -f -s 0 -e trace=%file,getdents64,read",
         "modules": have})
    out.write_text(json.dumps(trace.to_dict(), separators=(",", ":")) + "\n")
    return trace


def summary(trace: Trace) -> dict[str, int]:
    counts = {k: sum(1 for o in trace.ops if o.kind == k) for k in KINDS}
    return {"ops": len(trace.ops), **counts,
            "failed": sum(1 for o in trace.ops if not o.ok),
            "files": sum(1 for v in trace.tree.values() if v[0] == "f")}


# -- the trace on this machine ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    """One op of the trace as this machine replays it."""

    kind: str
    path: str  # relative to the root on Shoal, this interpreter's version in it
    ok: bool  # whether it must succeed here
    nbytes: int


@dataclass
class Plan:
    base: str  # the root's path on Shoal
    steps: list[Step]
    dirs: list[str]  # relative paths, parents first
    files: dict[str, str]  # relative path: the local file copied there
    links: dict[str, str]  # relative path: its target
    empty: list[str]  # names listed but never opened: empty files
    missing: int  # files the trace names that this machine does not have

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base


def norm(rel: str) -> str:
    rel = os.path.normpath(rel) if rel else ""
    return "" if rel == "." else rel


def _resolves(present: dict[str, list[str]], rel: str, follow: bool, depth: int = 0
              ) -> str | None:
    """What `rel` names in the tree built on Shoal (its type letter), None if nothing."""
    parts = [p for p in rel.split("/") if p]
    cur = ""
    for i, name in enumerate(parts):
        nxt = f"{cur}/{name}" if cur else name
        entry = present.get(nxt)
        if entry is None:
            return None
        last = i == len(parts) - 1
        if entry[0] == "l" and (follow or not last) and depth < MAX_LINKS:
            target = entry[1]
            start = target.lstrip("/") if target.startswith("/") else (
                f"{cur}/{target}" if cur else target)
            rest = norm("/".join([start, *parts[i + 1:]]))
            return _resolves(present, rest, follow, depth + 1)
        if not last and entry[0] != "d":
            return None
        cur = nxt
    return present[cur][0] if cur else "d"


def make_plan(trace: Trace, base: str, source: Path | None = None) -> Plan:
    """What to build under `base` from this interpreter's files (under `source`, default
    sys.base_prefix), and how each op must end."""
    src = Path(source or sys.base_prefix)
    tree = {localise(k): v for k, v in trace.tree.items()}
    present: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    missing = 0
    for rel, entry in tree.items():
        if entry[0] == "d":
            present[rel] = entry
        elif entry[0] == "l":
            present[rel] = entry
            links[rel] = entry[1]
        elif (src / rel).is_file():
            present[rel] = entry
            files[rel] = str(src / rel)
        else:
            missing += 1
    empty: list[str] = []
    for d, names in trace.listings.items():
        dl = localise(d)
        for name, kind in names:
            rel = f"{dl}/{localise(name)}" if dl else localise(name)
            if rel in tree:
                continue  # built above, or left out as missing here
            present[rel] = ["d" if kind == "d" else "f"]
            if kind != "d":
                empty.append(rel)
    dirs = sorted((r for r, e in present.items() if e[0] == "d" and r), key=lambda r: r.count("/"))
    steps = []
    for op in trace.ops:
        rel = localise(op.path)
        kind = present.get(rel, [""])[0]
        if op.kind == "readlink":
            ok = kind == "l" and _resolves(present, rel, False) == "l"
        else:
            got = _resolves(present, rel, op.kind != "lstat")
            ok = got is not None and (op.kind != "listdir" or got == "d") and (
                op.kind != "open_read" or got == "f")
        steps.append(Step(op.kind, rel, ok, op.nbytes))
    return Plan(base, steps, dirs, files, links, empty, missing)


if __name__ == "__main__":
    t = record(Path(sys.argv[1]) if len(sys.argv) > 1 else TRACE_FILE)
    print(json.dumps(summary(t)))
