"""Fencing for a local cluster: a node is a process group on this machine; "power off" is a
SIGKILL to the whole group, verified by watching every member die.

The node's process is the leader of its own process group (cluster/local.py starts it in a
new session) and its pid is in `<cluster_dir>/run/<node>.pid`. SIGKILL also kills a stopped
(SIGSTOPped, "paused") group: it is the one signal a stopped process cannot hold back, which
is what makes a paused old owner safe to fence.

Which instance: a node's process records its boot id and pid in `run/<node>.instance` as it
starts, and a takeover fences the instance that held the lease, not whatever the pid file
names now. Both nodes of a pair killed and started again 6 ms apart: the first one up found
the other still starting (no answer to its ping), fenced it, and killed its *new* process
(issue 18's first bug). Now a fence of instance X finds either X's record (X's pid is then
checked as below) or a newer instance's, and then X is already gone.

Which processes are the node's, when the pid file is old:
- while any process is in group <pid>, the number <pid> cannot be handed to a new process
  (the kernel keeps a pid allocated while it names a group), so those members are the node's;
- if the group is empty and process <pid> is alive, it was reused by a process started after
  the node died (its start time is later than the pid file), and is left alone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from shoal.fence.base import FenceDriver, FenceResult, PowerState
from shoal.fence.procs import live_group_members, read_stat, wait_group_gone

DEFAULT_TIMEOUT = 1.0
# /proc start times are only as precise as the boot time (whole seconds)
START_TIME_SLACK = 2.0


def instance_file(cluster_dir: Path | str, node: str) -> Path:
    return Path(cluster_dir) / "run" / f"{node}.instance"


def record_instance(cluster_dir: Path | str, node: str, boot_id: str) -> None:
    """Write which process is `node` now (on a local cluster: `run/` exists), before it
    serves anything, so that a fence aimed at an earlier instance spares this one."""
    path = instance_file(cluster_dir, node)
    if not path.parent.is_dir():
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{boot_id} {os.getpid()}\n")
    tmp.replace(path)


class LocalFenceDriver(FenceDriver):
    name = "local"

    def __init__(self, cluster_dir: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"fence timeout must be positive, not {timeout!r}")
        self.cluster_dir = Path(cluster_dir)
        self.timeout = timeout

    def pidfile(self, node: str) -> Path:
        return self.cluster_dir / "run" / f"{node}.pid"

    def _instance_pid(self, node: str, instance: str) -> tuple[int | None, str]:
        """(the pid of `instance`, "") when its record is there; (None, why) when a newer
        instance wrote its own, so `instance` is gone; (0, "") when nothing is known."""
        path = instance_file(self.cluster_dir, node)
        try:
            boot_id, pid = path.read_text().split()
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            return 0, ""
        if boot_id != instance:
            return None, f"instance {instance} is gone: {boot_id} (pid {pid}) runs now"
        leader = read_stat(int(pid))
        if leader is not None and not leader.gone \
                and leader.start_time > mtime + START_TIME_SLACK:
            return None, f"instance {instance} is gone: pid {pid} is a later process"
        return int(pid), ""

    def _group(self, node: str) -> tuple[int | None, str]:
        """The node's process group id, or None with the reason it has no live process.

        Raises OSError/ValueError when that cannot be told (the caller fails the fence)."""
        if not node or "/" in node or node in (".", ".."):
            raise ValueError(f"{node!r} is not a node name")
        run = self.cluster_dir / "run"
        if not run.is_dir():
            # Not a local cluster's directory: an absent pid file proves nothing here.
            raise FileNotFoundError(f"{run} does not exist: not a local cluster directory")
        path = self.pidfile(node)
        try:
            text = path.read_text()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None, f"no pid file {path}: never started"
        try:
            pgid = int(text.strip())
        except ValueError:
            raise ValueError(f"{path} holds {text.strip()!r}, not a pid") from None
        if pgid <= 1:
            raise ValueError(f"{path} holds pid {pgid}")
        leader = read_stat(pgid)
        if leader is not None and not leader.gone \
                and leader.start_time > mtime + START_TIME_SLACK:
            # The number was free to reuse, so the node's group had already died out.
            return None, f"pid {pgid} now belongs to a process started after {path}"
        if live_group_members(pgid):
            return pgid, ""
        if leader is None or leader.gone:
            return None, f"process group {pgid} has no live process"
        # the leader lives but left its group (setpgid): still the node's process
        return pgid, ""

    async def fence(self, node: str, instance: str = "") -> FenceResult:
        started = time.monotonic()
        try:
            pgid, why = self._group(node)
            if instance and pgid is not None:
                pid, gone = self._instance_pid(node, instance)
                if pid is None:
                    return self._ok(node, started, f"already off ({gone})")
                if pid and pid != pgid:
                    # the pid file names another process: started after `instance` died
                    return self._ok(node, started, f"already off (instance {instance}, "
                                                   f"pid {pid}, is gone; pid {pgid} is newer)")
        except (OSError, ValueError) as exc:
            raise self._failed(node, started, f"cannot tell which process is {node}: {exc}") \
                from None
        if pgid is None:
            return self._ok(node, started, f"already off ({why})")
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group emptied since we looked: the wait below confirms
        except PermissionError as exc:
            raise self._failed(node, started, f"SIGKILL to process group {pgid}: {exc}") \
                from None
        leader = read_stat(pgid)
        if leader is not None and leader.pgrp != pgid and not leader.gone:
            try:
                os.kill(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                raise self._failed(node, started, f"SIGKILL to pid {pgid}: {exc}") from None
        remaining = max(0.0, self.timeout - (time.monotonic() - started))
        survivors = await wait_group_gone(pgid, remaining)
        if leader is not None and leader.pgrp != pgid:
            now = read_stat(pgid)
            if now is not None and not now.gone and now.start_ticks == leader.start_ticks:
                survivors.append(now)
        if survivors:
            states = ", ".join(f"{s.pid}:{s.state}" for s in survivors)
            raise self._failed(node, started,
                               f"process group {pgid} still alive {self.timeout:.2f}s after "
                               f"SIGKILL (pid:state {states})")
        return self._ok(node, started, f"process group {pgid} killed and gone")

    async def status(self, node: str) -> PowerState:
        try:
            pgid, _ = self._group(node)
        except (OSError, ValueError):
            return "unknown"
        return "off" if pgid is None else "on"

    def __repr__(self) -> str:
        return f"<LocalFenceDriver {self.cluster_dir} timeout={self.timeout}>"
