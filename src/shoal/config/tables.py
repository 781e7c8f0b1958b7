"""CSV tables a person can read and edit, like the Cray SDB tables behind xtfilesys2db,
xtlustreserv2db and xtlustrefailover2db.

One directory holds any number of file systems, one row per item, each row naming its file
system:

    filesystems.csv  fs_name, auto_failover, settings     settings: `KEY="value" ...` (shell)
    nodes.csv        fs, node, address                    NID_MAP, one row per node
    services.csv     fs, target, kind, index, node, device   one row per target per node
    failover.csv     fs, target, primary, backups         backups: space-separated, in order

services.csv says where a target may run, failover.csv in which order; they must agree (a
target missing from failover.csv takes the order of its services.csv rows). Lines starting
with `#` are comments. Every problem is reported as `file:line: reason`, all of them at once,
and `read_tables` has no side effects, so a corrupt table never reaches the store.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.config.fs_defs import format_findings, parse_settings, render_settings
from shoal.config.model import (
    KINDS,
    FileSystemDef,
    Finding,
    Loc,
    TargetDef,
    Where,
    sort_targets,
    target_name,
    validate_cluster,
    validate_fs,
)
from shoal.errors import ConfigError

FILESYSTEMS = "filesystems.csv"
NODES = "nodes.csv"
SERVICES = "services.csv"
FAILOVER = "failover.csv"

COLUMNS: dict[str, tuple[str, ...]] = {
    FILESYSTEMS: ("fs_name", "auto_failover", "settings"),
    NODES: ("fs", "node", "address"),
    SERVICES: ("fs", "target", "kind", "index", "node", "device"),
    FAILOVER: ("fs", "target", "primary", "backups"),
}

_BOOL = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True, slots=True)
class ServiceRow:
    fs: str
    target: str
    kind: str
    index: int
    node: str
    device: str


@dataclass(frozen=True, slots=True)
class FailoverRow:
    fs: str
    target: str
    primary: str
    backups: tuple[str, ...]


def service_rows(fs: FileSystemDef) -> list[ServiceRow]:
    return [
        ServiceRow(fs.name, t.name, t.kind, t.index, node, device)
        for t in fs.targets
        for node, device in t.devices
    ]


def failover_rows(fs: FileSystemDef) -> list[FailoverRow]:
    return [FailoverRow(fs.name, t.name, t.primary, t.backups) for t in fs.targets if t.devices]


# -- writing ------------------------------------------------------------------------------


def render_tables(fss: Iterable[FileSystemDef]) -> dict[str, str]:
    """File name -> CSV text for these file systems."""
    bufs = {name: io.StringIO() for name in COLUMNS}
    writers = {name: csv.writer(buf, lineterminator="\n") for name, buf in bufs.items()}
    for name, columns in COLUMNS.items():
        writers[name].writerow(columns)
    for fs in fss:
        writers[FILESYSTEMS].writerow(
            [fs.name, "yes" if fs.auto_failover else "no", render_settings(fs.settings)]
        )
        for node, address in fs.nids.items():
            writers[NODES].writerow([fs.name, node, address])
        for r in service_rows(fs):
            writers[SERVICES].writerow([r.fs, r.target, r.kind, r.index, r.node, r.device])
        for f in failover_rows(fs):
            writers[FAILOVER].writerow([f.fs, f.target, f.primary, " ".join(f.backups)])
    return {name: buf.getvalue() for name, buf in bufs.items()}


def generate(fsdefs: FileSystemDef | Iterable[FileSystemDef], out_dir: str | Path) -> list[Path]:
    """Write the tables for these file systems into out_dir, keeping (and replacing by name)
    file systems already there. Everything is checked before the first byte is written; each
    file is replaced atomically. Returns the paths written."""
    new = [fsdefs] if isinstance(fsdefs, FileSystemDef) else list(fsdefs)
    out = Path(out_dir)
    errors: list[Finding] = []
    for fs in new:
        errs, _ = validate_fs(fs, Where(fs.source or fs.name))
        errors.extend(errs)
    if errors:
        raise ConfigError(format_findings(errors))
    existing = read_tables(out) if any((out / name).exists() for name in COLUMNS) else []
    replaced = {fs.name for fs in new}
    merged = [fs for fs in existing if fs.name not in replaced] + new
    cluster_errors = validate_cluster(merged)
    if cluster_errors:
        raise ConfigError(format_findings(cluster_errors))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_tables(merged).items():
        path = out / name
        _atomic_write(path, text)
        paths.append(path)
    return paths


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- reading ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Draft:
    """A file system being assembled from rows of several files."""

    name: str
    auto_failover: bool
    settings: dict[str, str]
    where: Where
    nids: dict[str, str] = field(default_factory=dict)
    # target -> (kind, index, [(node, device)], loc of first row)
    services: dict[str, tuple[str, int, list[tuple[str, str]], Loc]] = field(default_factory=dict)
    order: dict[str, tuple[list[str], Loc]] = field(default_factory=dict)


def _rows(path: Path, errors: list[Finding]) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for every data row, checking the header; [] if the file is unusable."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        errors.append(Finding(source, 0, "missing table"))
        return []
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(Finding(source, 0, f"cannot read: {exc}"))
        return []
    expected = COLUMNS[path.name]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    out: list[tuple[int, dict[str, str]]] = []
    line = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(Finding(source, reader.line_num or start, f"bad CSV: {exc}"))
            return out
        line = start
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        if header is None:
            header = cells
            unknown = [c for c in header if c not in expected]
            missing = [c for c in expected if c not in header]
            dupes = {c for c in header if header.count(c) > 1}
            if unknown:
                errors.append(Finding(source, line, f"unknown column(s): {', '.join(unknown)}"))
            if missing:
                errors.append(Finding(source, line, f"missing column(s): {', '.join(missing)}"))
            if dupes:
                errors.append(
                    Finding(source, line, f"duplicate column(s): {', '.join(sorted(dupes))}")
                )
            if unknown or missing or dupes:
                return []
            continue
        if len(cells) != len(header):
            errors.append(
                Finding(
                    source,
                    line,
                    f"expected {len(header)} fields ({', '.join(header)}), got {len(cells)}",
                )
            )
            continue
        out.append((line, dict(zip(header, cells, strict=True))))
    if header is None:
        errors.append(Finding(source, max(line, 1), "empty table: no header line"))
    return out


def read_tables(directory: str | Path) -> list[FileSystemDef]:
    """Every file system in the tables under `directory`; raises ConfigError listing every
    problem as `file:line: reason`."""
    fss, _ = read_tables_with_warnings(directory)
    return fss


def read_tables_with_warnings(directory: str | Path) -> tuple[list[FileSystemDef], list[str]]:
    d = Path(directory)
    errors: list[Finding] = []
    drafts: dict[str, _Draft] = {}
    _read_filesystems(d / FILESYSTEMS, drafts, errors)
    _read_nodes(d / NODES, drafts, errors)
    _read_services(d / SERVICES, drafts, errors)
    _read_failover(d / FAILOVER, drafts, errors)

    fss: list[FileSystemDef] = []
    warnings: list[Finding] = []
    for draft in drafts.values():
        fs = _assemble(draft, errors)
        errs, warns = validate_fs(fs, draft.where)
        errors.extend(errs)
        warnings.extend(warns)
        fss.append(fs)
    if not errors:
        errors.extend(validate_cluster(fss))
    if errors:
        raise ConfigError(format_findings(_dedupe(errors)))
    return fss, [str(w) for w in warnings]


def _dedupe(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _read_filesystems(path: Path, drafts: dict[str, _Draft], errors: list[Finding]) -> None:
    source = str(path)
    for line, row in _rows(path, errors):
        name = row["fs_name"]
        if name in drafts:
            first = drafts[name].where.fs_loc
            errors.append(
                Finding(
                    source,
                    line,
                    f"file system {name} listed twice (first at line {first[1] if first else 0})",
                )
            )
            continue
        auto = _BOOL.get(row["auto_failover"].lower())
        if auto is None:
            errors.append(
                Finding(source, line, f"auto_failover {row['auto_failover']!r}: expected yes or no")
            )
            auto = False
        try:
            settings = parse_settings(row["settings"])
        except ValueError as exc:
            errors.append(Finding(source, line, f"settings: {exc}"))
            settings = {}
        where = Where(source, fs_loc=(source, line), missing_loc=(source, line))
        where.setting_locs = dict.fromkeys(settings, (source, line))
        drafts[name] = _Draft(name, auto, settings, where)


def _draft_for(
    drafts: dict[str, _Draft], name: str, source: str, line: int, errors: list[Finding]
) -> _Draft | None:
    draft = drafts.get(name)
    if draft is None:
        errors.append(Finding(source, line, f"unknown file system {name!r} (not in {FILESYSTEMS})"))
    return draft


def _read_nodes(path: Path, drafts: dict[str, _Draft], errors: list[Finding]) -> None:
    source = str(path)
    for line, row in _rows(path, errors):
        draft = _draft_for(drafts, row["fs"], source, line, errors)
        if draft is None:
            continue
        node = row["node"]
        if node in draft.nids:
            first = draft.where.nid_locs[node][1]
            errors.append(
                Finding(
                    source,
                    line,
                    f"node {node} of {draft.name} listed twice (first at line {first})",
                )
            )
            continue
        draft.nids[node] = row["address"]
        draft.where.nid_locs[node] = (source, line)


def _read_services(path: Path, drafts: dict[str, _Draft], errors: list[Finding]) -> None:
    source = str(path)
    for line, row in _rows(path, errors):
        draft = _draft_for(drafts, row["fs"], source, line, errors)
        if draft is None:
            continue
        kind, name = row["kind"], row["target"]
        if kind not in KINDS:
            errors.append(Finding(source, line, f"unknown kind {kind!r}: expected MGT, MDT or OST"))
            continue
        try:
            index = int(row["index"], 10)
        except ValueError:
            errors.append(Finding(source, line, f"index {row['index']!r} is not a number"))
            continue
        expected = target_name(draft.name, kind, index)
        if name != expected:
            errors.append(
                Finding(
                    source,
                    line,
                    f"inconsistent row: {kind} {index} of {draft.name} is named {expected}, not {name}",
                )
            )
            continue
        node, device = row["node"], row["device"]
        entry = draft.services.get(name)
        if entry is None:
            draft.services[name] = (kind, index, [(node, device)], (source, line))
            draft.where.target_locs[name] = (source, line)
        elif any(n == node for n, _ in entry[2]):
            errors.append(Finding(source, line, f"{name} on node {node} listed twice"))
            continue
        else:
            entry[2].append((node, device))
        draft.where.device_locs[(name, node)] = (source, line)


def _read_failover(path: Path, drafts: dict[str, _Draft], errors: list[Finding]) -> None:
    source = str(path)
    for line, row in _rows(path, errors):
        draft = _draft_for(drafts, row["fs"], source, line, errors)
        if draft is None:
            continue
        name = row["target"]
        if name in draft.order:
            first = draft.order[name][1][1]
            errors.append(Finding(source, line, f"{name} listed twice (first at line {first})"))
            continue
        nodes = [row["primary"], *row["backups"].split()]
        draft.order[name] = (nodes, (source, line))


def _assemble(draft: _Draft, errors: list[Finding]) -> FileSystemDef:
    targets: list[TargetDef] = []
    for name, (nodes, (source, line)) in draft.order.items():
        if name not in draft.services:
            errors.append(
                Finding(source, line, f"inconsistent row: {name} has no row in {SERVICES}")
            )
        elif not nodes[0]:
            errors.append(Finding(source, line, f"{name}: empty primary"))
        elif len(set(nodes)) != len(nodes):
            errors.append(
                Finding(source, line, f"{name}: a node is listed twice in its failover order")
            )
    for name, (kind, index, devices, _) in draft.services.items():
        by_node = dict(devices)
        order = draft.order.get(name)
        if order is not None and set(order[0]) != set(by_node) and order[0][0]:
            source, line = order[1]
            errors.append(
                Finding(
                    source,
                    line,
                    f"inconsistent row: failover order {' '.join(order[0])} of {name} does not "
                    f"match its nodes in {SERVICES} ({' '.join(by_node)})",
                )
            )
            order = None
        nodes = (
            order[0] if order is not None and len(set(order[0])) == len(order[0]) else list(by_node)
        )
        devs = tuple((n, by_node[n]) for n in nodes if n in by_node)
        targets.append(TargetDef(name=name, kind=kind, index=index, fs=draft.name, devices=devs))
    return FileSystemDef(
        name=draft.name,
        nids=draft.nids,
        targets=sort_targets(targets),
        auto_failover=draft.auto_failover,
        settings=draft.settings,
        source=draft.where.source,
    )
