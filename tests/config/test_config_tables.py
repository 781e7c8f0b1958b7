"""CSV tables: generate, read back, several file systems, and corruption reported by line."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
from config_strategies import filesystems
from hypothesis import HealthCheck, given, settings

from shoal.config.fs_defs import parse_fs_defs, parse_fs_defs_text, render_fs_defs
from shoal.config.model import FileSystemDef, TargetDef
from shoal.config.tables import (
    FAILOVER,
    FILESYSTEMS,
    NODES,
    SERVICES,
    generate,
    load,
    read_tables,
    read_tables_with_warnings,
)
from shoal.errors import ConfigError


def renamed(fs: FileSystemDef, name: str, device_prefix: str) -> FileSystemDef:
    """The same layout as another file system, with its own name and devices (sharing the
    MGS, as Lustre file systems do)."""
    targets = []
    for t in fs.targets:
        if t.kind == "MGT":
            targets.append(dataclasses.replace(t, fs=name))
            continue
        devices = tuple((n, device_prefix + d) for n, d in t.devices)
        new_name = t.name.replace(f"{fs.name}-", f"{name}-")
        targets.append(dataclasses.replace(t, name=new_name, fs=name, devices=devices))
    return dataclasses.replace(
        fs, name=name, targets=tuple(targets), settings={"STRIPE_SIZE": "1M"}
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def scratch(example_path: Path) -> FileSystemDef:
    fs, _ = parse_fs_defs(example_path)
    return fs


@pytest.fixture
def tables(tmp_path: Path, scratch: FileSystemDef) -> Path:
    out = tmp_path / "tables"
    generate(scratch, out)
    return out


def test_generate_writes_readable_tables(tables: Path, scratch: FileSystemDef) -> None:
    assert sorted(p.name for p in tables.iterdir()) == sorted(
        [FILESYSTEMS, NODES, SERVICES, FAILOVER]
    )
    assert (tables / FILESYSTEMS).read_text() == "fs_name,auto_failover,settings\nscratch,yes,\n"
    services = (tables / SERVICES).read_text().splitlines()
    assert services[0] == "fs,target,kind,index,node,device"
    assert services[1:3] == ["scratch,MGS,MGT,0,nid00060,mgt", "scratch,MGS,MGT,0,nid00061,mgt"]
    assert len(services) == 1 + 12
    failover = (tables / FAILOVER).read_text().splitlines()
    assert "scratch,scratch-OST0001,nid00063,nid00062" in failover
    assert (tables / NODES).read_text().splitlines()[1] == "scratch,nid00060,127.0.0.60"
    assert read_tables(tables) == [scratch]


def test_several_file_systems_share_a_directory(tables: Path, scratch: FileSystemDef) -> None:
    home = renamed(scratch, "home", "home/")
    generate(home, tables)
    assert read_tables(tables) == [scratch, home]
    # regenerating one replaces it in place and leaves the other alone
    scratch2 = dataclasses.replace(scratch, auto_failover=False)
    generate(scratch2, tables)
    assert read_tables(tables) == [scratch2, home]
    assert (tables / FILESYSTEMS).read_text().count("scratch") == 1


def test_generate_refuses_a_conflict_with_tables_already_there(
    tables: Path, scratch: FileSystemDef
) -> None:
    before = snapshot(tables)
    clash = renamed(scratch, "home", "")  # same devices as scratch on the same nodes
    with pytest.raises(
        ConfigError, match="device nid00060:mdt0 of home-MDT0000 is also used by scratch-MDT0000"
    ):
        generate(clash, tables)
    assert snapshot(tables) == before


def test_generate_refuses_an_invalid_definition(tmp_path: Path, scratch: FileSystemDef) -> None:
    bad = dataclasses.replace(scratch, nids={"nid00060": "127.0.0.60"})
    with pytest.raises(ConfigError, match="unknown node nid00061"):
        generate(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fs=filesystems())
def test_round_trip_fs_defs_model_csv_model(fs: FileSystemDef) -> None:
    text = render_fs_defs(fs)
    parsed, _ = parse_fs_defs_text(text, "generated.fs_defs")
    assert parsed == fs
    assert list(parsed.nids) == list(fs.nids) and parsed.nodes == fs.nodes
    with tempfile.TemporaryDirectory() as d:
        generate(parsed, d)
        (back,) = read_tables(d)
    assert back == fs
    assert list(back.nids) == list(fs.nids)
    assert list(back.settings.items()) == list(fs.settings.items())


# -- corruption: every problem named by file and line, nothing written ---------------------


def edit(path: Path, line_no: int, new: str | None) -> None:
    """Replace (or with None, delete) 1-based line `line_no`."""
    lines = path.read_text().split("\n")
    if new is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = new
    path.write_text("\n".join(lines))


@pytest.mark.parametrize(
    ("table", "line_no", "new", "expected"),
    [
        (SERVICES, 1, "fs,target,kind,index,node,device,colour", "1: unknown column(s): colour"),
        (SERVICES, 1, "fs,target,kind,index,node", "1: missing column(s): device"),
        (NODES, 1, "fs,node", "1: missing column(s): address"),
        (
            SERVICES,
            4,
            "scratch,scratch-MDT0000,MDT,0,nid00060",
            "4: expected 6 fields (fs, target, kind, index, node, device), got 5",
        ),
        (
            SERVICES,
            4,
            'scratch,scratch-MDT0000,MDT,0,nid00060,"md"t0',
            "4: bad CSV: ',' expected after '\"'",
        ),
        (
            SERVICES,
            5,
            "scratch,scratch-MDT0000,MDT,1,nid00061,mdt0",
            "5: inconsistent row: MDT 1 of scratch is named scratch-MDT0001, not scratch-MDT0000",
        ),
        (
            SERVICES,
            5,
            "scratch,scratch-MDT0000,MDS,0,nid00061,mdt0",
            "5: unknown kind 'MDS': expected MGT, MDT or OST",
        ),
        (
            SERVICES,
            5,
            "scratch,scratch-MDT0000,MDT,zero,nid00061,mdt0",
            "5: index 'zero' is not a number",
        ),
        (
            SERVICES,
            7,
            "scratch,scratch-OST0000,OST,0,nid00099,ost0",
            (
                "7: unknown node nid00099 (not in NID_MAP)",
                FAILOVER,
                "4: inconsistent row: failover order nid00062 nid00063 of scratch-OST0000 "
                "does not match its nodes in services.csv (nid00062 nid00099)",
            ),
        ),
        (
            SERVICES,
            9,
            "scratch,scratch-OST0001,OST,1,nid00062,ost0",
            "9: device nid00062:ost0 is used by both scratch-OST0000 and scratch-OST0001",
        ),
        (
            SERVICES,
            9,
            "scratch,scratch-OST0000,OST,0,nid00063,ost9",
            (
                "9: scratch-OST0000 on node nid00063 listed twice",
                FAILOVER,
                "5: inconsistent row: failover order nid00063 nid00062 of scratch-OST0001 "
                "does not match its nodes in services.csv (nid00063)",
            ),
        ),
        (
            NODES,
            3,
            "home,nid00061,127.0.0.61",
            "3: unknown file system 'home' (not in filesystems.csv)",
        ),
        (
            NODES,
            3,
            "scratch,nid00061,127.0.0.610",
            "3: NID_MAP: bad address '127.0.0.610': not an IPv4/IPv6 address or host name",
        ),
        (
            NODES,
            3,
            "scratch,nid00060,127.0.0.61",
            (
                "3: node nid00060 of scratch listed twice (first at line 2)",
                SERVICES,
                "3: unknown node nid00061 (not in NID_MAP)",
                SERVICES,
                "5: unknown node nid00061 (not in NID_MAP)",
            ),
        ),
        (FILESYSTEMS, 2, "scratch,perhaps,", "2: auto_failover 'perhaps': expected yes or no"),
        (
            FILESYSTEMS,
            2,
            'scratch,yes,"STRIPE_SIZE=""1M"" junk"',
            "2: settings: expected NAME=value, got 'junk'",
        ),
        (
            FAILOVER,
            3,
            "scratch,scratch-MDT0000,nid00060,nid00062",
            "3: inconsistent row: failover order nid00060 nid00062 of scratch-MDT0000 does not match its nodes in services.csv (nid00060 nid00061)",
        ),
        (
            FAILOVER,
            3,
            "scratch,scratch-MDT0001,nid00060,nid00061",
            "3: inconsistent row: scratch-MDT0001 has no row in services.csv",
        ),
        (
            FAILOVER,
            3,
            "scratch,scratch-MDT0000,nid00060,nid00060",
            "3: scratch-MDT0000: a node is listed twice in its failover order",
        ),
        (FAILOVER, 3, "scratch,MGS,nid00060,nid00061", "3: MGS listed twice (first at line 2)"),
    ],
)
def test_corruption_is_reported_by_file_and_line_and_nothing_is_written(
    tables: Path, table: str, line_no: int, new: str, expected: str | tuple[str, ...]
) -> None:
    """`expected`: the problem in the edited table, then (table, problem) pairs for true
    consequences elsewhere (an edit can make two tables disagree)."""
    edit(tables / table, line_no, new)
    before = snapshot(tables)
    with pytest.raises(ConfigError) as info:
        read_tables(tables)
    if isinstance(expected, str):
        expected = (expected,)
    wanted = [f"{tables / table}:{expected[0]}"]
    wanted += [f"{tables / t}:{e}" for t, e in zip(expected[1::2], expected[2::2], strict=True)]
    assert sorted(str(info.value).splitlines()) == sorted(wanted)
    # generate over corrupt tables refuses before writing anything
    with pytest.raises(ConfigError):
        generate(renamed(read_tables_or_none(tables) or _placeholder(), "home", "h/"), tables)
    assert snapshot(tables) == before


def read_tables_or_none(directory: Path) -> FileSystemDef | None:
    try:
        return read_tables(directory)[0]
    except ConfigError:
        return None


def _placeholder() -> FileSystemDef:
    fs, _ = parse_fs_defs_text(
        'fs_name=x\nNID_MAP="a=1.2.3.4"\nMGSDEV=a:m\nMDSDEV=a:d\nOSTDEV[0]=a:o\n', "p"
    )
    return fs


def test_every_problem_is_listed_at_once(tables: Path) -> None:
    edit(tables / FILESYSTEMS, 2, "scratch,perhaps,")
    edit(tables / SERVICES, 7, "scratch,scratch-OST0000,OST,x,nid00063,ost0")
    edit(tables / FAILOVER, 3, "scratch,scratch-MDT0000,nid00060,nid00062")
    with pytest.raises(ConfigError) as info:
        read_tables(tables)
    assert str(info.value).splitlines() == [
        f"{tables / FAILOVER}:3: inconsistent row: failover order nid00060 nid00062 of "
        "scratch-MDT0000 does not match its nodes in services.csv (nid00060 nid00061)",
        f"{tables / FILESYSTEMS}:2: auto_failover 'perhaps': expected yes or no",
        f"{tables / SERVICES}:7: index 'x' is not a number",
    ]


def test_line_numbers_count_physical_lines_of_multiline_cells(tables: Path) -> None:
    # a setting whose value holds newlines spans three physical lines of filesystems.csv
    fs_text = 'fs_name,auto_failover,settings\nscratch,yes,"MOTD=""one\ntwo\nthree"""\n'
    (tables / FILESYSTEMS).write_text(fs_text + "scratch,no,\n")
    with pytest.raises(ConfigError) as info:
        read_tables(tables)
    assert str(info.value).splitlines() == [
        f"{tables / FILESYSTEMS}:5: file system scratch listed twice (first at line 2)"
    ]
    (tables / FILESYSTEMS).write_text(fs_text)
    (fs,) = read_tables(tables)
    assert fs.settings == {"MOTD": "one\ntwo\nthree"}


def test_comments_blank_lines_and_missing_failover_rows(
    tables: Path, scratch: FileSystemDef
) -> None:
    text = (tables / FAILOVER).read_text().splitlines()
    # no failover row for OST0001: its services.csv row order (nid00063 first) applies
    kept = [line for line in text if "OST0001" not in line]
    (tables / FAILOVER).write_text("# edited by hand\n\n" + "\n".join(kept) + "\n")
    assert read_tables(tables) == [scratch]


def test_missing_and_empty_tables(tmp_path: Path, tables: Path) -> None:
    (tables / NODES).unlink()
    (tables / FAILOVER).write_text("")
    with pytest.raises(ConfigError) as info:
        read_tables(tables)
    lines = str(info.value).splitlines()
    assert f"{tables / NODES}:0: missing table" in lines
    assert f"{tables / FAILOVER}:1: empty table: no header line" in lines


def test_warnings_for_targets_without_backup(tables: Path, scratch: FileSystemDef) -> None:
    edit(tables / SERVICES, 9, "# nid00062 no longer serves OST0001")
    edit(tables / FAILOVER, 5, "scratch,scratch-OST0001,nid00063,")
    fss, warnings = read_tables_with_warnings(tables)
    assert fss[0].target("scratch-OST0001").devices == (("nid00063", "ost1"),)
    assert warnings == [
        f"{tables / SERVICES}:8: scratch-OST0001 has no backup node: "
        "AUTO_FAILOVER=yes cannot fail it over"
    ]


def test_round_trip_keeps_target_order_independent_of_row_order(
    tables: Path, scratch: FileSystemDef
) -> None:
    lines = (tables / SERVICES).read_text().splitlines()
    (tables / SERVICES).write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    (back,) = read_tables(tables)
    assert back == scratch
    assert isinstance(back.targets[0], TargetDef) and back.targets[0].name == "MGS"


def test_load_takes_an_fs_defs_file_or_a_tables_directory(
    tables: Path, scratch: FileSystemDef, example_path: Path
) -> None:
    assert load(example_path) == ([scratch], [])
    assert load(tables) == ([scratch], [])
    with pytest.raises(ConfigError, match="cannot read"):
        load(tables / "nonexistent")
