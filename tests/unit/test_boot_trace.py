"""The boot trace (workload/boot_trace.py): strace lines into ops, and the plan the bench
builds from a trace on this machine (make_plan)."""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.workload import boot_trace
from shoal.workload.boot_trace import Op, Trace, generalise, localise, make_plan, parse

ROOT = "/tmp/rec/root"

LINES = """\
101   execve("/tmp/rec/root/bin/python3.11", [...], 0x7ffd /* 3 vars */) = 0
101   openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
101   read(3, ""..., 832)               = 832
101   openat(AT_FDCWD, "/tmp/rec/root/pyvenv.cfg", O_RDONLY) = -1 ENOENT (No such file or directory)
101   readlink("/tmp/rec/root/bin/python3.11", 0x7ffd, 4096) = -1 EINVAL (Invalid argument)
101   newfstatat(AT_FDCWD, "/tmp/rec/root/lib/python3.11/os.py", {st_mode=S_IFREG|0644, st_size=39504, ...}, 0) = 0
101   newfstatat(AT_FDCWD, "/tmp/rec/root/lib/python311.zip", 0x7ffd, 0) = -1 ENOENT (No such file or directory)
101   openat(AT_FDCWD, "/tmp/rec/root/lib/python3.11", O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = 3
101   newfstatat(3, "", {st_mode=S_IFDIR|0755, st_size=4096, ...}, AT_EMPTY_PATH) = 0
101   getdents64(3, 0x55d4 /* 210 entries */, 32768) = 7040
101   getdents64(3, 0x55d4 /* 0 entries */, 32768) = 0
101   openat(AT_FDCWD, "/tmp/rec/root/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc", O_RDONLY|O_CLOEXEC) = 3
101   newfstatat(3, "", {st_mode=S_IFREG|0644, st_size=6481, ...}, AT_EMPTY_PATH) = 0
101   read(3, ""..., 6482)              = 6481
101   read(3, "", 1)                    = 0
101   openat(AT_FDCWD, "/tmp/rec/root/lib/python3.11/site-packages", O_RDONLY|O_DIRECTORY) = 4
101   statx(AT_FDCWD, "/tmp/rec/root/bin/python3", AT_STATX_SYNC_AS_STAT|AT_SYMLINK_NOFOLLOW, STATX_ALL, {...}) = 0
101   newfstatat(4, "json", {st_mode=S_IFDIR|0755, ...}, 0) = 0
101   chdir("/tmp/rec/root/home") = 0
101   access("data.txt", R_OK) = -1 ENOENT (No such file or directory)
101   openat(AT_FDCWD, "/tmp/rec/root/home/out", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 5
101   --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---
102   openat(AT_FDCWD, "/tmp/rec/root/lib/python3.11/json/__init__.py", O_RDONLY <unfinished ...>
101   read(3, ""..., 10)                = 10
102   <... openat resumed>)             = 6
102   read(6, ""..., 4096)              = 100
101   +++ exited with 0 +++
"""


def test_parse_keeps_the_ops_inside_the_root_relative_to_it() -> None:
    ops = parse(LINES.splitlines(), ROOT, cwd="/")
    assert [(o.kind, o.path, o.ok, o.nbytes) for o in ops] == [
        ("open_read", "pyvenv.cfg", False, 0),  # an absent file's probe is an op too
        ("readlink", "bin/python3.11", False, 0),
        ("stat", "lib/python3.11/os.py", True, 0),
        ("stat", "lib/python311.zip", False, 0),
        ("listdir", "lib/python3.11", True, 0),  # opened, then read by getdents64
        # every read of the fd adds up; the fstat of it is no op; a read after it counts
        ("open_read", "lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc", True,
         6491),
        ("stat", "lib/python3.11/site-packages", True, 0),  # a directory opened, not read
        ("lstat", "bin/python3", True, 0),
        ("stat", "lib/python3.11/site-packages/json", True, 0),  # relative to its dirfd
        ("stat", "home/data.txt", False, 0),  # relative to the cwd chdir set
        # the open for writing is left out; the unfinished call is put back together
        ("open_read", "lib/python3.11/json/__init__.py", True, 100),
    ]


def test_version_tokens_round_trip() -> None:
    path = "lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"
    general = generalise(path, (3, 11), "cpython-311")
    assert general == "lib/python{ver}/json/__pycache__/__init__.{tag}.pyc"
    assert generalise("lib/python311.zip", (3, 11), "cpython-311") == "lib/python{nodot}.zip"
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert localise(general) == (f"lib/python{ver}/json/__pycache__/__init__."
                                 f"{sys.implementation.cache_tag}.pyc")


def test_plan_expects_enoent_for_what_this_machine_lacks(tmp_path: Path) -> None:
    src = tmp_path / "prefix"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "a.py").write_text("A = 1\n")
    trace = Trace(
        [Op("stat", "lib/a.py", True), Op("open_read", "lib/a.py", True, 6),
         Op("stat", "lib/gone.py", True),  # recorded, but this machine has no such file
         Op("stat", "lib/never.so", False),  # an ENOENT probe when recorded
         Op("stat", "link/a.py", True), Op("lstat", "link", True),
         Op("readlink", "link", True), Op("readlink", "lib/a.py", False),
         Op("listdir", "lib", True), Op("stat", "lib/b.txt", True)],
        {"": ["d"], "lib": ["d"], "lib/a.py": ["f"], "lib/gone.py": ["f"],
         "link": ["l", "lib"]},
        {"lib": [["a.py", "f"], ["b.txt", "f"], ["sub", "d"], ["gone.py", "f"]]})
    plan = make_plan(trace, "/bb", source=src)
    assert [s.ok for s in plan.steps] == [True, True, False, False, True, True, True, False,
                                          True, True]
    assert plan.files == {"lib/a.py": str(src / "lib" / "a.py")}
    assert plan.missing == 1
    assert plan.links == {"link": "lib"}
    assert plan.empty == ["lib/b.txt"]  # listed, never opened: an empty file
    assert plan.dirs == ["lib", "lib/sub"]


def test_the_stored_trace_is_a_real_start() -> None:
    trace = boot_trace.load()
    s = boot_trace.summary(trace)
    assert s["ops"] > 500 and s["files"] > 200
    assert s["failed"] > 20  # the probes of absent files are kept
    assert s["open_read"] > 100 and s["listdir"] > 5 and s["stat"] > s["open_read"]
    assert all(o.kind in boot_trace.KINDS for o in trace.ops)
    assert not any(o.path.startswith("/") for o in trace.ops)
