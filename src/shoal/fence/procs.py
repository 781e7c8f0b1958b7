"""Process state from /proc (Linux): is a process alive, a zombie, stopped; who is in a
process group; waiting until a group is gone.

A zombie counts as gone everywhere here: it holds no memory, no open files and can do no
I/O, it only waits for its parent to read its exit status, and a fencing driver must not
reap (wait for) processes that are somebody else's children.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from dataclasses import dataclass

GONE_STATES = frozenset("ZX")  # zombie, dead
STOPPED_STATES = frozenset("Tt")  # stopped by a signal, stopped by a tracer


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that fencing needs."""

    pid: int
    state: str  # R S D Z T t X I ...
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # clock ticks after boot

    @property
    def gone(self) -> bool:
        return self.state in GONE_STATES

    @property
    def stopped(self) -> bool:
        return self.state in STOPPED_STATES

    @property
    def start_time(self) -> float:
        """When the process started, as Unix time (to about a second: boot time's precision)."""
        return _boot_time() + self.start_ticks / _clock_ticks()


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: the fields resume after the last ')'
    head, sep, rest = raw.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None  # the process vanished while being read
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]),
                    session=int(fields[3]), start_ticks=int(fields[19]))


def proc_state(pid: int) -> str:
    """The one-letter state ("R", "S", "T", "Z", ...), "" when there is no such process."""
    st = read_stat(pid)
    return st.state if st else ""


def is_zombie(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.gone


def is_stopped(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.stopped


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a stopped process is alive: it can resume)."""
    st = read_stat(pid)
    return st is not None and not st.gone


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[ProcStat]:
    """Every process whose process group is `pgid`, zombies included."""
    out = []
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None and st.pgrp == pgid:
            out.append(st)
    return out


def live_group_members(pgid: int) -> list[ProcStat]:
    """The processes of group `pgid` that are not zombies."""
    return [st for st in group_members(pgid) if not st.gone]


def _still_live(members: list[ProcStat], pgid: int) -> list[ProcStat]:
    # A pid that died and was reused at once belongs to another group: the pgrp check.
    out = []
    for old in members:
        st = read_stat(old.pid)
        if st is not None and st.pgrp == pgid and not st.gone:
            out.append(st)
    return out


async def wait_group_gone(pgid: int, timeout: float, *,
                          interval: float = 0.002) -> list[ProcStat]:
    """Wait until no process of group `pgid` is alive (zombies count as gone).

    Returns the survivors when `timeout` runs out, [] once the group is gone. Scans /proc
    once for the members, polls just those, and scans once more at the end: after a
    group-wide SIGKILL no new member can appear (the kernel aborts a fork that races a
    fatal signal), so the final scan only guards against a caller that did not kill."""
    deadline = time.monotonic() + timeout
    members = live_group_members(pgid)
    delay = interval
    while members:
        members = _still_live(members, pgid)
        if not members:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return members
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return live_group_members(pgid)


def wait_gone(pid: int, timeout: float, *, reap: bool = False) -> bool:
    """Block until process `pid` is gone or a zombie; True if it is. With `reap`, reap it
    when it is our own child (for callers that started it and want no zombie left)."""
    deadline = time.monotonic() + timeout
    while True:
        if reap:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if not is_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
