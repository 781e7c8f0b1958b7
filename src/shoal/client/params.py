"""The client's parameter tree, named as Lustre's `lctl get_param` names it on a client.

    mgc.MGC<mgs host>@tcp.{state,import,timeouts,ir_state}
    mdc.<fs>-MDT0000-mdc-<client>.{state,import,timeouts,ir,uuid}
    osc.<fs>-OST0000-osc-<client>.{state,import,timeouts,ir,uuid}

`state` and `import` print Lustre's formats (current_state / state_history lines, and the
YAML-ish import block) so tools written for Lustre read them; `timeouts` is the AT estimate
(protocol/adaptive.py). Values are built when read, never cached.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shoal.protocol.import_state import ImportState

if TYPE_CHECKING:
    from shoal.client.imports import Import


class Client(Protocol):
    """What the parameter tree reads of the client (client/client.py), which serves it."""

    uuid: str
    ir: bool
    nidtbl_version: int

    @property
    def imports(self) -> list[Import]: ...

OBD_TYPE = {"MGT": "mgc", "MDT": "mdc", "OST": "osc"}


def obd_name(imp: Import) -> str:
    """`mdc.scratch-MDT0000-mdc-<client>`; the MGC is named after the MGS's first NID."""
    if imp.kind == "MGT":
        host = imp.nids[0].rpartition(":")[0] or imp.nids[0]
        return f"mgc.MGC{host}@tcp"
    kind = OBD_TYPE[imp.kind]
    return f"{kind}.{imp.target}-{kind}-{imp.client.uuid}"


def format_state(imp: Import) -> str:
    lines = [f"current_state: {imp.state}", "state_history:"]
    # whole seconds, as Lustre prints them (tools parse `- [ <int>, <STATE> ]`)
    lines += [f" - [ {int(t)}, {state} ]" for t, state in imp.state_history]
    return "\n".join(lines)


def _flags(imp: Import) -> list[str]:
    flags = []
    if imp.sm.state in (ImportState.EVICTED, ImportState.CLOSED):
        flags.append("invalid")
    if imp.kind in ("MDT", "OST"):
        flags.append("replayable")
    flags.append("pingable")
    if imp.connect_attempts:
        flags.append("connect_tried")
    return flags


def _yaml_list(items: list[str]) -> str:
    return "[ " + ", ".join(items) + " ]" if items else "[ ]"


def format_import(imp: Import) -> str:
    """Lustre's `osc.*.import` block. connect_flags are the MSG_CONNECT flags of the last
    successful connect (initial/reconnect, and recovering if the server was), not Lustre's
    feature bits, which Shoal does not negotiate."""
    sm, now = imp.sm, time.time()
    kind = OBD_TYPE[imp.kind]
    name = obd_name(imp).split(".", 1)[1] if imp.kind == "MGT" else (
        f"{imp.target}-{kind}-{imp.client.uuid}")
    last_replayed = sm.last_replayed
    lines = [
        "import:",
        f"    name: {name}",
        f"    target: {imp.target}_UUID",
        f"    state: {imp.state}",
        f"    connect_flags: {_yaml_list(sorted(sm.connect_flags))}",
        "    connect_data:",
        f"       instance: {sm.epoch}",
        f"       target_node: {sm.server_node or '-'}",
        f"    import_flags: {_yaml_list(_flags(imp))}",
        "    connection:",
        f"       failover_nids: {_yaml_list(imp.nids)}",
        f"       current_connection: {imp.nid}",
        f"       connection_attempts: {imp.connect_attempts}",
        f"       generation: {sm.conn_gen}",
        f"       in-progress_invalidations: {0}",
        f"       last_success: {int(sm.last_success) if sm.last_success else 0}",
        "    rpcs:",
        f"       inflight: {len(sm.inflight)}",
        f"       resend: {len(sm.resend)}",
        f"       timeouts: {imp.timeouts}",
        f"       longest_timeout: {imp.at.longest_wait:.3f} sec",
        "    service_estimates:",
        f"       services: {imp.at.service.estimate(now):.3f} sec",
        f"       network: {imp.at.network.estimate(now):.3f} sec",
        "    transactions:",
        f"       last_replay: {last_replayed}",
        f"       peer_committed: {sm.last_committed}",
        f"       last_checked: {sm.last_committed}",
        f"       replay_list: {len(sm.replay)}",
        f"       uncommitted_bytes: {sm.uncommitted_bytes}",
        "    recovery:",
        f"       recoveries: {sm.recoveries}",
        f"       replayed_requests: {sm.replays_sent}",
        f"       evictions: {sm.evictions}",
    ]
    return "\n".join(lines)


def format_ir(imp: Import) -> str:
    """The last IR notice this import applied (none: `nidtbl_version: 0`)."""
    ir = imp.ir
    if ir is None:
        return f"imperative_recovery: {_ir_enabled(imp.client)}\nnidtbl_version: 0"
    return "\n".join([
        f"imperative_recovery: {_ir_enabled(imp.client)}",
        f"nidtbl_version: {ir.version}",
        f"nid: {ir.nid}",
        f"node: {ir.node or '-'}",
        f"instance: {ir.epoch}",
        f"received: {int(ir.received)}",
    ])


def _ir_enabled(client: Client) -> str:
    return "ENABLED" if client.ir else "DISABLED"


def format_ir_state(client: Client) -> str:
    """Lustre's `mgc.*.ir_state`."""
    return (f"imperative_recovery: {_ir_enabled(client)}\n"
            f"client_state:\n"
            f"    - {{ client: {client.uuid}, nidtbl_version: {client.nidtbl_version} }}")


def import_params(imp: Import) -> dict[str, Callable[[], str]]:
    base = obd_name(imp)
    tree: dict[str, Callable[[], str]] = {
        f"{base}.state": lambda: format_state(imp),
        f"{base}.import": lambda: format_import(imp),
        f"{base}.timeouts": lambda: imp.at.render(time.time()),
        f"{base}.uuid": lambda: imp.client.uuid,
    }
    if imp.kind == "MGT":
        tree[f"{base}.ir_state"] = lambda: format_ir_state(imp.client)
    else:
        tree[f"{base}.ir"] = lambda: format_ir(imp)
    return tree


def client_params(client: Client) -> dict[str, Callable[[], str]]:
    tree: dict[str, Callable[[], str]] = {}
    for imp in client.imports:
        tree.update(import_params(imp))
    return tree


def match(params: dict[str, Callable[[], str]], pattern: str) -> dict[str, str]:
    """The values of the parameters whose names match a glob, sorted by name.

    Same rule as node/params.match; not imported from there because that module pulls in
    the server's target code, which a client has no business loading."""
    return {name: fn() for name, fn in sorted(params.items())
            if fnmatch.fnmatchcase(name, pattern)}
