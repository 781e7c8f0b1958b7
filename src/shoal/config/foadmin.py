"""Failover administration, the `shoal foadmin` command (Cray's xtlusfoadmin): switch
automatic failover on or off per target and per node, and set a target's admin state.

    /shoal/settings/auto_failover/<target>        "enabled" | "disabled"; absent: fs default
    /shoal/settings/auto_failover_node/<node>     "enabled" | "disabled"; absent: enabled
    /shoal/targets/<target>/admin_state           "enabled" | "disabled" | "stopped"

These are single keys an agent watches, so each setter is one plain write: there is nothing
read-modify-write about them to race on.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.config.model import FileSystemDef, check_node
from shoal.config.write_conf import snapshot
from shoal.errors import InvalidArgument, NotFound
from shoal.store.base import ROOT, KeyValue, Store, settings_key, target_key

ADMIN_STATES = ("enabled", "disabled", "stopped")


def auto_failover_key(target: str) -> str:
    return settings_key("auto_failover", target)


def node_auto_failover_key(node: str) -> str:
    return settings_key("auto_failover_node", node)


def admin_state_key(target: str) -> str:
    return target_key(target, "admin_state")


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """Per-target and per-node overrides of automatic failover, and targets' admin states."""

    targets: dict[str, bool]  # explicit per-target setting; absent = the fs default
    nodes: dict[str, bool]  # explicit per-node setting; absent = enabled
    admin_states: dict[str, str]  # absent = "enabled"

    def auto_failover(
        self,
        fs: FileSystemDef,
        target: str,
        *,
        from_node: str | None = None,
        to_node: str | None = None,
    ) -> bool:
        """May `target` fail over automatically (away from `from_node`, onto `to_node`)?
        Needs the target enabled (admin state), its own setting or else the file system's
        AUTO_FAILOVER on, and neither node switched off."""
        if self.admin_state(target) != "enabled":
            return False
        if not self.targets.get(target, fs.auto_failover):
            return False
        return all(self.nodes.get(n, True) for n in (from_node, to_node) if n is not None)

    def admin_state(self, target: str) -> str:
        return self.admin_states.get(target, "enabled")


async def _known_targets(store: Store) -> set[str]:
    return {t.name for fs in (await snapshot(store)).fss.values() for t in fs.targets}


async def set_auto_failover(store: Store, target: str, enabled: bool | None) -> int:
    """Enable or disable automatic failover of one target; None reverts to the file system's
    AUTO_FAILOVER. Returns the store revision."""
    if target not in await _known_targets(store):
        raise NotFound(f"no target {target} is configured")
    return await _put_or_clear(store, auto_failover_key(target), enabled)


async def set_node_auto_failover(store: Store, node: str, enabled: bool | None) -> int:
    """Enable or disable automatic failover onto (and away from) one node; None clears."""
    if (reason := check_node(node)) is not None:
        raise InvalidArgument(reason)
    return await _put_or_clear(store, node_auto_failover_key(node), enabled)


async def _put_or_clear(store: Store, key: str, enabled: bool | None) -> int:
    if enabled is None:
        await store.delete(key)
        return await store.revision()
    return await store.put(key, b"enabled" if enabled else b"disabled")


async def set_admin_state(store: Store, target: str, state: str) -> int:
    if state not in ADMIN_STATES:
        raise InvalidArgument(f"admin state {state!r}: expected one of {', '.join(ADMIN_STATES)}")
    if target not in await _known_targets(store):
        raise NotFound(f"no target {target} is configured")
    return await store.put(admin_state_key(target), state.encode())


async def get_admin_state(store: Store, target: str) -> str:
    kv = await store.get(admin_state_key(target))
    return kv.value.decode(errors="replace") if kv is not None else "enabled"


async def read_failover_settings(store: Store) -> FailoverSettings:
    def flags(kvs: list[KeyValue], prefix: str) -> dict[str, bool]:
        return {kv.key[len(prefix) :]: kv.value != b"disabled" for kv in kvs}

    tprefix = auto_failover_key("")
    nprefix = node_auto_failover_key("")
    tkvs, _ = await store.range(tprefix)
    nkvs, _ = await store.range(nprefix)
    skvs, _ = await store.range(f"{ROOT}/targets/")
    states = {
        kv.key[len(f"{ROOT}/targets/") : -len("/admin_state")]: kv.value.decode(errors="replace")
        for kv in skvs
        if kv.key.endswith("/admin_state")
    }
    return FailoverSettings(flags(tkvs, tprefix), flags(nkvs, nprefix), states)
