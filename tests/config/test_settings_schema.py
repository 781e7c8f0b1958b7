"""One settings schema (config/settings.py): bad values, misspelled names, two nodes at one
address and bad fence settings are `file:line: reason` errors when the configuration is
written, and nothing reaches the store or a node unchecked (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.config import settings
from shoal.config.fs_defs import parse_fs_defs
from shoal.errors import ConfigError

BASE = """fs_name="t"
NID_MAP="n1=127.0.0.1 n2=127.0.0.2"
MGSDEV="n1:mgt n2:mgt"
MDSDEV[0]="n1:mdt0 n2:mdt0"
OSTDEV[0]="n2:ost0 n1:ost0"
"""


def write(tmp_path: Path, extra: str, base: str = BASE) -> Path:
    path = tmp_path / "t.fs_defs"
    path.write_text(base + extra)
    return path


@pytest.mark.parametrize(("extra", "reason"), [
    ("LEASE_TTL=abc\n", "t.fs_defs:6: LEASE_TTL=abc: 'abc' is not a number of seconds"),
    ("LEASE_TTL=0\n", "t.fs_defs:6: LEASE_TTL=0: 0 is out of range (0.3..60 s)"),
    ("FAILBACK=sometimes\n", "t.fs_defs:6: FAILBACK=sometimes: 'sometimes' is not one of "
                             "off, auto"),
    ("AUTO_FAILOVR=yes\n", "t.fs_defs:6: unknown setting AUTO_FAILOVR: did you mean "
                           "AUTO_FAILOVER?"),
    ("LEASE_TLL=3\n", "did you mean LEASE_TTL?"),
    ("PORT=70000\n", "PORT=70000: 70000 is out of range (1..65535)"),
    ("RECOVERY_SOFT=nan\n", "'nan' is not a number of seconds"),
    ("STRIPE_SIZE=1Q\n", "is not a size"),
    ("IR=maybe\n", "'maybe' is not yes or no"),
    ("RPC_TLS=yes\nTLS_CA=/etc/ca.pem\n", "t.fs_defs:6: RPC_TLS=yes needs TLS_CERT (a path)"),
    ("TLS_CA=ca.pem\n", "TLS_CA=ca.pem: 'ca.pem' is not an absolute path"),
    ("MAX_PEER_CONNECTIONS=0\n", "MAX_PEER_CONNECTIONS=0: 0 is out of range"),
    ("HELLO_TIMEOUT=forever\n", "'forever' is not a number of seconds"),
])
def test_a_bad_setting_is_an_error_at_its_line(tmp_path: Path, extra: str,
                                               reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_fs_defs(write(tmp_path, extra))
    assert reason in str(exc.value)


def test_two_nodes_at_one_address_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n2 has the address 127.0.0.1 of n1"):
        parse_fs_defs(write(tmp_path, "", BASE.replace("n2=127.0.0.2", "n2=127.0.0.1")))


def test_good_settings_and_foreign_ones_load(tmp_path: Path) -> None:
    fs, _ = parse_fs_defs(write(tmp_path, "LEASE_TTL=3\nFAILBACK=AUTO\nSTRIPE_SIZE=4M\n"
                                          "IR=off\nOST_MKFS_OPTS=\"-J size=400\"\n"))
    assert settings.value(fs.settings, "LEASE_TTL") == 3.0
    assert settings.value(fs.settings, "FAILBACK") == "auto"
    assert settings.value(fs.settings, "STRIPE_SIZE") == 4 << 20
    assert settings.value(fs.settings, "IR") is False
    assert settings.value(fs.settings, "PING_EVICT_TIMEOUT") == 150.0  # the default
    assert fs.settings["OST_MKFS_OPTS"] == "-J size=400"  # a Cray tool's: kept verbatim


@given(st.text(max_size=12))
def test_a_value_is_either_accepted_by_the_schema_or_refused_with_a_reason(raw: str) -> None:
    for spec in settings.SCHEMA.values():
        err, _ = settings.check(spec.name + ("[n1]" if spec.indexed else ""), raw)
        if err is None and spec.kind not in ("text",):
            spec.parse(raw)  # whatever the check let through, a node can read
        else:
            assert err is None or spec.name in err


def test_config_write_refuses_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SHOAL_STORE", None)

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                              text=True, env=env, timeout=60, cwd=tmp_path)

    bad = shoal("config", "write", "--store", str(store), str(write(tmp_path, "LEASE_TTL=abc\n")))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "t.fs_defs:6: LEASE_TTL=abc" in bad.stderr
    assert not store.exists()  # nothing was written
    fence = shoal("config", "write", "--store", str(store),
                  str(write(tmp_path, 'FENCE[n9]="local"\n')))
    assert fence.returncode == 2 and "no node 'n9'" in fence.stderr
    assert not store.exists()
    ok = shoal("config", "write", "--store", str(store), str(write(tmp_path, "LEASE_TTL=3\n")))
    assert ok.returncode == 0, ok.stderr
