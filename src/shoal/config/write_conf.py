"""Configuration in the store: `shoal config write` (write_conf) and `shoal config show` /
`shoal up` (read_conf). The hand edits of `shoal db ...` live in shoal.config.db and the
failover-admin settings of `shoal foadmin` in shoal.config.foadmin; all share the rules here.

Layout (JSON values, sorted keys, so `etcdctl get` and `sqlite3` show something readable):

    /shoal/config/.generation                  bumped by every configuration change
    /shoal/config/<fs>/.generation             bumped by every change to this file system
    /shoal/config/<fs>/filesystem              {"name", "auto_failover", "nids", "settings"}
    /shoal/config/<fs>/targets/<target>        {"name", "kind", "index", "devices"}

Race rule: every change reads the whole configuration at once, computes the new keys, and
writes them in ONE transaction that compares the mod_revision (as read) of the cluster-wide
`.generation` marker, which every change rewrites, of the file system's own marker, and of
every key it writes or deletes (absent for a new key). Two administrators racing therefore
conflict on the marker whatever they edit: one wins, the other gets CompareFailed and nothing
of theirs is written. Unchanged configuration means no transaction at all, so a
second identical `shoal config write` is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shoal.config.fs_defs import format_findings
from shoal.config.model import (
    FileSystemDef,
    Finding,
    TargetDef,
    Where,
    sort_targets,
    validate_cluster,
    validate_fs,
)
from shoal.errors import CompareFailed, ConfigError, NotFound
from shoal.store.base import ROOT, KeyValue, Store, config_prefix

CONFIG_ROOT = f"{ROOT}/config/"
GENERATION_KEY = f"{CONFIG_ROOT}.generation"
_GEN = ".generation"
_FS = "filesystem"
_TARGETS = "targets/"


def fs_key(fs: str) -> str:
    return config_prefix(fs) + _FS


def fs_generation_key(fs: str) -> str:
    return config_prefix(fs) + _GEN


def target_config_key(fs: str, target: str) -> str:
    return config_prefix(fs) + _TARGETS + target


# -- encoding -----------------------------------------------------------------------------


def _dump(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def encode_fs(fs: FileSystemDef) -> dict[str, bytes]:
    """Key -> value for one file system (its generation marker aside)."""
    # Pairs, not objects: NID_MAP order is the nodes' first-appearance order.
    out = {
        fs_key(fs.name): _dump(
            {
                "name": fs.name,
                "auto_failover": fs.auto_failover,
                "nids": [[n, a] for n, a in fs.nids.items()],
                "settings": [[k, v] for k, v in fs.settings.items()],
            }
        )
    }
    for t in fs.targets:
        out[target_config_key(fs.name, t.name)] = _dump(
            {
                "name": t.name,
                "kind": t.kind,
                "index": t.index,
                "devices": [list(d) for d in t.devices],
            }
        )
    return out


def _decode_group(
    fs: str, kvs: Mapping[str, KeyValue], errors: list[Finding]
) -> FileSystemDef | None:
    fkey = fs_key(fs)
    try:
        if fkey not in kvs:
            raise ValueError("missing: the file system has targets but no definition")
        head = json.loads(kvs[fkey].value)
        nids = {str(n): str(a) for n, a in head["nids"]}
        settings = {str(k): str(v) for k, v in head["settings"]}
        auto = bool(head["auto_failover"])
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(Finding(fkey, 0, f"unreadable file system record: {exc}"))
        return None
    targets: list[TargetDef] = []
    prefix = config_prefix(fs) + _TARGETS
    for key, kv in kvs.items():
        if not key.startswith(prefix):
            continue
        try:
            rec = json.loads(kv.value)
            t = TargetDef(
                name=str(rec["name"]),
                kind=str(rec["kind"]),
                index=int(rec["index"]),
                fs=fs,
                devices=tuple((str(n), str(d)) for n, d in rec["devices"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            errors.append(Finding(key, 0, f"unreadable target record: {exc}"))
            continue
        if key != prefix + t.name:
            errors.append(Finding(key, 0, f"record names target {t.name}, not the key's"))
            continue
        targets.append(t)
    return FileSystemDef(
        fs, nids, sort_targets(targets), auto, settings, source=f"store:{config_prefix(fs)}"
    )


def _where(fs: FileSystemDef) -> Where:
    where = Where(fs_key(fs.name), fs_loc=(fs_key(fs.name), 0))
    for t in fs.targets:
        where.target_locs[t.name] = (target_config_key(fs.name, t.name), 0)
    return where


@dataclass(slots=True)
class Snapshot:
    """Everything under /shoal/config/ as read at one revision."""

    kvs: dict[str, KeyValue]
    fss: dict[str, FileSystemDef]
    errors: list[Finding]


async def snapshot(store: Store) -> Snapshot:
    kvs_list, _ = await store.range(CONFIG_ROOT)
    kvs = {kv.key: kv for kv in kvs_list}
    groups: dict[str, dict[str, KeyValue]] = {}
    for key, kv in kvs.items():
        rest = key[len(CONFIG_ROOT) :]
        fs, sep, _ = rest.partition("/")
        if sep:  # keys directly under the root (the cluster marker) belong to no fs
            groups.setdefault(fs, {})[key] = kv
    errors: list[Finding] = []
    fss: dict[str, FileSystemDef] = {}
    for fs, group in sorted(groups.items()):
        if set(group) <= {fs_generation_key(fs)}:
            continue  # a lone marker left by a removed file system's generation
        decoded = _decode_group(fs, group, errors)
        if decoded is not None:
            fss[fs] = decoded
    return Snapshot(kvs, fss, errors)


# -- diff ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Diff:
    """What a configuration change does to the store, key by key (generation markers are
    bookkeeping and not listed). `revision` is the store revision it was applied at, None
    when nothing was written (no change, or a dry run)."""

    added: dict[str, bytes] = field(default_factory=dict)
    changed: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    removed: dict[str, bytes] = field(default_factory=dict)
    revision: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def __bool__(self) -> bool:
        return not self.empty

    def render(self) -> str:
        """One line per key (`+` added, `~` changed with its changed fields, `-` removed)."""
        if self.empty:
            return "no changes"
        lines: list[str] = []
        for key in sorted({*self.added, *self.changed, *self.removed}):
            if key in self.added:
                lines.append(f"+ {key} {self.added[key].decode(errors='replace')}")
            elif key in self.removed:
                lines.append(f"- {key} {self.removed[key].decode(errors='replace')}")
            else:
                old, new = self.changed[key]
                lines.append(f"~ {key}")
                lines.extend(_field_changes(old, new))
        return "\n".join(lines)


def _field_changes(old: bytes, new: bytes) -> list[str]:
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return [f"    {old.decode(errors='replace')} -> {new.decode(errors='replace')}"]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [f"    {json.dumps(a)} -> {json.dumps(b)}"]
    return [
        f"    {k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
        for k in sorted({*a, *b})
        if a.get(k) != b.get(k)
    ]


def _same(old: bytes, new: bytes) -> bool:
    # Semantic comparison, so a record re-encoded by another tool is not a change.
    try:
        return bool(json.loads(old) == json.loads(new))
    except ValueError:
        return False


async def apply_changes(
    store: Store,
    snap: Snapshot,
    desired: Mapping[str, FileSystemDef | None],
    *,
    dry_run: bool,
    what: str,
) -> Diff:
    """Make the store hold `desired` (fs name -> definition, None = remove it), guarded."""
    diff = Diff()
    touched: set[str] = set()
    for name, fs in desired.items():
        prefix = config_prefix(name)
        current = {
            k: kv for k, kv in snap.kvs.items() if k.startswith(prefix) and not k.endswith(_GEN)
        }
        wanted = encode_fs(fs) if fs is not None else {}
        for key, value in wanted.items():
            if key not in current:
                diff.added[key] = value
            elif not _same(current[key].value, value):
                diff.changed[key] = (current[key].value, value)
        for key, kv in current.items():
            if key not in wanted:
                diff.removed[key] = kv.value
        if any(k.startswith(prefix) for k in (*diff.added, *diff.changed, *diff.removed)):
            touched.add(name)
    if diff.empty or dry_run:
        return diff

    def rev(key: str) -> int:
        kv = snap.kvs.get(key)
        return kv.mod_revision if kv is not None else 0  # 0: must still be absent

    # Every configuration writer rewrites the cluster marker, so comparing it alone orders
    # all of them; comparing each key we write or delete as well catches a hand edit made
    # behind Shoal's back (etcdctl). Only these, not every key read: etcd refuses a
    # transaction of more than --max-txn-ops (default 128) compares, and a large file
    # system has more targets than that.
    compares = [(GENERATION_KEY, rev(GENERATION_KEY))]
    compares += [(key, rev(key)) for key in (*diff.added, *diff.changed, *diff.removed)]
    puts = list(diff.added.items()) + [(k, new) for k, (_, new) in diff.changed.items()]
    deletes = list(diff.removed)
    puts.append((GENERATION_KEY, _next_generation(snap.kvs.get(GENERATION_KEY))))
    for name in sorted(touched):
        gkey = fs_generation_key(name)
        compares.append((gkey, rev(gkey)))
        if desired[name] is None:
            if gkey in snap.kvs:
                deletes.append(gkey)
        else:
            puts.append((gkey, _next_generation(snap.kvs.get(gkey))))
    revision = await store.transaction(compares, puts, deletes)
    if revision is None:
        raise CompareFailed(
            f"{what}: the configuration changed concurrently (another administrator?); "
            "nothing was written; re-run to see the new difference"
        )
    diff.revision = revision
    return diff


def _next_generation(kv: KeyValue | None) -> bytes:
    try:
        current = int(kv.value) if kv is not None else 0
    except ValueError:
        current = 0
    return str(current + 1).encode()


def check_changes(snap: Snapshot, changed: Iterable[FileSystemDef], *, complete: bool) -> None:
    """Refuse (ConfigError, nothing written) a change that leaves the cluster invalid."""
    errors: list[Finding] = []
    changed = list(changed)
    for fs in changed:
        errs, _ = validate_fs(
            fs, _where(fs) if not fs.source else Where(fs.source), complete=complete
        )
        errors.extend(errs)
    names = {fs.name for fs in changed}
    others = [fs for name, fs in snap.fss.items() if name not in names]
    errors.extend(validate_cluster([*others, *changed]))
    if errors:
        raise ConfigError(format_findings(errors))


# -- write_conf / read_conf ---------------------------------------------------------------


async def write_conf(
    store: Store, fsdefs: Iterable[FileSystemDef], *, dry_run: bool = False, prune: bool = False
) -> Diff:
    """Push these file systems into the store (other file systems are left alone unless
    `prune`, which removes every file system not given). Returns the Diff; raises
    ConfigError for an invalid configuration and CompareFailed if another writer got there
    first, in both cases having written nothing."""
    fsdefs = list(fsdefs)
    snap = await snapshot(store)
    check_changes(snap, fsdefs, complete=True)
    desired: dict[str, FileSystemDef | None] = {fs.name: fs for fs in fsdefs}
    if prune:
        for name in snap.fss:
            desired.setdefault(name, None)
    return await apply_changes(store, snap, desired, dry_run=dry_run, what="write_conf")


async def read_conf(
    store: Store, fs: str | None = None, *, strict: bool = True
) -> list[FileSystemDef]:
    """The file systems configured in the store (all, or the one named). `strict` (what
    `shoal up` wants) refuses incomplete or inconsistent configuration with ConfigError;
    strict=False returns what is there, e.g. half-way through hand edits."""
    snap = await snapshot(store)
    if fs is not None and fs not in snap.fss:
        raise NotFound(f"file system {fs} is not configured (run `shoal config write`)")
    fss = [v for k, v in snap.fss.items() if fs is None or k == fs]
    errors = list(snap.errors)
    if strict:
        for one in fss:
            errs, _ = validate_fs(one, _where(one))
            errors.extend(errs)
        errors.extend(validate_cluster(snap.fss.values()))
    if errors and strict:
        raise ConfigError(format_findings(errors))
    return fss


async def config_generation(store: Store) -> int:
    """How many configuration changes the store has seen (0 if never configured)."""
    kv = await store.get(GENERATION_KEY)
    return int(kv.value) if kv is not None else 0
