"""Processes in a host: started through nsenter, found again by pid or by namespace, killed.

A long-lived process (etcd member, daemon) is started in a session of its own, its output
in a log under the rig directory, and recorded with its psutil create_time, so a later `rig`
command (another process) can find it again and never kills a stranger that reused the pid.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from shoal.rig.state import ProcRecord

log = logging.getLogger(__name__)

KILL_ROUNDS = 5  # a process may fork while we kill; each round takes the newcomers too
KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to be gone, per round


def spawn(prefix: list[str], host: str, name: str, argv: list[str], log_path: Path,
          env: dict[str, str]) -> tuple[subprocess.Popen[bytes], ProcRecord]:
    """Start `argv` behind the nsenter `prefix`; nsenter execs it, so the pid is argv's own."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            prefix + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
            start_new_session=True,  # a Ctrl-C meant for the rig command must not reach it
        )
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    return proc, ProcRecord(host=host, name=name, pid=proc.pid, create_time=created,
                            argv=list(argv), log=str(log_path))


def alive(record: ProcRecord) -> bool:
    """True if the recorded process still runs (same pid *and* same start time, not a zombie)."""
    try:
        p = psutil.Process(record.pid)
        return (abs(p.create_time() - record.create_time) < 0.01
                and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def kill_all(records: list[ProcRecord], find: Callable[[], Iterable[int]]) -> list[int]:
    """SIGKILL the recorded processes and the pids `find()` reports, until none is left.

    `find` (e.g. the pids of a network namespace) is asked every round, since a dying
    process's children may appear in between. Bounded: KILL_ROUNDS rounds of at most
    KILL_WAIT seconds each. Returns the pids still alive after that (normally none)."""
    left: list[psutil.Process] = []
    for _ in range(KILL_ROUNDS):
        left = _current(records, find)
        if not left:
            return []
        for p in left:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        left = _wait_dead(left, KILL_WAIT)
    if left:
        log.warning("processes survived SIGKILL: %s", [p.pid for p in left])
    return [p.pid for p in left]


def signal_all(records: list[ProcRecord], find: Callable[[], Iterable[int]],
                sig: int) -> list[int]:
    """Send `sig` to the recorded processes, their descendants and the pids `find()`
    reports; the pids signalled (a pause: SIGSTOP, and SIGCONT to resume)."""
    targets: dict[int, psutil.Process] = {p.pid: p for p in _current(records, find)}
    for p in list(targets.values()):
        try:
            targets.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    done = []
    for p in targets.values():
        try:
            p.send_signal(sig)
            done.append(p.pid)
        except psutil.Error:
            continue
    return sorted(done)


def _current(records: list[ProcRecord], find: Callable[[], Iterable[int]]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for r in records:
        if alive(r):
            procs[r.pid] = psutil.Process(r.pid)
    for pid in find():
        try:
            procs[pid] = psutil.Process(pid)
        except psutil.Error:
            continue
    return [p for p in procs.values() if _running(p)]


def _wait_dead(victims: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (bounded) until the victims are dead; the ones still running after `timeout`.

    A zombie counts as dead: its parent (maybe not us, maybe an init that reaps late) owns
    the reaping, and psutil.wait_procs would wait out the whole timeout on it."""
    deadline = time.monotonic() + timeout
    while True:
        for p in victims:
            try:
                p.wait(timeout=0)  # reaps it if it is our own child
            except (psutil.TimeoutExpired, psutil.Error):
                pass
        left = [p for p in victims if _running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
