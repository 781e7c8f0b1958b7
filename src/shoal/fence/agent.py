"""Fencing through ClusterLabs fence agents (fence_ipmilan, fence_redfish, fence_virsh, ...).

The agents' protocol (the one Pacemaker's fenced uses): the agent reads `name=value` lines on
stdin (`action=off`, `ip=...`, `username=...`, `password=...`, `plug=...`) and exits 0 for
success, 1 for failure; `action=status` exits 0 when the node is on and 2 when it is off, and
agents built on fencing.py also print "Status: ON" / "Status: OFF".

A fence is `action=off` followed by `action=status`, which must say off: an agent that
claims success while the node is still on, a status we cannot read, and a call that does not
end within its timeout are all failures. An agent that outlives its timeout is killed with
its whole process group (agents run ipmitool, ssh, ... as children).

Besides the configured options, every call gets `nodename=<node>` (fencing.py ignores it
quietly when an agent has no use for it), and `{node}` in an option value is replaced by the
node's name, so one setting can fence every node: `plug={node}` for fence_virsh.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ConfigError, InvalidArgument
from shoal.fence.base import FenceDriver, FenceResult, PowerState

DEFAULT_TIMEOUT = 30.0  # per agent call; fence_ipmilan's own power_wait + login fit in it
REAP_TIMEOUT = 2.0  # for a killed agent to exit
# Fence agents are installed in sbin, which an ordinary user's PATH often lacks.
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
OPTION_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Options we set ourselves on every call.
RESERVED_OPTIONS = frozenset({"action", "nodename"})
_SECRET_RE = re.compile(r"passw|secret|token", re.IGNORECASE)
_STATUS_RE = re.compile(r"^\s*Status:\s*(ON|OFF)\s*$", re.IGNORECASE | re.MULTILINE)

EXIT_ON = 0  # action=status: the node is on
EXIT_OFF = 2  # action=status: the node is off


def find_agent(agent: str) -> Path:
    """The agent's executable: an absolute path as given, else looked up on PATH and in the
    sbin directories. Raises ConfigError naming what was searched."""
    if "/" in agent:
        path = Path(agent)
        if not path.is_absolute():
            raise ConfigError(f"fence agent {agent!r}: give a bare name or an absolute path")
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"fence agent {agent}: no such executable file")
        return path
    if not agent:
        raise ConfigError("fence agent name is empty")
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(agent, path=search)
    if found is None:
        raise ConfigError(
            f"fence agent {agent!r} is not installed (searched PATH and "
            f"{', '.join(SBIN_DIRS)}; Debian ships the ClusterLabs agents in `fence-agents`)")
    return Path(found)


def check_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options, checked for what the line protocol cannot carry; ConfigError if bad."""
    out: dict[str, str] = {}
    for key, value in options.items():
        if not OPTION_NAME_RE.match(key):
            raise ConfigError(f"fence agent option {key!r}: not an option name")
        if key in RESERVED_OPTIONS:
            raise ConfigError(f"fence agent option {key!r} is set by Shoal on every call")
        if not isinstance(value, str) or "\n" in value or "\r" in value or "\0" in value:
            raise ConfigError(f"fence agent option {key}: value must be one line of text")
        out[key] = value
    return out


def redact(options: Mapping[str, str]) -> dict[str, str]:
    """The options fit for a log line: secrets replaced by ***."""
    return {k: ("***" if _SECRET_RE.search(k) else v) for k, v in options.items()}


def parse_status(returncode: int | None, stdout: str) -> PowerState:
    """The power state an `action=status` call reported.

    Exit 2 means off and exit 0 on, as the fence-agents convention has it, with the
    "Status: ON|OFF" line read as well (some agents print it and exit 0 either way). When
    the exit code and the text disagree, or neither says, the answer is "unknown"."""
    said = {m.upper() for m in _STATUS_RE.findall(stdout)}
    text: str | None = None
    if len(said) == 1:
        text = said.pop().lower()
    elif said:
        return "unknown"  # both ON and OFF printed
    if returncode == EXIT_OFF:
        return "off" if text in (None, "off") else "unknown"
    if returncode == EXIT_ON:
        return text or "on"  # type: ignore[return-value]
    return "unknown"


@dataclass(frozen=True, slots=True)
class AgentCall:
    """One run of a fence agent."""

    action: str
    returncode: int | None  # None when it timed out (it was killed)
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def summary(self) -> str:
        if self.timed_out:
            return f"action={self.action} timed out after {self.seconds:.1f}s (agent killed)"
        out = _last_line(self.stderr) or _last_line(self.stdout)
        return f"action={self.action} exit {self.returncode}" + (f": {out}" if out else "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class AgentFenceDriver(FenceDriver):
    """Fence with one ClusterLabs fence agent and its options.

    `node`, when given, is the only node these options may fence (an ip= address belongs
    to one machine's BMC): asking for another node raises InvalidArgument rather than power
    off the wrong machine."""

    def __init__(self, agent: str, options: Mapping[str, str] | None = None, *,
                 node: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ConfigError(f"fence agent timeout must be positive, not {timeout!r}")
        self.agent = agent
        self.path = find_agent(agent)
        self.options = check_options(options or {})
        self.node = node
        self.timeout = timeout
        self.name = f"fence-agent:{self.path.name}"

    def _stdin(self, action: str, node: str) -> bytes:
        lines = [f"action={action}", f"nodename={node}"]
        lines += [f"{k}={v.replace('{node}', node)}" for k, v in self.options.items()]
        return ("\n".join(lines) + "\n").encode()

    def _check_node(self, node: str) -> None:
        if self.node is not None and node != self.node:
            raise InvalidArgument(f"{self.name} is configured to fence {self.node}, not {node}")

    async def run(self, action: str, node: str) -> AgentCall:
        """Run the agent once with `action`; never raises for the agent's own failures
        (a missing executable raises FileNotFoundError/PermissionError)."""
        self._check_node(node)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(self.path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env={**os.environ, "LC_ALL": "C"})  # "Status: OFF" is only English in C

        async def talk() -> tuple[bytes, bytes]:
            assert proc.stdin is not None
            try:
                proc.stdin.write(self._stdin(action, node))
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                # the agent ended before it read its instructions (it crashed as it started;
                # uvloop says so with a RuntimeError about a closed transport): its exit
                # status tells the caller
                pass
            return await proc.communicate()

        try:
            out, err = await asyncio.wait_for(talk(), self.timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            # bounded: an agent stuck in the kernel (D state) must not hang the fence too
            try:
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)
            except TimeoutError:
                pass
            return AgentCall(action, None, "", "", time.monotonic() - started, True)
        except BaseException:
            # cancelled (the caller gave up): leave no agent running behind us
            _kill_group(proc.pid)
            raise
        return AgentCall(action, proc.returncode, out.decode(errors="replace"),
                         err.decode(errors="replace"), time.monotonic() - started, False)

    async def fence(self, node: str, instance: str = "") -> FenceResult:
        _off, verified = await self.begin(node, instance)
        return await verified()

    async def begin(self, node: str, instance: str = ""
                    ) -> tuple[FenceResult, Callable[[], Awaitable[FenceResult]]]:
        started = time.monotonic()
        self._check_node(node)
        try:
            off = await self.run("off", node)
        except OSError as exc:
            raise self._failed(node, started, f"cannot run {self.path}: {exc}") from None
        if off.timed_out or off.returncode != 0:
            raise self._failed(node, started, off.summary())

        async def verified() -> FenceResult:
            try:
                st = await self.run("status", node)
            except OSError as exc:
                raise self._failed(node, started, f"off done, then cannot run {self.path} "
                                                  f"to verify: {exc}") from None
            state = "unknown" if st.timed_out else parse_status(st.returncode, st.stdout)
            if state != "off":
                raise self._failed(node, started, f"off reported success but the status "
                                                  f"check says {state} ({st.summary()})")
            return self._ok(node, started, f"off ({off.seconds:.2f}s), status off "
                                           f"({st.seconds:.2f}s)")

        return self._ok(node, started, f"off ({off.seconds:.2f}s)"), verified

    async def status(self, node: str) -> PowerState:
        try:
            st = await self.run("status", node)
        except OSError:
            return "unknown"
        return "unknown" if st.timed_out else parse_status(st.returncode, st.stdout)

    def __repr__(self) -> str:
        return (f"<AgentFenceDriver {self.path} {redact(self.options)} node={self.node} "
                f"timeout={self.timeout}>")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        # the agent changed its credentials (setuid helper): the leader at least
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
