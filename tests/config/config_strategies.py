"""Hypothesis strategies for valid file system definitions."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from shoal.config.model import RESERVED_NAMES, FileSystemDef, TargetDef, sort_targets, target_name
from shoal.config.settings import check as settings_check

fs_names = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
node_names = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,12}", fullmatch=True)
_label = st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.lists(_label, min_size=1, max_size=3).map(".".join),
)
# Device paths: anything without whitespace or NUL, including characters the shell and CSV
# treat specially; relative or absolute.
_segment = st.text(
    st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
        blacklist_characters="/",
    ),
    min_size=1,
    max_size=6,
).filter(lambda s: s not in (".", ".."))
setting_keys = st.tuples(
    # free-form settings: Shoal's own (config/settings.py) are checked, and a near miss
    # of one is an error, so they are not drawn here
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
        lambda s: s not in RESERVED_NAMES and settings_check(s, "")[0] is None
    ),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_]{1,3}", fullmatch=True)),
).map(lambda kv: kv[0] if kv[1] is None else f"{kv[0]}[{kv[1]}]")
setting_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))


@st.composite
def filesystems(draw: st.DrawFn) -> FileSystemDef:
    name = draw(fs_names)
    nodes = draw(st.lists(node_names, min_size=1, max_size=5, unique=True))
    # one address per node: two nodes at one address is a configuration error
    addrs = draw(st.lists(addresses, min_size=len(nodes), max_size=len(nodes), unique=True))
    nids = dict(zip(nodes, addrs, strict=True))
    mdt_indexes = {0} | draw(st.sets(st.integers(1, 0xFFFF), max_size=2))
    ost_indexes = draw(st.sets(st.integers(0, 0xFFFF), min_size=1, max_size=4))
    specs = [("MGT", 0)] + [("MDT", i) for i in mdt_indexes] + [("OST", i) for i in ost_indexes]
    targets = []
    for kind, index in specs:
        tname = target_name(name, kind, index)
        order = draw(st.permutations(nodes))[: draw(st.integers(1, len(nodes)))]
        devices = []
        for node in order:
            # the target name in the path keeps devices of different targets apart
            base = draw(st.lists(_segment, max_size=2))
            absolute = draw(st.booleans())
            path = ("/" if absolute else "") + "/".join([*base, tname])
            devices.append((node, path))
        targets.append(TargetDef(tname, kind, index, name, tuple(devices)))
    settings = draw(st.dictionaries(setting_keys, setting_values, max_size=4))
    return FileSystemDef(
        name=name,
        nids=nids,
        targets=sort_targets(targets),
        auto_failover=draw(st.booleans()),
        settings=settings,
        source="generated",
    )
