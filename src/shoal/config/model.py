"""The parsed configuration of a Shoal cluster: file systems, their targets, failover orders.

Every configuration source (fs_defs files, the CSV tables, the store) parses into these
records and every sink writes from them, so a round trip through any of them compares equal.
The records are plain values: validation lives in `validate_*` below and in the parsers,
which report problems as `Finding`s carrying `file:line` so the administrator can go straight
to the line at fault (DESIGN.md invariant 4).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.config import settings as settings_schema
from shoal.config.settings import RESERVED_NAMES

KINDS = ("MGT", "MDT", "OST")
MGS_NAME = "MGS"  # Lustre names the MGT "MGS" whatever file system it serves
MAX_INDEX = 0xFFFF  # Lustre target indexes are 4 hex digits
MAX_FSNAME = 8  # Lustre's LUSTRE_MAXFSNAME

_FSNAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Node names become store key components and appear in `node:device`, so no '/', ':', '='.
_NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,62}$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
SETTING_KEY_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>[A-Za-z0-9_]+)\])?$")
# Names with a meaning in fs_defs; every other assignment is a free-form setting.
_TARGET_RE = re.compile(r"^(?P<fs>.+)-(?P<kind>MDT|OST)(?P<index>[0-9a-f]{4})$")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in a configuration source: an error, or a warning when non-fatal."""

    source: str
    line: int  # 0 when the problem has no single line (e.g. something missing)
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TargetDef:
    name: str  # "MGS" for the MGT, "scratch-MDT0000", "scratch-OST0003"
    kind: str  # "MGT" | "MDT" | "OST"
    index: int  # 0 for the MGT
    fs: str
    devices: tuple[tuple[str, str], ...]  # ((node, device), ...) in failover order

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes that may serve this target, primary first."""
        return tuple(node for node, _ in self.devices)

    @property
    def primary(self) -> str:
        return self.devices[0][0]

    @property
    def backups(self) -> tuple[str, ...]:
        return self.nodes[1:]

    def device_for(self, node: str) -> str:
        for n, device in self.devices:
            if n == node:
                return device
        raise KeyError(f"{self.name} has no device on node {node}")

    def sort_key(self) -> tuple[int, int]:
        # an unknown kind (reported by validation) sorts last instead of raising here
        return (KINDS.index(self.kind) if self.kind in KINDS else len(KINDS), self.index)


@dataclass(frozen=True, slots=True)
class FileSystemDef:
    name: str
    nids: dict[str, str]  # node name -> address, from NID_MAP
    targets: tuple[TargetDef, ...]  # MGT first, then MDTs by index, then OSTs by index
    auto_failover: bool
    settings: dict[str, str] = field(default_factory=dict)  # other assignments, verbatim
    # Provenance, not content: the same file system read from fs_defs, CSV or the store
    # compares equal.
    source: str = field(default="", compare=False)

    def target(self, name: str) -> TargetDef:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"file system {self.name} has no target {name}")

    @property
    def mgs(self) -> TargetDef | None:
        for t in self.targets:
            if t.kind == "MGT":
                return t
        return None

    @property
    def mdts(self) -> tuple[TargetDef, ...]:
        return tuple(t for t in self.targets if t.kind == "MDT")

    @property
    def osts(self) -> tuple[TargetDef, ...]:
        return tuple(t for t in self.targets if t.kind == "OST")

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in order of first appearance: NID_MAP order, then any stragglers."""
        seen: dict[str, None] = dict.fromkeys(self.nids)
        for t in self.targets:
            seen.update(dict.fromkeys(t.nodes))
        return tuple(seen)

    def targets_of(self, node: str) -> tuple[TargetDef, ...]:
        """The targets this node serves as primary."""
        return tuple(t for t in self.targets if t.devices and t.primary == node)

    def backed_up_by(self, node: str) -> tuple[TargetDef, ...]:
        """The targets this node may take over (it is in their failover list, not first)."""
        return tuple(t for t in self.targets if node in t.backups)

    def with_targets(self, targets: Iterable[TargetDef]) -> FileSystemDef:
        return FileSystemDef(
            name=self.name,
            nids=dict(self.nids),
            targets=sort_targets(targets),
            auto_failover=self.auto_failover,
            settings=dict(self.settings),
            source=self.source,
        )


# -- names ------------------------------------------------------------------------------


def target_name(fs: str, kind: str, index: int) -> str:
    if kind == "MGT":
        return MGS_NAME
    return f"{fs}-{kind}{index:04x}"


def parse_target_name(name: str) -> tuple[str, str, int]:
    """(fs, kind, index) of a target name; the MGT gives ("", "MGT", 0)."""
    if name == MGS_NAME:
        return ("", "MGT", 0)
    m = _TARGET_RE.match(name)
    if m is None:
        raise ValueError(
            f"not a target name: {name!r} (expected MGS, <fs>-MDT<hex4>, <fs>-OST<hex4>)"
        )
    return (m["fs"], m["kind"], int(m["index"], 16))


def sort_targets(targets: Iterable[TargetDef]) -> tuple[TargetDef, ...]:
    return tuple(sorted(targets, key=TargetDef.sort_key))


# -- value checks (each returns a reason, or None when the value is fine) ----------------


def check_fsname(name: str) -> str | None:
    if not name:
        return "missing fs_name (the file system name)"
    if len(name) > MAX_FSNAME or not _FSNAME_RE.match(name):
        return (
            f"bad file system name {name!r}: 1 to {MAX_FSNAME} letters, digits or '_' "
            "(Lustre's fsname rule)"
        )
    return None


def check_node(node: str) -> str | None:
    if not _NODE_RE.match(node):
        return (
            f"bad node name {node!r}: a letter, then letters, digits, '.', '_' or '-' "
            "(like nid00060)"
        )
    return None


def check_address(address: str) -> str | None:
    """An IPv4 or IPv6 address, or a host name (RFC 1123)."""
    try:
        ipaddress.ip_address(address)
        return None
    except ValueError:
        pass
    labels = address.rstrip(".").split(".") if address else []
    if (
        not labels
        or len(address) > 253
        or not all(_HOST_LABEL_RE.match(label) for label in labels)
        # all-numeric dotted forms that are not valid IPs are typos (127.0.0.300), not names
        or labels[-1].isdigit()
    ):
        return f"bad address {address!r}: not an IPv4/IPv6 address or host name"
    return None


def check_setting_key(key: str) -> str | None:
    m = SETTING_KEY_RE.match(key)
    if m is None:
        return f"bad setting name {key!r}: expected NAME or NAME[index]"
    if m["name"] in RESERVED_NAMES:
        return f"{key} is not a free-form setting"
    return None


def check_device(device: str) -> str | None:
    if not device:
        return "empty device path"
    if any(c.isspace() for c in device) or "\0" in device:
        return f"bad device path {device!r}: no whitespace allowed"
    return None


def check_index(index: int) -> str | None:
    if not 0 <= index <= MAX_INDEX:
        return f"index {index} out of range 0..{MAX_INDEX}"
    return None


def device_identity(node: str, device: str) -> tuple[str, str]:
    """What makes two device mentions the same storage: node plus normalised path."""
    parts = [p for p in device.split("/") if p not in ("", ".")]
    norm = ("/" if device.startswith("/") else "") + "/".join(parts)
    return (node, norm)


# -- whole-model checks shared by every source --------------------------------------------


Loc = tuple[str, int]  # (source, line)


@dataclass(slots=True)
class Where:
    """Maps model items to `file:line` for messages; each source fills in what it knows.
    Items may come from different files (the CSV tables), hence a location per item."""

    source: str  # what to blame for something missing or unplaced
    fs_loc: Loc | None = None
    missing_loc: Loc | None = None  # where a missing item is reported; (source, 0) if None
    nid_locs: dict[str, Loc] = field(default_factory=dict)
    target_locs: dict[str, Loc] = field(default_factory=dict)
    device_locs: dict[tuple[str, str], Loc] = field(default_factory=dict)  # (target, node)
    setting_locs: dict[str, Loc] = field(default_factory=dict)

    def _at(self, loc: Loc | None, reason: str) -> Finding:
        if loc is None:
            loc = self.fs_loc or (self.source, 0)
        return Finding(loc[0], loc[1], reason)

    def fs(self, reason: str) -> Finding:
        return self._at(self.fs_loc, reason)

    def missing(self, reason: str) -> Finding:
        source, line = self.missing_loc or (self.source, 0)
        return Finding(source, line, reason)

    def nid(self, node: str, reason: str) -> Finding:
        return self._at(self.nid_locs.get(node), reason)

    def setting(self, key: str, reason: str) -> Finding:
        return self._at(self.setting_locs.get(key), reason)

    def target(self, name: str, reason: str) -> Finding:
        return self._at(self.target_locs.get(name), reason)

    def device(self, target: str, node: str, reason: str) -> Finding:
        loc = self.device_locs.get((target, node)) or self.target_locs.get(target)
        return self._at(loc, reason)


def validate_fs(
    fs: FileSystemDef, where: Where, *, complete: bool = True
) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) for one file system. `complete` demands an MGS, MDT0 and an OST;
    hand edits in progress pass False so a half-built file system can be stored."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    if (reason := check_fsname(fs.name)) is not None:
        errors.append(where.fs(reason) if fs.name else where.missing(reason))
    for node, address in fs.nids.items():
        for reason in (check_node(node), check_address(address)):
            if reason is not None:
                errors.append(where.nid(node, f"NID_MAP: {reason}"))
    for key, raw in fs.settings.items():
        if (reason := check_setting_key(key)) is not None:
            errors.append(where.setting(key, reason))
            continue
        bad, _unused = settings_schema.check(key, raw)
        if bad is not None:
            errors.append(where.setting(key, bad))
    for key, reason in settings_schema.check_together(fs.settings):
        errors.append(where.setting(key, reason))
    seen_at: dict[str, str] = {}
    for node, address in fs.nids.items():
        if address in seen_at:
            errors.append(where.nid(node, f"NID_MAP: {node} has the address {address} of "
                                          f"{seen_at[address]}: two nodes, one address"))
        seen_at.setdefault(address, node)
    label = f"file system {fs.name}" if fs.name else "the file system"
    if complete:
        # Something missing has no line of its own: report it against the whole source.
        if fs.mgs is None:
            errors.append(where.missing(f"missing MGSDEV: {label} has no MGT"))
        if not fs.mdts:
            errors.append(where.missing(f"missing MDSDEV: {label} has no MDT"))
        elif 0 not in {t.index for t in fs.mdts}:
            errors.append(
                where.missing(f"missing MDSDEV[0]: {label} has no MDT0, which holds the root")
            )
        if not fs.osts:
            errors.append(where.missing(f"missing OSTDEV: {label} has no OST"))
    if len([t for t in fs.targets if t.kind == "MGT"]) > 1:
        errors.append(where.fs("more than one MGT defined"))
    seen_names: set[str] = set()
    used: dict[tuple[str, str], str] = {}
    for t in fs.targets:
        errors.extend(_validate_target(fs, t, where, seen_names, used))
        if fs.auto_failover and len(t.devices) == 1:
            warnings.append(
                where.target(
                    t.name,
                    f"{t.name} has no backup node: AUTO_FAILOVER=yes cannot fail it over",
                )
            )
    return errors, warnings


def _validate_target(
    fs: FileSystemDef,
    t: TargetDef,
    where: Where,
    seen_names: set[str],
    used: dict[tuple[str, str], str],
) -> list[Finding]:
    errors: list[Finding] = []
    if t.kind not in KINDS:
        errors.append(where.target(t.name, f"unknown target kind {t.kind!r}"))
        return errors
    if (reason := check_index(t.index)) is not None:
        errors.append(where.target(t.name, f"{t.kind} {reason}"))
    if t.name in seen_names:
        errors.append(where.target(t.name, f"duplicate {t.kind} index {t.index} ({t.name})"))
    seen_names.add(t.name)
    if t.name != target_name(fs.name, t.kind, t.index):
        errors.append(
            where.target(t.name, f"target name {t.name!r} does not match its kind and index")
        )
    if not t.devices:
        errors.append(where.target(t.name, f"{t.name} has no node:device"))
    nodes_here: set[str] = set()
    for node, device in t.devices:
        if node in nodes_here:
            errors.append(where.device(t.name, node, f"{t.name} lists node {node} twice"))
            continue
        nodes_here.add(node)
        if node not in fs.nids:
            errors.append(where.device(t.name, node, f"unknown node {node} (not in NID_MAP)"))
        if (reason := check_device(device)) is not None:
            errors.append(where.device(t.name, node, reason))
            continue
        ident = device_identity(node, device)
        other = used.get(ident)
        if other is not None and other != t.name:
            errors.append(
                where.device(
                    t.name, node, f"device {node}:{device} is used by both {other} and {t.name}"
                )
            )
        used.setdefault(ident, t.name)
    return errors


def validate_cluster(fss: Iterable[FileSystemDef]) -> list[Finding]:
    """Problems only visible across file systems sharing one cluster: a node mapped to two
    addresses, a device used by two file systems' targets, an MGS defined two ways (Lustre
    shares one MGS between file systems, so every definition of it must agree)."""
    errors: list[Finding] = []
    addresses: dict[str, tuple[str, str]] = {}
    devices: dict[tuple[str, str], tuple[str, str]] = {}
    mgs: tuple[str, TargetDef] | None = None
    names: dict[str, str] = {}
    for fs in fss:
        src = fs.source or fs.name
        if fs.name in names:
            errors.append(
                Finding(src, 0, f"file system {fs.name} defined twice (also in {names[fs.name]})")
            )
            continue
        names[fs.name] = src
        for node, address in fs.nids.items():
            prev = addresses.setdefault(node, (address, fs.name))
            if prev[0] != address:
                errors.append(
                    Finding(
                        src, 0, f"node {node} is {address} in {fs.name} but {prev[0]} in {prev[1]}"
                    )
                )
        for t in fs.targets:
            if t.kind == "MGT":
                if mgs is not None:
                    if mgs[1].devices != t.devices:
                        errors.append(
                            Finding(
                                src,
                                0,
                                f"MGS of {fs.name} differs from the MGS of {mgs[0]}: "
                                "file systems share one MGS, define it identically",
                            )
                        )
                    continue  # the shared MGS may reuse its own devices
                mgs = (fs.name, t)
            for node, device in t.devices:
                ident = device_identity(node, device)
                prev_t = devices.setdefault(ident, (fs.name, t.name))
                if prev_t[0] != fs.name:
                    errors.append(
                        Finding(
                            src,
                            0,
                            f"device {node}:{device} of {t.name} is also used by "
                            f"{prev_t[1]} of file system {prev_t[0]}",
                        )
                    )
    return errors
