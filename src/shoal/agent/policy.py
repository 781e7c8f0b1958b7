"""Who takes a target that has no owner, and whether it may: pure rules every agent applies to
the same store contents, so all agents agree without talking to each other.

- A handover names its node: that node takes it (if alive).
- Otherwise the first live node in failover order takes it, except that a previous owner
  which has restarted goes last: a node that reboots rejoins as backup and does not steal its
  targets back (warm boot). Only with no other live node does it take its target again.
- A target that has never been served, or was stopped with the whole cluster, is started by
  its primary; a backup starts it only if the primary has not shown up within the boot grace.
- A node that has just started does not take (and so fence) a target whose last owner went
  without letting go until that owner has had the boot grace to show up (Pacemaker's
  dc-deadtime): after a whole cluster's power cut the owner is booting, not dead.
- Automatic failover (the owner died) needs the target's and both nodes' auto_failover on;
  starting a never-served target, a clean handover and a restart of the same node do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.agent.records import StateRecord


@dataclass(frozen=True, slots=True)
class Decision:
    taker: str | None  # the node that should take the target now, None: nobody yet
    why: str


def preferred_taker(nodes: Sequence[str], alive: set[str], state: StateRecord | None, *,
                    booted_for: float, boot_grace: float) -> Decision:
    """`nodes` in failover order; `alive` the nodes with a heartbeat; `booted_for` how long
    the deciding agent has been running (for the boot grace)."""
    live = [n for n in nodes if n in alive]
    if not live:
        return Decision(None, "no node of the failover pair is alive")
    if state is not None and state.clean and state.to and state.to in live:
        return Decision(state.to, f"handover to {state.to}")
    if state is None or state.state == "STOPPED":
        # first start, or the whole cluster was stopped: back where the configuration says
        if nodes[0] in alive:
            return Decision(nodes[0], "first start on the primary")
        if booted_for < boot_grace:
            return Decision(None, f"waiting {boot_grace:.0f}s for the primary {nodes[0]}")
        return Decision(live[0], f"primary {nodes[0]} absent at boot")
    if booted_for < boot_grace and nodes[0] not in alive:
        # the deciding node has just started: its primary may be starting too
        return Decision(None, f"waiting {boot_grace:.0f}s for the primary {nodes[0]}")
    prev = state.node
    if booted_for < boot_grace and not state.clean and prev not in alive and prev in nodes:
        # the last owner went without letting go and the deciding node has just started:
        # the whole pair may be coming back (a cluster started again after a power cut),
        # and a power fence cannot tell a booting node from a dead one
        return Decision(None, f"waiting {boot_grace:.0f}s for {prev}, its last owner")
    if prev in live and len(live) > 1:
        live = [n for n in live if n != prev] + [prev]
    return Decision(live[0], f"last owner {prev}")


def auto_failover_allowed(target: str, *, fs_default: bool, target_setting: str | None,
                          node_settings: dict[str, str | None], admin_state: str) -> str | None:
    """None if the target may fail over automatically, else why not."""
    if admin_state != "enabled":
        return f"admin state {admin_state}"
    enabled = fs_default if target_setting is None else target_setting == "enabled"
    if not enabled:
        return f"automatic failover disabled for {target}"
    for node, setting in node_settings.items():
        if setting == "disabled":
            return f"automatic failover disabled for node {node}"
    return None


def needs_failover(state: StateRecord | None, me: str) -> bool:
    """Taking this target is a failover (the previous owner did not let go cleanly)."""
    if state is None or state.clean:
        return False
    return state.node != me
