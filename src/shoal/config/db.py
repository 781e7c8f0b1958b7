"""Hand edits of the configuration in the store: the `shoal db ...` commands, after Cray's
xtfilesys2db (file systems), xtlustreserv2db (services: a target on a node) and
xtlustrefailover2db (failover orders).

Each edit reads the configuration, changes one file system in the model, checks the result
(a half-built file system is allowed: targets can be added one by one) and writes the
difference in one guarded transaction, under the same race rule as write_conf: if anything
changed since the read, CompareFailed and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from shoal.config.model import FileSystemDef, TargetDef, parse_target_name
from shoal.config.tables import FailoverRow, ServiceRow, failover_rows, service_rows
from shoal.config.write_conf import Diff, apply_changes, check_changes, read_conf, snapshot
from shoal.errors import Exists, InvalidArgument, NotFound
from shoal.store.base import Store


async def _edit(
    store: Store,
    fs: str,
    change: Callable[[FileSystemDef | None], FileSystemDef | None],
    what: str,
) -> Diff:
    snap = await snapshot(store)
    new = change(snap.fss.get(fs))
    if new is not None:
        # source names where errors point: the store keys, not a file
        check_changes(snap, [replace(new, source="")], complete=False)
    return await apply_changes(store, snap, {fs: new}, dry_run=False, what=what)


def _need(fs: FileSystemDef | None, name: str) -> FileSystemDef:
    if fs is None:
        raise NotFound(f"no file system {name}")
    return fs


def _target(fsd: FileSystemDef, target: str) -> TargetDef:
    try:
        return fsd.target(target)
    except KeyError:
        raise NotFound(f"no target {target} in file system {fsd.name}") from None


async def add_filesystem(
    store: Store,
    name: str,
    *,
    nids: Mapping[str, str],
    auto_failover: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Diff:
    """A new file system with no targets yet (add them with add_service)."""

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        if cur is not None:
            raise Exists(f"file system {name} already exists")
        return FileSystemDef(name, dict(nids), (), auto_failover, dict(settings or {}))

    return await _edit(store, name, change, f"add file system {name}")


async def update_filesystem(
    store: Store,
    name: str,
    *,
    auto_failover: bool | None = None,
    nids: Mapping[str, str] | None = None,
    remove_nodes: Iterable[str] = (),
    settings: Mapping[str, str] | None = None,
    remove_settings: Iterable[str] = (),
) -> Diff:
    """Change a file system's own fields; nids and settings are merged in."""

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        fs = _need(cur, name)
        new_nids = {**fs.nids, **(nids or {})}
        for node in remove_nodes:
            if node not in new_nids:
                raise NotFound(f"node {node} is not in the NID map of {name}")
            del new_nids[node]
        new_settings = {**fs.settings, **(settings or {})}
        for key in remove_settings:
            new_settings.pop(key, None)
        auto = fs.auto_failover if auto_failover is None else auto_failover
        return FileSystemDef(name, new_nids, fs.targets, auto, new_settings)

    return await _edit(store, name, change, f"update file system {name}")


async def remove_filesystem(store: Store, name: str) -> Diff:
    def change(cur: FileSystemDef | None) -> None:
        _need(cur, name)
        return None

    return await _edit(store, name, change, f"remove file system {name}")


async def list_filesystems(store: Store) -> list[FileSystemDef]:
    return await read_conf(store, strict=False)


def _target_parts(fs: str, target: str) -> tuple[str, int]:
    try:
        tfs, kind, index = parse_target_name(target)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if kind != "MGT" and tfs != fs:
        raise InvalidArgument(f"target {target} does not belong to file system {fs}")
    return kind, index


async def add_service(store: Store, fs: str, target: str, node: str, device: str) -> Diff:
    """Let `node` serve `target` from `device`: a new target, or one more node at the end of
    its failover order."""
    kind, index = _target_parts(fs, target)

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        fsd = _need(cur, fs)
        others = [t for t in fsd.targets if t.name != target]
        existing = [t for t in fsd.targets if t.name == target]
        if existing:
            t = existing[0]
            if node in t.nodes:
                raise Exists(f"{target} already has node {node}")
            t = replace(t, devices=(*t.devices, (node, device)))
        else:
            t = TargetDef(target, kind, index, fs, ((node, device),))
        return fsd.with_targets([*others, t])

    return await _edit(store, fs, change, f"add service {target} on {node}")


async def remove_service(store: Store, fs: str, target: str, node: str | None = None) -> Diff:
    """Stop `node` serving `target` (the target goes with its last node), or the whole
    target when node is None."""

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        fsd = _need(cur, fs)
        t = _target(fsd, target)
        others = [x for x in fsd.targets if x.name != target]
        if node is None:
            return fsd.with_targets(others)
        if node not in t.nodes:
            raise NotFound(f"{target} has no node {node}")
        devices = tuple(d for d in t.devices if d[0] != node)
        return fsd.with_targets([*others, replace(t, devices=devices)] if devices else others)

    return await _edit(store, fs, change, f"remove service {target}")


async def list_services(store: Store, fs: str | None = None) -> list[ServiceRow]:
    return [row for one in await read_conf(store, fs, strict=False) for row in service_rows(one)]


async def set_failover(
    store: Store,
    fs: str,
    target: str,
    nodes: Iterable[str],
    *,
    devices: Mapping[str, str] | None = None,
) -> Diff:
    """Replace the failover order of `target` by `nodes` (primary first). A node new to the
    target serves it from `devices[node]`, else from the primary's device path (the usual
    shared-storage case); a node left out stops being able to serve it."""
    order = list(nodes)

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        fsd = _need(cur, fs)
        t = _target(fsd, target)
        if not order:
            raise InvalidArgument("a failover order needs at least a primary node")
        if len(set(order)) != len(order):
            raise InvalidArgument(f"a node appears twice in {' '.join(order)}")
        current = dict(t.devices)
        default = t.devices[0][1]
        new = tuple((n, (devices or {}).get(n, current.get(n, default))) for n in order)
        return fsd.with_targets(
            [*(x for x in fsd.targets if x.name != target), replace(t, devices=new)]
        )

    return await _edit(store, fs, change, f"set failover of {target}")


async def remove_failover(store: Store, fs: str, target: str) -> Diff:
    """Drop every backup of `target`: only its primary may serve it."""

    def change(cur: FileSystemDef | None) -> FileSystemDef:
        fsd = _need(cur, fs)
        t = _target(fsd, target)
        others = [x for x in fsd.targets if x.name != target]
        return fsd.with_targets([*others, replace(t, devices=t.devices[:1])])

    return await _edit(store, fs, change, f"remove failover of {target}")


async def list_failover(store: Store, fs: str | None = None) -> list[FailoverRow]:
    return [row for one in await read_conf(store, fs, strict=False) for row in failover_rows(one)]
