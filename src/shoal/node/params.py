"""The node's parameter tree, named as Lustre's `lctl get_param` names it.

    health_check                         healthy | NOT HEALTHY
    mgs.MGS.stats, mdt.<target>.stats, obdfilter.<target>.stats
    <type>.<target>.{last_committed,last_transno,epoch,num_exports,exports,commit_interval}
    net.<node>.stats                     frames, rejected frames by reason, connections
    node.<node>.{loop_lag,max_loop_lag,targets}
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from shoal.node.evictor import NodeEvictor
from shoal.node.faults import NodeFaults
from shoal.node.health import HealthMonitor
from shoal.protocol.adaptive import AdaptiveEstimate, ATParams
from shoal.target.base import TargetService
from shoal.target.mdt import MDT
from shoal.target.ost import OST
from shoal.target.recovery import TargetRecovery

AT = ATParams()  # the same defaults as the clients' (protocol/adaptive.py says why)

OBD_TYPE = {"MGT": "mgs", "MDT": "mdt", "OST": "obdfilter"}


def obd_name(svc: TargetService) -> str:
    return f"{OBD_TYPE[svc.kind]}.{svc.name}"


def format_stats(svc: TargetService) -> str:
    lines = [f"{'snapshot_time':<26}{time.time():.6f} secs.nsecs"]
    for op, count in sorted(svc.stats.items()):
        if op.startswith("err_") or op == "reconstructed":
            lines.append(f"{op:<26}{count} samples [events]")
            continue
        total_us = svc.service_time.get(op, 0.0) * 1e6
        lines.append(f"{op:<26}{count} samples [usec] {total_us / max(count, 1):.0f} avg")
    lines.append(f"{'commits':<26}{svc.commits} samples [commits]")
    return "\n".join(lines)


def service_params(svc: TargetService) -> dict[str, Callable[[], str]]:
    base = obd_name(svc)
    return {
        f"{base}.stats": lambda: format_stats(svc),
        f"{base}.last_committed": lambda: str(svc.last_committed),
        f"{base}.last_transno": lambda: str(svc.last_transno),
        f"{base}.epoch": lambda: str(svc.epoch),
        f"{base}.commit_interval": lambda: str(svc.commit_interval),
        f"{base}.num_exports": lambda: str(len(svc.known_clients)),
        f"{base}.exports": lambda: "\n".join(svc.known_clients),
        f"{base}.uuid": lambda: svc.name,
        **quota_params(svc, base),
    }


def quota_params(svc: TargetService, base: str) -> dict[str, Callable[[], str]]:
    """An OST's quota slave (Lustre's osd-*.quota_slave.info) and MDT0's master."""
    if isinstance(svc, OST):
        qt = svc.quota

        def slave() -> str:
            return "\n".join([
                f"target name:    {svc.name}",
                f"conn to master: {'setup' if qt.ready else 'not setup'}",
                "space acct:     ugp",
                f"limited ids:    {len(qt.limited)}",
                f"granted KiB:    {sum(qt.granted.values())}",
                f"refused:        {qt.refused}",
                f"held:           {qt.held_writes}"])

        return {f"{base}.quota_slave": slave}
    if isinstance(svc, MDT) and svc.quota.master:
        mq = svc.quota

        def master() -> str:
            return "\n".join(
                [f"{t} {i}: bsoft={lim.bsoft} bhard={lim.bhard} isoft={lim.isoft} "
                 f"ihard={lim.ihard}" for (t, i), lim in sorted(mq.limits.items())]
                or ["no limits"])

        return {f"{base}.quota_master": master}
    return {}


def match(params: dict[str, Callable[[], str]], pattern: str) -> dict[str, str]:
    return {name: fn() for name, fn in sorted(params.items()) if fnmatch.fnmatchcase(name, pattern)}


class NodeParams:
    """The node's parameters: what get_param reads and set_param changes, of the parts it
    is given (the node's own dictionaries, shared, not copied)."""

    def __init__(self, node: str, services: Mapping[str, TargetService],
                 recovery: Mapping[str, TargetRecovery],
                 service_at: Mapping[str, AdaptiveEstimate], faults: NodeFaults,
                 evictor: NodeEvictor, health: HealthMonitor,
                 rpc_stats: Counter[str]) -> None:
        self.node = node
        self.services = services
        self.recovery = recovery
        self.service_at = service_at
        self.faults = faults
        self.evictor = evictor
        self.health = health
        self.rpc_stats = rpc_stats

    def set(self, name: str, value: str) -> list[str]:
        """Set every settable parameter matching `name` (a glob); the names set. Settable:
        `<obd>.<target>.inject_unhealthy=<reason>` makes the service's health check fail
        with that reason (empty: healthy again), as a failing path to the device would.
        `node.<node>.inject_loop_stall=<seconds>` blocks the event loop that long, as a
        stuck service would. `node.<node>.evict_timeout=<seconds>`: evict clients silent
        that long (0: never; protocol/ping_evict.py). `fail_loc`, `fail_val`, ...: this
        node's fail point (node/faults.py)."""
        done = self.faults.set_param(name, value)
        evict = f"node.{self.node}.evict_timeout"
        if fnmatch.fnmatchcase(evict, name):
            self.evictor.set_timeout(value, evict)
            done.append(evict)
        for svc in self.services.values():
            full = f"{obd_name(svc)}.inject_unhealthy"
            if fnmatch.fnmatchcase(full, name):
                if value:
                    self.health.forced_sick[svc.name] = f"injected: {value}"
                else:
                    self.health.forced_sick.pop(svc.name, None)
                done.append(full)
        stall = f"node.{self.node}.inject_loop_stall"
        if fnmatch.fnmatchcase(stall, name) and value:
            # a truly stuck event loop (a bug, a livelock): nothing on it runs for `value`
            # seconds (from 0.2 s on, so this reply leaves first); the heartbeat thread
            # notices and lets the leases lapse
            asyncio.get_running_loop().call_later(0.2, time.sleep, float(value))
            done.append(stall)
        return done

    def tree(self) -> dict[str, Any]:
        node, health, evictor = self.node, self.health, self.evictor
        tree: dict[str, Any] = {
            "health_check": health.report,
            f"net.{node}.stats": lambda: "\n".join(
                f"{k:<20}{v}" for k, v in sorted(self.rpc_stats.items())),
            f"node.{node}.loop_lag": lambda: f"{health.loop_lag:.3f}",
            f"node.{node}.max_loop_lag": lambda: f"{health.max_loop_lag:.3f}",
            f"node.{node}.targets": lambda: "\n".join(sorted(self.services)),
            f"node.{node}.evict_timeout": lambda: f"{evictor.timeout:g}",
            f"node.{node}.ping_evictions": lambda: str(evictor.evictions),
            **self.faults.params(),
        }
        for svc in self.services.values():
            tree.update(service_params(svc))
            if (rec := self.recovery.get(svc.name)) is not None:
                tree[f"{obd_name(svc)}.recovery_status"] = rec.status_text
            tree[f"{obd_name(svc)}.timeouts"] = (
                lambda n=svc.name: self.service_at.get(n, AdaptiveEstimate(
                    history=AT.at_history)).render("service", time.time()))
            tree[f"{obd_name(svc)}.health_check"] = (
                lambda s=svc: "healthy" if not health.problem(s.name) else "NOT HEALTHY")
        return tree
