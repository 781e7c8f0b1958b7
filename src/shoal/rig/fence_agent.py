"""`fence_rig`: a ClusterLabs fence agent whose machines are the rig's hosts.

The rig's Shoal daemons fence one another exactly as in production: through the fence-agent
driver (`FENCE_METHOD="fence-agent:<rig>/bin/fence_rig rig_dir=<rig> plug={node}"`), which
speaks the agents' stdin protocol to this program. `action=off` is `shoal rig power-off`,
`on` is `power-on`, `status` says whether the host is up.

A daemon runs inside its host's network and mount namespaces, where the rig's namespaces are
not visible; the agent steps back into the root namespaces of pid 1 (nsenter) to act, as a
real agent reaches a power controller on a management network.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

AGENT_NAME = "fence_rig"
EXIT_OK, EXIT_FAIL, EXIT_OFF = 0, 1, 2
ROOT_MARK = "SHOAL_FENCE_RIG_ROOT"  # set once the agent runs in the root namespaces


def install(rig_dir: Path) -> Path:
    """Write the agent's executable into `<rig>/bin/`; its absolute path."""
    path = Path(rig_dir) / "bin" / AGENT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nfrom shoal.rig.fence_agent import main\nmain()\n")
    path.chmod(0o755)
    return path


def _read_options(text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        opts[key.strip()] = value.strip()
    return opts


def main() -> None:
    text = sys.stdin.read()
    opts = _read_options(text)
    if not os.environ.get(ROOT_MARK) and opts.get("action") != "metadata":
        # into the root network and mount namespaces, where the rig's namespaces are,
        # through the rig's anchor process (pid 1 may not be ours to enter); in this
        # process, not a second one: every fence waits for this program
        anchor = _anchor_pid(opts.get("rig_dir", ""))
        if anchor is None:
            print("Failed: the rig's anchor process is gone (is the rig up?)",
                  file=sys.stderr)
            sys.exit(EXIT_FAIL)
        try:
            _enter(anchor)
        except OSError as exc:
            print(f"Failed: cannot enter the rig's namespaces: {exc}", file=sys.stderr)
            sys.exit(EXIT_FAIL)
    sys.exit(act(opts))


def _anchor_pid(rig_dir: str) -> int | None:
    from shoal.rig import procs
    from shoal.rig import state as st

    state = st.load(Path(rig_dir)) if rig_dir else None
    if state is None:
        return None
    return next((p.pid for p in state.procs
                 if p.host == "" and p.name == "anchor" and procs.alive(p)), None)


def _enter(pid: int) -> None:
    """setns(2) into `pid`'s network and mount namespaces (os.setns is Python 3.12's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind in ("net", "mnt"):
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {kind}: {os.strerror(err)}")
        finally:
            os.close(fd)


def act(opts: dict[str, str]) -> int:
    from shoal.errors import ShoalError
    from shoal.rig import faults

    action = opts.get("action", "off")
    if action == "metadata":
        print(f'<?xml version="1.0" ?><resource-agent name="{AGENT_NAME}" '
              'shortdesc="Powers hosts of a Shoal rig off and on"/>')
        return EXIT_OK
    rig_dir, host = opts.get("rig_dir"), opts.get("plug") or opts.get("nodename")
    if not rig_dir or not host:
        print("Failed: rig_dir and plug are required", file=sys.stderr)
        return EXIT_FAIL
    try:
        if action in ("status", "monitor"):
            up = faults.is_up(Path(rig_dir), host)
            print(f"Status: {'ON' if up else 'OFF'}")
            return EXIT_OK if up else EXIT_OFF
        if action == "off":
            faults.power_off_in(Path(rig_dir), host)
        elif action in ("on", "reboot"):
            from shoal.rig.rig import Rig  # all of the rig, to boot a host

            rig = Rig(rig_dir)
            if action == "reboot":
                rig.power_off(host)
            rig.power_on(host)
        else:
            print(f"Failed: unknown action {action}", file=sys.stderr)
            return EXIT_FAIL
    except (ShoalError, OSError) as exc:
        print(f"Failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"Success: Powered {action.upper()}")
    return EXIT_OK
