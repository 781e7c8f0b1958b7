"""The configuration tooling through the real command line, on real SQLite stores:
`shoal config generate|write|show`, `shoal db ...`, `shoal foadmin`, bad input, an
unreachable store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from shoal.config.foadmin import admin_state_key, auto_failover_key, node_auto_failover_key
from shoal.config.fs_defs import parse_fs_defs
from shoal.store import open_store
from shoal.store.base import target_key
from shoal.store.etcd_server import free_ports
from tests.helpers import shoal

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "shoal" / "cluster" / "scratch.fs_defs"
TABLES = ("filesystems.csv", "nodes.csv", "services.csv", "failover.csv")


def store_dump(url: str) -> tuple[int, dict[str, bytes]]:
    """(revision, every key under /shoal/) read straight from the store."""

    async def read() -> tuple[int, dict[str, bytes]]:
        async with open_store(url) as store:
            kvs, rev = await store.range("/shoal/")
            return rev, {kv.key: kv.value for kv in kvs}

    return asyncio.run(read())


def store_put(url: str, key: str, value: bytes) -> None:
    async def put() -> None:
        async with open_store(url) as store:
            await store.put(key, value)

    asyncio.run(put())


def configured(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'store.db'}"
    shoal("config", "write", str(EXAMPLE), "--store", url)
    return url


def test_round_trip_fs_defs_csv_store_show(tmp_path: Path):
    tables = tmp_path / "tables"
    out = shoal("config", "generate", str(EXAMPLE), "--out", str(tables)).stdout
    assert "services.csv" in out
    services = (tables / "services.csv").read_text().splitlines()
    assert services[0] == "fs,target,kind,index,node,device"
    assert "scratch,scratch-OST0001,OST,1,nid00063,ost1" in services
    assert "scratch,scratch-OST0001,nid00063,nid00062" in (tables / "failover.csv").read_text()

    url = f"sqlite://{tmp_path / 'store.db'}"
    first = shoal("config", "write", str(tables), "--store", url).stdout
    assert "+ /shoal/config/scratch/targets/scratch-OST0003" in first
    assert "7 added, 0 changed, 0 removed" in first
    rev, keys = store_dump(url)
    assert "/shoal/config/scratch/targets/MGS" in keys

    # twice: nothing to do, nothing written (the fs_defs file itself is the same config)
    for source in (tables, EXAMPLE):
        again = shoal("config", "write", str(source), "--store", url).stdout
        assert "no changes" in again and "+ /shoal" not in again
    assert store_dump(url) == (rev, keys)

    # show reproduces the example (comments aside) and parses back to the same config
    shown = shoal("config", "show", "--store", url).stdout
    expected = "".join(line for line in EXAMPLE.read_text().splitlines(keepends=True)
                       if not line.startswith("#"))
    assert shown == expected
    (tmp_path / "back.fs_defs").write_text(shown)
    assert parse_fs_defs(tmp_path / "back.fs_defs")[0] == parse_fs_defs(EXAMPLE)[0]

    # the tables come back byte for byte
    shoal("config", "show", "--store", url, "--format", "tables", "--out", str(tmp_path / "t2"))
    for name in TABLES:
        assert (tmp_path / "t2" / name).read_text() == (tables / name).read_text(), name

    data = json.loads(shoal("config", "show", "scratch", "--format", "json",
                            "--store", url).stdout)
    assert data["store"] == url and data["generation"] == 1
    (fs,) = data["filesystems"]
    targets = {t["name"]: t for t in fs["targets"]}
    assert targets["scratch-OST0001"]["devices"] == [["nid00063", "ost1"], ["nid00062", "ost1"]]
    assert fs["auto_failover"] is True and len(fs["nids"]) == 4


def test_dry_run_and_the_default_store_in_dir(tmp_path: Path):
    d = tmp_path / "cluster"
    out = shoal("config", "write", str(EXAMPLE), "--dry-run", cluster_dir=d).stdout
    assert "dry run: nothing written" in out and "7 added" in out
    assert not (d / "store.db").exists()
    missing = shoal("config", "show", cluster_dir=d, check=False)
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    assert not (d / "store.db").exists()

    shoal("config", "write", str(EXAMPLE), cluster_dir=d)
    assert (d / "store.db").exists()
    assert "no changes" in shoal("config", "write", str(EXAMPLE), "--dry-run",
                                 cluster_dir=d).stdout
    assert "OSTDEV[3]=" in shoal("config", "show", cluster_dir=d).stdout


def test_corrupt_csv_names_file_and_line_and_writes_nothing(tmp_path: Path):
    tables = tmp_path / "tables"
    shoal("config", "generate", str(EXAMPLE), "--out", str(tables))
    url = f"sqlite://{tmp_path / 'store.db'}"
    shoal("config", "write", str(tables), "--store", url)
    before = store_dump(url)

    # one valid change (a new failover order) and one broken row: neither may land
    fo = tables / "failover.csv"
    fo.write_text(fo.read_text().replace("scratch,scratch-OST0000,nid00062,nid00063",
                                         "scratch,scratch-OST0000,nid00063,nid00062"))
    svc = tables / "services.csv"
    lines = svc.read_text().splitlines(keepends=True)
    bad = next(i for i, line in enumerate(lines) if line.startswith("scratch,scratch-OST0002"))
    lines[bad] = lines[bad].replace(",OST,2,", ",OST,two,")
    svc.write_text("".join(lines))

    res = shoal("config", "write", str(tables), "--store", url, check=False)
    assert res.returncode == 2
    assert f"{svc}:{bad + 1}: index 'two' is not a number" in res.stderr
    assert "Traceback" not in res.stderr
    assert store_dump(url) == before

    # an fs_defs file with an unknown node: file:line, nothing written
    text = EXAMPLE.read_text().replace('OSTDEV[2]="nid00062:', 'OSTDEV[2]="nid00099:')
    (tmp_path / "bad.fs_defs").write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "nid00099" in x)) + 1
    res = shoal("config", "write", str(tmp_path / "bad.fs_defs"), "--store", url, check=False)
    assert res.returncode == 2
    assert f"bad.fs_defs:{line}: unknown node nid00099" in res.stderr
    assert store_dump(url) == before


def test_db_add_rm_list_round_trips(tmp_path: Path):
    url = configured(tmp_path)

    def listing(kind: str) -> list[dict]:
        return json.loads(shoal("db", kind, "list", "--json", "--store", url).stdout)

    out = shoal("db", "filesystem", "add", "scr2", "--nid", "nid00070=127.0.0.70",
                "--nid", "nid00071=127.0.0.71", "--auto-failover", "--set", "STRIPE_COUNT=1",
                "--store", url).stdout
    assert "+ /shoal/config/scr2/filesystem" in out
    fss = {f["name"]: f for f in listing("filesystem")}
    assert set(fss) == {"scratch", "scr2"}
    assert fss["scr2"]["nids"] == {"nid00070": "127.0.0.70", "nid00071": "127.0.0.71"}
    assert fss["scr2"]["settings"] == {"STRIPE_COUNT": "1"}
    dup = shoal("db", "filesystem", "add", "scr2", "--nid", "nid00070=127.0.0.70",
                "--store", url, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr

    shoal("db", "service", "add", "scr2-OST0000", "nid00070", "ost0", "--store", url)
    shoal("db", "service", "add", "scr2-OST0000", "nid00071", "ost0b", "--store", url)
    rows = [r for r in listing("service") if r["fs"] == "scr2"]
    assert [(r["target"], r["node"], r["device"]) for r in rows] == [
        ("scr2-OST0000", "nid00070", "ost0"), ("scr2-OST0000", "nid00071", "ost0b")]
    unknown = shoal("db", "service", "add", "scr2-OST0001", "nid00099", "x", "--store", url,
                    check=False)
    assert unknown.returncode == 2 and "nid00099" in unknown.stderr

    shoal("db", "failover", "add", "scr2-OST0000", "nid00071", "nid00070", "--store", url)
    fo = {r["target"]: r for r in listing("failover")}
    assert (fo["scr2-OST0000"]["primary"], fo["scr2-OST0000"]["backups"]) == (
        "nid00071", ["nid00070"])
    assert fo["scratch-OST0001"]["primary"] == "nid00063"  # the other fs is untouched
    shoal("db", "failover", "rm", "scr2-OST0000", "--store", url)
    fo = {r["target"]: r for r in listing("failover")}
    assert (fo["scr2-OST0000"]["primary"], fo["scr2-OST0000"]["backups"]) == ("nid00071", [])

    table = shoal("db", "service", "list", "--fs", "scr2", "--store", url).stdout
    assert "scr2-OST0000" in table and "scratch-OST0000" not in table

    shoal("db", "service", "rm", "scr2-OST0000", "--store", url)
    assert not [r for r in listing("service") if r["fs"] == "scr2"]
    shoal("db", "filesystem", "rm", "scr2", "--store", url)
    assert [f["name"] for f in listing("filesystem")] == ["scratch"]
    # what is left is exactly what was written at first
    assert "no changes" in shoal("config", "write", str(EXAMPLE), "--store", url).stdout


def test_foadmin_switches_show_and_land_in_the_store(tmp_path: Path):
    url = configured(tmp_path)
    shoal("foadmin", "disable", "scratch-OST0001", "--store", url)
    shoal("foadmin", "disable", "--node", "nid00062", "--store", url)
    shoal("foadmin", "set-state", "scratch-OST0002", "stopped", "--store", url)
    store_put(url, target_key("scratch-OST0000", "owner"), b"nid00063")

    _, keys = store_dump(url)
    assert keys[auto_failover_key("scratch-OST0001")] == b"disabled"
    assert keys[node_auto_failover_key("nid00062")] == b"disabled"
    assert keys[admin_state_key("scratch-OST0002")] == b"stopped"

    data = json.loads(shoal("foadmin", "--json", "--store", url).stdout)
    t = {x["target"]: x for x in data["targets"]}
    assert t["scratch-OST0001"]["auto_failover"] is False
    assert t["scratch-OST0001"]["auto_failover_setting"] == "disabled"
    assert t["scratch-OST0003"]["auto_failover"] is True
    assert t["scratch-OST0003"]["auto_failover_setting"] is None  # the fs's AUTO_FAILOVER
    assert t["scratch-OST0002"]["admin_state"] == "stopped"
    assert t["scratch-OST0002"]["effective"] is False
    assert (t["scratch-OST0000"]["owner"], t["scratch-OST0000"]["owner_source"]) == (
        "nid00063", "store")
    assert t["scratch-OST0003"]["owner"] is None
    nodes = {n["node"]: n for n in data["nodes"]}
    assert nodes["nid00062"]["auto_failover"] is False
    assert nodes["nid00063"]["auto_failover"] is True

    table = shoal("foadmin", "--store", url).stdout
    row = next(line for line in table.splitlines() if "scratch-OST0001" in line
               and "nid00063 nid00062" in line)
    assert "disabled" in row
    row = next(line for line in table.splitlines() if "scratch-OST0002 " in line
               and "nid00062 nid00063" in line)
    assert "stopped" in row

    shoal("foadmin", "enable", "scratch-OST0001", "--store", url)
    shoal("foadmin", "reset", "--node", "nid00062", "--store", url)
    _, keys = store_dump(url)
    assert keys[auto_failover_key("scratch-OST0001")] == b"enabled"
    assert node_auto_failover_key("nid00062") not in keys
    data = json.loads(shoal("foadmin", "--json", "--store", url).stdout)
    t = {x["target"]: x for x in data["targets"]}
    assert t["scratch-OST0001"]["auto_failover"] is True
    assert all(n["auto_failover"] for n in data["nodes"])

    bad = shoal("foadmin", "disable", "scratch-OST0009", "--store", url, check=False)
    assert bad.returncode == 3 and "scratch-OST0009" in bad.stderr
    bad = shoal("foadmin", "set-state", "scratch-OST0001", "paused", "--store", url,
                check=False)
    assert bad.returncode == 2


def test_unreachable_store_is_a_clear_error(tmp_path: Path):
    (port,) = free_ports(1)
    etcd = f"etcd://127.0.0.1:{port}?timeout=0.5"
    for args in (("config", "show"), ("config", "write", str(EXAMPLE)),
                 ("db", "filesystem", "list"), ("foadmin",)):
        res = shoal(*args, "--store", etcd, check=False)
        assert res.returncode == 1, args
        assert f"127.0.0.1:{port}" in res.stderr and "unreachable" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr

    nowhere = tmp_path / "no" / "such" / "dir" / "store.db"
    res = shoal("config", "write", str(EXAMPLE), "--store", f"sqlite://{nowhere}", check=False)
    assert res.returncode == 1 and str(nowhere) in res.stderr
    assert not nowhere.parent.exists()

    res = shoal("config", "show", "--store", "mysql://db:3306", check=False)
    assert res.returncode == 2 and "unknown scheme" in res.stderr


def test_racing_writers_one_wins_the_others_are_told_to_rerun(tmp_path: Path):
    """Administrators writing different configurations at once: each write lands whole or
    is refused whole with "re-run", and the store ends up holding exactly one of them."""
    url = configured(tmp_path)
    sources = []
    for i in range(6):
        path = tmp_path / f"admin{i}.fs_defs"
        path.write_text(EXAMPLE.read_text() + f'STRIPE_COUNT="{i + 1}"\n')
        sources.append(path)
    procs = [subprocess.Popen([sys.executable, "-m", "shoal", "config", "write", str(p),
                               "--store", url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in sources]
    results = [(p.wait(60), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert any(rc == 0 for rc, _, _ in results)
    for rc, out, err in results:
        if rc == 0:
            assert "scratch/filesystem" in out, out
        else:
            assert rc == 1 and "changed concurrently" in err and "re-run" in err, err
            assert "Traceback" not in err
    data = json.loads(shoal("config", "show", "--format", "json", "--store", url).stdout)
    (fs,) = data["filesystems"]
    assert fs["settings"]["STRIPE_COUNT"] in {str(i + 1) for i in range(6)}
    winners = sum(rc == 0 for rc, _, _ in results)
    assert data["generation"] == 1 + winners  # every write that said so landed, no other
