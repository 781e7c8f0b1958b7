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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.config.fs_defs import format_findings, parse_fs_defs, parse_settings, render_settings
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


def load(path: str | Path) -> tuple[list[FileSystemDef], list[str]]:
    """(file systems, warnings) from an fs_defs file or a directory of tables: what
    `shoal config write <path>` and `shoal config generate <fs_defs>` accept."""
    if Path(path).is_dir():
        return read_tables_with_warnings(path)
    fs, warnings = parse_fs_defs(path)
    return [fs], warnings


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
    # replace in place, so regenerating one file system does not reorder the tables
    by_name = {fs.name: fs for fs in new}
    merged = [by_name.pop(fs.name, fs) for fs in existing] + list(by_name.values())
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
    # target -> (kind, index, [(node, device)])
    services: dict[str, tuple[str, int, list[tuple[str, str]]]] = field(default_factory=dict)
    order: dict[str, tuple[list[str], Loc]] = field(default_factory=dict)


@dataclass(slots=True)
class _Reader:
    """Reads one directory of tables, collecting every problem.

    A row or table that is already reported as broken is remembered, so that what follows
    from it (a target "missing" because its row was rejected, a node "unknown" because its
    nodes.csv row was) is not reported again as if it were a separate mistake."""

    directory: Path
    errors: list[Finding] = field(default_factory=list)
    drafts: dict[str, _Draft] = field(default_factory=dict)
    broken_tables: set[str] = field(default_factory=set)
    broken_targets: set[tuple[str, str]] = field(default_factory=set)  # (fs, target)
    # by name alone: a rejected row may have named the wrong file system
    broken_nodes: set[str] = field(default_factory=set)

    def error(self, table: str, line: int, reason: str) -> None:
        self.errors.append(Finding(str(self.directory / table), line, reason))

    def rows(self, table: str) -> list[tuple[int, dict[str, str]]]:
        """(line, row) for every data row; a row of the wrong width is reported and, when
        it names a target or node, that item is marked broken."""
        path = self.directory / table
        n_errors = len(self.errors)
        out = _rows(path, self.errors, self._taint_short_row)
        if any(f.line <= 1 or "bad CSV" in f.reason for f in self.errors[n_errors:]):
            self.broken_tables.add(table)  # unreadable, bad header or cut short
        return out

    def _taint_short_row(self, table: str, cells: list[str]) -> None:
        if table == SERVICES and len(cells) >= 2:
            self.broken_targets.add((cells[0], cells[1]))
        elif table == FAILOVER and len(cells) >= 2:
            self.broken_targets.add((cells[0], cells[1]))
        elif table == NODES and len(cells) >= 2:
            self.broken_nodes.add(cells[1])

    def draft(self, name: str, table: str, line: int) -> _Draft | None:
        draft = self.drafts.get(name)
        if draft is None and FILESYSTEMS not in self.broken_tables:
            self.error(table, line, f"unknown file system {name!r} (not in {FILESYSTEMS})")
        return draft

    def explains(self, fs: str, f: Finding) -> bool:
        if f.reason.startswith("missing "):
            return SERVICES in self.broken_tables or any(b[0] == fs for b in self.broken_targets)
        if f.reason.startswith("unknown node "):
            node = f.reason.split()[2]
            return NODES in self.broken_tables or node in self.broken_nodes
        return False


def _rows(
    path: Path, errors: list[Finding], on_short: Callable[[str, list[str]], None]
) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for every data row, checking the header; [] if the file is unusable."""
    source = str(path)
    try:
        # newline="": the csv module handles line ends itself, and a '\r' inside a quoted
        # cell is data
        with path.open(encoding="utf-8", newline="") as f:
            text = f.read()
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
            # the reader cannot resynchronise after bad quoting: stop at the first one
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
            dupes = sorted({c for c in header if header.count(c) > 1})
            for what, names in (("unknown", unknown), ("missing", missing), ("duplicate", dupes)):
                if names:
                    errors.append(Finding(source, line, f"{what} column(s): {', '.join(names)}"))
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
            on_short(path.name, cells)
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
    r = _Reader(Path(directory))
    _read_filesystems(r)
    _read_nodes(r)
    _read_services(r)
    _read_failover(r)

    fss: list[FileSystemDef] = []
    warnings: list[Finding] = []
    for draft in r.drafts.values():
        fs = _assemble(r, draft)
        errs, warns = validate_fs(fs, draft.where)
        r.errors.extend(e for e in errs if not r.explains(draft.name, e))
        warnings.extend(warns)
        fss.append(fs)
    if not r.errors:
        r.errors.extend(validate_cluster(fss))
    if r.errors:
        raise ConfigError(format_findings(list(dict.fromkeys(r.errors))))
    return fss, [str(w) for w in warnings]


def _read_filesystems(r: _Reader) -> None:
    source = str(r.directory / FILESYSTEMS)
    for line, row in r.rows(FILESYSTEMS):
        name = row["fs_name"]
        if name in r.drafts:
            loc = r.drafts[name].where.fs_loc
            first = loc[1] if loc else 0
            r.error(FILESYSTEMS, line, f"file system {name} listed twice (first at line {first})")
            continue
        auto = _BOOL.get(row["auto_failover"].lower())
        if auto is None:
            r.error(
                FILESYSTEMS, line, f"auto_failover {row['auto_failover']!r}: expected yes or no"
            )
            auto = False
        try:
            settings = parse_settings(row["settings"])
        except ValueError as exc:
            r.error(FILESYSTEMS, line, f"settings: {exc}")
            settings = {}
        where = Where(source, fs_loc=(source, line), missing_loc=(source, line))
        where.setting_locs = dict.fromkeys(settings, (source, line))
        r.drafts[name] = _Draft(name, auto, settings, where)


def _read_nodes(r: _Reader) -> None:
    source = str(r.directory / NODES)
    for line, row in r.rows(NODES):
        draft = r.draft(row["fs"], NODES, line)
        if draft is None:
            r.broken_nodes.add(row["node"])
            continue
        node = row["node"]
        if node in draft.nids:
            first = draft.where.nid_locs[node][1]
            r.error(
                NODES, line, f"node {node} of {draft.name} listed twice (first at line {first})"
            )
            continue
        draft.nids[node] = row["address"]
        draft.where.nid_locs[node] = (source, line)


def _read_services(r: _Reader) -> None:
    source = str(r.directory / SERVICES)
    for line, row in r.rows(SERVICES):
        draft = r.draft(row["fs"], SERVICES, line)
        if draft is None:
            continue
        kind, name, node, device = row["kind"], row["target"], row["node"], row["device"]
        reason = None
        index = -1
        if kind not in KINDS:
            reason = f"unknown kind {kind!r}: expected MGT, MDT or OST"
        elif not row["index"].isdigit():
            reason = f"index {row['index']!r} is not a number"
        else:
            index = int(row["index"])
            expected = target_name(draft.name, kind, index)
            if name != expected:
                reason = (
                    f"inconsistent row: {kind} {index} of {draft.name} is named {expected}, "
                    f"not {name}"
                )
        entry = draft.services.get(name)
        if reason is None and entry is not None and any(n == node for n, _ in entry[2]):
            reason = f"{name} on node {node} listed twice"
        if reason is not None:
            r.error(SERVICES, line, reason)
            r.broken_targets.add((draft.name, name))
            continue
        if entry is None:
            draft.services[name] = (kind, index, [(node, device)])
            draft.where.target_locs[name] = (source, line)
        else:
            entry[2].append((node, device))
        draft.where.device_locs[(name, node)] = (source, line)


def _read_failover(r: _Reader) -> None:
    source = str(r.directory / FAILOVER)
    for line, row in r.rows(FAILOVER):
        draft = r.draft(row["fs"], FAILOVER, line)
        if draft is None:
            continue
        name = row["target"]
        if name in draft.order:
            first = draft.order[name][1][1]
            r.error(FAILOVER, line, f"{name} listed twice (first at line {first})")
            continue
        draft.order[name] = ([row["primary"], *row["backups"].split()], (source, line))


def _assemble(r: _Reader, draft: _Draft) -> FileSystemDef:
    """The file system from its rows: services.csv says which nodes, failover.csv in what
    order (services.csv row order when failover.csv has no row for a target)."""
    check = SERVICES not in r.broken_tables
    for name, (nodes, (_, line)) in draft.order.items():
        broken = (draft.name, name) in r.broken_targets
        if check and not broken and name not in draft.services:
            r.error(FAILOVER, line, f"inconsistent row: {name} has no row in {SERVICES}")
        elif not nodes[0]:
            r.error(FAILOVER, line, f"{name}: empty primary")
        elif len(set(nodes)) != len(nodes):
            r.error(FAILOVER, line, f"{name}: a node is listed twice in its failover order")
    targets: list[TargetDef] = []
    for name, (kind, index, devices) in draft.services.items():
        by_node = dict(devices)
        order = draft.order.get(name)
        if order is not None and set(order[0]) != set(by_node):
            reported = not order[0][0] or len(set(order[0])) != len(order[0])
            if (draft.name, name) not in r.broken_targets and not reported:
                r.error(
                    FAILOVER,
                    order[1][1],
                    f"inconsistent row: failover order {' '.join(order[0])} of {name} does not "
                    f"match its nodes in {SERVICES} ({' '.join(by_node)})",
                )
            order = None
        nodes = order[0] if order is not None else list(by_node)
        devs = tuple((n, by_node[n]) for n in dict.fromkeys(nodes))
        targets.append(TargetDef(name=name, kind=kind, index=index, fs=draft.name, devices=devs))
    return FileSystemDef(
        name=draft.name,
        nids=draft.nids,
        targets=sort_targets(targets),
        auto_failover=draft.auto_failover,
        settings=draft.settings,
        source=draft.where.source,
    )
