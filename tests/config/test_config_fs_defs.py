"""fs_defs parsing: the shared example, shell syntax, and every validation error at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config.fs_defs import parse_fs_defs, parse_fs_defs_text, render_fs_defs
from shoal.config.model import parse_target_name, target_name
from shoal.errors import ConfigError

GOOD = """\
fs_name="scratch"
NID_MAP="nid00060=127.0.0.60 nid00061=127.0.0.61 nid00062=127.0.0.62 nid00063=127.0.0.63"
MGSDEV="nid00060:mgt nid00061:mgt"
MDSDEV[0]="nid00060:mdt0 nid00061:mdt0"
OSTDEV[0]="nid00062:ost0 nid00063:ost0"
OSTDEV[1]="nid00063:ost1 nid00062:ost1"
AUTO_FAILOVER=yes
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fs_defs"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_fs_defs(path)
    return str(info.value).splitlines()


def with_line(line_no: int, new: str, text: str = GOOD) -> str:
    """GOOD with line `line_no` (1-based) replaced."""
    lines = text.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


# -- the shared example -------------------------------------------------------------------


def test_example_parses_to_the_expected_model(example_path: Path) -> None:
    fs, warnings = parse_fs_defs(example_path)
    assert warnings == []
    assert fs.name == "scratch"
    assert fs.source == str(example_path)
    assert fs.auto_failover is True
    assert fs.settings == {}
    assert fs.nids == {f"nid0006{i}": f"127.0.0.6{i}" for i in range(4)}
    assert fs.nodes == ("nid00060", "nid00061", "nid00062", "nid00063")
    assert [t.name for t in fs.targets] == [
        "MGS",
        "scratch-MDT0000",
        "scratch-OST0000",
        "scratch-OST0001",
        "scratch-OST0002",
        "scratch-OST0003",
    ]
    assert fs.mgs is not None and fs.mgs.name == "MGS" and fs.mgs.kind == "MGT"
    assert fs.mgs.index == 0 and fs.mgs.fs == "scratch"
    assert fs.mgs.devices == (("nid00060", "mgt"), ("nid00061", "mgt"))
    assert [t.name for t in fs.mdts] == ["scratch-MDT0000"]
    assert fs.target("scratch-MDT0000").nodes == ("nid00060", "nid00061")
    assert [t.index for t in fs.osts] == [0, 1, 2, 3]
    # OSS pairs run active/active: primaries alternate between the two nodes
    assert [t.nodes for t in fs.osts] == [
        ("nid00062", "nid00063"),
        ("nid00063", "nid00062"),
        ("nid00062", "nid00063"),
        ("nid00063", "nid00062"),
    ]
    ost3 = fs.target("scratch-OST0003")
    assert ost3.primary == "nid00063" and ost3.backups == ("nid00062",)
    assert ost3.device_for("nid00062") == "ost3"
    with pytest.raises(KeyError):
        ost3.device_for("nid00060")
    with pytest.raises(KeyError):
        fs.target("scratch-OST0004")
    assert [t.name for t in fs.targets_of("nid00060")] == ["MGS", "scratch-MDT0000"]
    assert [t.name for t in fs.targets_of("nid00063")] == ["scratch-OST0001", "scratch-OST0003"]
    assert fs.targets_of("nid00061") == ()
    assert [t.name for t in fs.backed_up_by("nid00061")] == ["MGS", "scratch-MDT0000"]


def test_target_names_are_lustre_style_hex() -> None:
    assert target_name("scratch", "OST", 10) == "scratch-OST000a"
    assert target_name("scratch", "MDT", 0) == "scratch-MDT0000"
    assert target_name("scratch", "MGT", 0) == "MGS"
    assert parse_target_name("scratch-OST00ff") == ("scratch", "OST", 255)
    assert parse_target_name("MGS") == ("", "MGT", 0)
    with pytest.raises(ValueError):
        parse_target_name("scratch-OST12")


def test_render_parses_back_to_the_same_model(example_path: Path) -> None:
    fs, _ = parse_fs_defs(example_path)
    again, _ = parse_fs_defs_text(render_fs_defs(fs), "rendered")
    assert again == fs
    assert again.source == "rendered"


# -- shell syntax -------------------------------------------------------------------------


def test_shell_syntax_that_fs_defs_files_use() -> None:
    text = """\
# whole-line comment
export fs_name=scratch   # trailing comment
NID_MAP='nid00060=127.0.0.60 nid00061=node61.example.com'
NID_MAP2=unused\\ value
  NODE_B=nid00061
MGSDEV="nid00060:mgt ${NODE_B}:mgt"
MDSDEV="nid00060:/srv/shoal/mdt#0 $NODE_B:/srv/shoal/mdt#0"
OSTDEV[0x10]="nid00061:ost16
              nid00060:ost16"
OSTDEV[2]=nid00060:ost2\\
" nid00061:ost2"
AUTO_FAILOVER=Yes STRIPE_SIZE=1048576
COMMENT="it's a \\"test\\" of \\$HOME" ;
"""
    with pytest.raises(ConfigError) as info:
        parse_fs_defs_text(text, "f")
    # the only problem is the ';' on the last line; everything else is accepted shell
    assert str(info.value) == "f:13: malformed line: shell operator ';' is not supported"

    fs, warnings = parse_fs_defs_text(text.replace(" ;\n", "\n"), "f")
    assert warnings == []
    assert fs.name == "scratch"
    assert fs.nids == {"nid00060": "127.0.0.60", "nid00061": "node61.example.com"}
    assert fs.mgs is not None and fs.mgs.devices == (("nid00060", "mgt"), ("nid00061", "mgt"))
    # unindexed MDSDEV is index 0; '#' inside a word is not a comment
    assert fs.target("scratch-MDT0000").devices == (
        ("nid00060", "/srv/shoal/mdt#0"),
        ("nid00061", "/srv/shoal/mdt#0"),
    )
    # a hex index, and a quoted value spanning two lines
    assert fs.target("scratch-OST0010").devices == (("nid00061", "ost16"), ("nid00060", "ost16"))
    # backslash-newline continues the line
    assert fs.target("scratch-OST0002").nodes == ("nid00060", "nid00061")
    assert fs.auto_failover is True
    assert fs.settings == {
        "NID_MAP2": "unused value",
        "NODE_B": "nid00061",
        "STRIPE_SIZE": "1048576",
        "COMMENT": 'it\'s a "test" of $HOME',
    }


def test_missing_backup_with_auto_failover_is_a_warning_at_its_line() -> None:
    text = with_line(6, 'OSTDEV[1]="nid00063:ost1"')
    fs, warnings = parse_fs_defs_text(text, "f")
    assert fs.target("scratch-OST0001").nodes == ("nid00063",)
    assert warnings == [
        "f:6: scratch-OST0001 has no backup node: AUTO_FAILOVER=yes cannot fail it over"
    ]
    _, quiet = parse_fs_defs_text(with_line(7, "AUTO_FAILOVER=no", text), "f")
    assert quiet == []


def test_auto_failover_defaults_to_no() -> None:
    fs, _ = parse_fs_defs_text(with_line(7, ""), "f")
    assert fs.auto_failover is False


# -- validation: each error at its exact file:line -----------------------------------------


@pytest.mark.parametrize(
    ("line_no", "new", "expected"),
    [
        (5, 'OSTDEV[0]="nid00062:ost0 nid00099:ost0"', "5: unknown node nid00099 (not in NID_MAP)"),
        (
            6,
            'OSTDEV[0]="nid00063:ost1 nid00062:ost1"',
            "6: duplicate index: OSTDEV[0] already defined at line 5",
        ),
        (4, 'MDSDEV="nid00060:mdt0 nid00061:mdt0"', None),  # unindexed = [0]: fine alone
        (
            6,
            'OSTDEV[1]="nid00063:ost1 nid00062:ost0"',
            "6: device nid00062:ost0 is used by both scratch-OST0000 and scratch-OST0001",
        ),
        (
            6,
            'OSTDEV[1]="nid00063:ost1 nid00062:./ost0/"',
            "6: device nid00062:./ost0/ is used by both scratch-OST0000 and scratch-OST0001",
        ),
        (
            4,
            'MDSDEV[0]="nid00060:mgt nid00061:mdt0"',
            "4: device nid00060:mgt is used by both MGS and scratch-MDT0000",
        ),
        (
            2,
            'NID_MAP="nid00060=127.0.0.300 nid00061=127.0.0.61 nid00062=127.0.0.62 nid00063=127.0.0.63"',
            "2: NID_MAP: bad address '127.0.0.300': not an IPv4/IPv6 address or host name",
        ),
        (
            2,
            'NID_MAP="nid00060=127.0.0.60 nid00061=bad_host! nid00062=127.0.0.62 nid00063=127.0.0.63"',
            "2: NID_MAP: bad address 'bad_host!': not an IPv4/IPv6 address or host name",
        ),
        (
            2,
            'NID_MAP="nid00060=127.0.0.60 nid00061 nid00062=127.0.0.62 nid00063=127.0.0.63"',
            "2: NID_MAP: malformed entry 'nid00061': expected node=address",
        ),
        (
            2,
            'NID_MAP="nid00060=127.0.0.60 nid00061=::1 nid00062=127.0.0.62 nid00063=127.0.0.63 9bad=::2"',
            "2: NID_MAP: bad node name '9bad': a letter, then letters, digits, '.', '_' or '-' (like nid00060)",
        ),
        (5, "this is not an assignment", "5: malformed line: expected NAME=value, got 'this'"),
        (
            5,
            'OSTDEV[0]="nid00062:ost0 nid00063:ost0',
            "5: malformed line: unterminated quote or trailing backslash at end of file",
        ),
        (
            5,
            'OSTDEV[0]="nid00062:ost0 $(hostname):ost0"',
            "5: command substitution $(...) is not supported",
        ),
        (
            5,
            'OSTDEV[0]="nid00062:ost0 $NOPE:ost0"',
            "5: undefined variable $NOPE (only earlier assignments expand)",
        ),
        (
            5,
            'OSTDEV[0]="nid00062 nid00063:ost0"',
            "5: OSTDEV[0]: malformed entry 'nid00062': expected node:device",
        ),
        (5, 'OSTDEV[x]="nid00062:ost0 nid00063:ost0"', "5: bad array index [x]: expected a number"),
        (5, 'OSTDEV[0]=""', '5: OSTDEV[0] is empty: expected "node:device [node:device ...]"'),
        (
            5,
            'OSTDEV[70000]="nid00062:ost0 nid00063:ost0"',
            "5: OST index 70000 out of range 0..65535",
        ),
        (7, "AUTO_FAILOVER=maybe", "7: AUTO_FAILOVER='maybe': expected yes or no"),
        (7, 'fs_name="other"', "7: fs_name assigned twice (first at line 1)"),
        (
            1,
            'fs_name="much_too_long"',
            "1: bad file system name 'much_too_long': 1 to 8 letters, digits or '_' (Lustre's fsname rule)",
        ),
        (3, 'MGSDEV[1]="nid00060:mgt"', "3: MGSDEV takes no index: a file system has one MGS"),
        (
            4,
            'MDSDEV[0]="nid00060:mdt0 nid00060:mdt0b"',
            "4: scratch-MDT0000 lists node nid00060 twice",
        ),
    ],
)
def test_each_error_names_file_and_line(
    tmp_path: Path, line_no: int, new: str, expected: str | None
) -> None:
    text = with_line(line_no, new)
    path = write(tmp_path, text)
    if expected is None:
        parse_fs_defs(path)
        return
    assert errors_of(tmp_path, text) == [f"{path}:{expected}"]


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (1, ":0: missing fs_name (the file system name)"),
        (2, ":0: missing NID_MAP: no node addresses defined"),
        (3, ":0: missing MGSDEV: file system scratch has no MGT"),
        (4, ":0: missing MDSDEV: file system scratch has no MDT"),
    ],
)
def test_missing_definitions_are_errors(tmp_path: Path, drop: int, expected: str) -> None:
    path = write(tmp_path, with_line(drop, "# dropped"))
    with pytest.raises(ConfigError) as info:
        parse_fs_defs(path)
    # only the cause: not also "unknown node" for every node once NID_MAP is gone
    assert str(info.value).splitlines() == [f"{path}{expected}"]


def test_missing_osts_and_mdt0(tmp_path: Path) -> None:
    text = with_line(4, 'MDSDEV[1]="nid00060:mdt1"', with_line(5, "", with_line(6, "")))
    lines = errors_of(tmp_path, text)
    path = tmp_path / "fs_defs"
    assert lines == [
        f"{path}:0: missing MDSDEV[0]: file system scratch has no MDT0, which holds the root",
        f"{path}:0: missing OSTDEV: file system scratch has no OST",
    ]


def test_all_errors_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = """\
fs_name=scratch
NID_MAP="nid00060=127.0.0.60 nid00061=10.0.0.999"
MGSDEV="nid00060:mgt nid00061:mgt"
MDSDEV[0]="nid00060:mdt0 nid00077:mdt0"
garbage here
OSTDEV[0]="nid00060:mgt"
OSTDEV[0]="nid00061:ost0"
"""
    path = write(tmp_path, text)
    assert errors_of(tmp_path, text) == [
        f"{path}:2: NID_MAP: bad address '10.0.0.999': not an IPv4/IPv6 address or host name",
        f"{path}:4: unknown node nid00077 (not in NID_MAP)",
        f"{path}:5: malformed line: expected NAME=value, got 'garbage'",
        f"{path}:6: device nid00060:mgt is used by both MGS and scratch-OST0000",
        f"{path}:7: duplicate index: OSTDEV[0] already defined at line 6",
    ]


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope:0: cannot read"):
        parse_fs_defs(tmp_path / "nope")
    path = tmp_path / "latin1"
    path.write_bytes(GOOD.encode() + b'COMMENT="caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        parse_fs_defs(path)
    assert str(info.value) == f"{path}:8: not valid UTF-8"


def test_ipv6_and_hostnames_are_valid_addresses() -> None:
    text = with_line(
        2, 'NID_MAP="nid00060=::1 nid00061=fe80::1 nid00062=oss2.example.com nid00063=localhost"'
    )
    fs, _ = parse_fs_defs_text(text, "f")
    assert fs.nids["nid00060"] == "::1" and fs.nids["nid00062"] == "oss2.example.com"


def test_a_malformed_nid_entry_hides_only_its_own_consequences(tmp_path: Path) -> None:
    text = with_line(
        2, 'NID_MAP="nid00060=127.0.0.60 nid00061 nid00062=127.0.0.62 nid00063=127.0.0.63"'
    )
    text = with_line(6, 'OSTDEV[1]="nid00063:ost1 nid00064:ost1"', text)
    path = write(tmp_path, text)
    # nid00061 (named by the bad entry) is not reported as unknown on lines 3 and 4;
    # nid00064, a separate mistake, is
    assert errors_of(tmp_path, text) == [
        f"{path}:2: NID_MAP: malformed entry 'nid00061': expected node=address",
        f"{path}:6: unknown node nid00064 (not in NID_MAP)",
    ]
