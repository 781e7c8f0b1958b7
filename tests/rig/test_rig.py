"""One rig of 4 servers and 2 clients, shared by the module: reachability, etcd, exec,
partitions and power cycles. Tests that change the rig put it back as they found it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shoal.config.fs_defs import parse_fs_defs_text
from shoal.rig import ProcRecord, Rig
from shoal.rig.state import load
from tests.rig.rig_helpers import PY, needs_rig, reaches, serve

pytestmark = needs_rig

MEMBERS_AT = "10.77.0.60:2379,10.77.0.61:2379,10.77.0.62:2379"

# Writes a key through Shoal's store client and reads it back; prints the value.
STORE_ROUNDTRIP = """
import asyncio, os, sys
from shoal.store import open_store
async def main():
    s = open_store(os.environ["SHOAL_STORE"])
    try:
        await s.put("/rig-test/" + sys.argv[1], sys.argv[1].encode())
        print((await s.get("/rig-test/" + sys.argv[1])).value.decode())
    finally:
        await s.close()
asyncio.run(main())
"""

# Prints the names of the etcd cluster's members, asked of argv[1] with the CA argv[2] and
# the client certificate and key argv[3:5].
MEMBERS = """
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
req = urllib.request.Request(sys.argv[1] + "/v3/cluster/member/list", data=b"{}", method="POST")
with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
    print(" ".join(sorted(m["name"] for m in json.loads(r.read())["members"])))
"""

# Tries the store at argv[1] and prints ok or the error's class name.
STORE_TRY = """
import asyncio, sys
from shoal.store import open_store
async def main():
    s = open_store(sys.argv[1])
    try:
        await s.get("/rig-test/x")
        print("ok")
    except Exception as exc:
        print(type(exc).__name__, exc)
    finally:
        await s.close()
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("rig"))
    r.up(servers=4, clients=2, osts=4, image_mib=64)
    yield r
    r.down()


def _client_tls(rig: Rig) -> list[str]:
    tls = rig.dir / "tls"
    return [str(tls / "ca.pem"), str(tls / "shoal-client.pem"), str(tls / "shoal-client.key")]


def store_roundtrip(rig: Rig, host: str, value: str) -> subprocess.CompletedProcess[str]:
    return rig.exec(host, [PY, "-c", STORE_ROUNDTRIP, value], capture_output=True, text=True,
                    timeout=60)


def test_layout(rig: Rig) -> None:
    names = [h.name for h in rig.hosts]
    assert names == ["nid00060", "nid00061", "nid00062", "nid00063", "client1", "client2"]
    assert [h.address for h in rig.hosts][:4] == [f"10.77.0.{n}" for n in range(60, 64)]
    tls = rig.dir / "tls"
    assert rig.store_url == (f"etcds://{MEMBERS_AT}?ca={tls}/ca.pem&cert={tls}/shoal-client.pem"
                             f"&key={tls}/shoal-client.key")
    assert [h.name for h in rig.hosts if h.etcd] == ["nid00060", "nid00061", "nid00062"]
    key = rig.key_path.read_text()
    assert len(bytes.fromhex(key.strip())) == 32 and key.endswith("\n")
    assert stat.S_IMODE(rig.key_path.stat().st_mode) == 0o600
    fs, _ = parse_fs_defs_text(rig.fs_defs_path.read_text(), str(rig.fs_defs_path))
    assert sorted(t.name for t in fs.targets) == [
        "MGS", "scratch-MDT0000", "scratch-OST0000", "scratch-OST0001", "scratch-OST0002",
        "scratch-OST0003"]
    ost0 = next(t for t in fs.targets if t.name == "scratch-OST0000")
    assert ost0.nodes == ("nid00062", "nid00063")  # as in scratch.fs_defs
    devices = {d for t in fs.targets for _, d in t.devices}
    assert len(devices) == 6 and all(d.startswith("/dev/loop") for d in devices)
    for device in devices:  # every loop device is backed by an image in the rig dir
        back = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
        assert back.startswith(str(rig.dir / "devices"))
    assert all(s.state == "up" for s in rig.status())


def test_hosts_reach_each_other_and_root_does_not(rig: Rig) -> None:
    server = serve(rig, "nid00063", 7001)
    try:
        assert reaches(rig, "client1", "nid00063", 7001)
        assert reaches(rig, "nid00060", "nid00063", 7001)
        # the root namespace has no route into the rig (whatever its default route leads to
        # may accept the connection, as a sandbox's egress proxy does, but our server is not
        # there to answer)
        assert not _root_reaches("10.77.0.63", 7001)
        route = subprocess.run(["ip", "route", "get", "10.77.0.63"], capture_output=True,
                               text=True).stdout
        assert "p-" not in route and "br0" not in route
    finally:
        server.kill()
        server.wait()


def _root_reaches(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0) as c:
            c.settimeout(1.0)
            return c.recv(4) == b"pong"
    except OSError:
        return False


def test_exec_env_cwd_and_exit_code(rig: Rig, tmp_path: Path) -> None:
    res = rig.exec("client2", ["sh", "-c", 'echo "$SHOAL_STORE|$SHOAL_KEY|$(pwd)"; exit 7'],
                   cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert res.returncode == 7
    assert res.stdout.strip() == f"{rig.store_url}|{rig.key_path}|{tmp_path}"
    # the host sees only its own link, with its own address
    res = rig.exec("client2", ["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                   timeout=30)
    assert "10.77.0.102/24" in res.stdout and "eth0" in res.stdout


def test_cli_status_and_exec(rig: Rig) -> None:
    shoal = [sys.executable, "-m", "shoal", "rig"]
    res = subprocess.run(shoal + ["status", "--dir", str(rig.dir), "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(res.stdout)
    assert status["store"] == rig.store_url
    hosts = {h["name"]: h for h in status["hosts"]}
    assert hosts["nid00060"]["state"] == "up" and hosts["nid00060"]["pids"]
    res = subprocess.run(shoal + ["exec", "--dir", str(rig.dir), "client1", "--",
                                  "sh", "-c", "exit 5"], timeout=60)
    assert res.returncode == 5
    res = subprocess.run(shoal + ["exec", "--dir", str(rig.dir), "nobody", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "no host 'nobody'" in res.stderr
    assert "Traceback" not in res.stderr
    subprocess.run(shoal + ["partition", "--dir", str(rig.dir), "client1", "--from", "nid00063"],
                   capture_output=True, timeout=60, check=True)
    assert _partitions(rig) == [["client1", "nid00063"]]
    subprocess.run(shoal + ["heal", "--dir", str(rig.dir)], capture_output=True, timeout=60,
                   check=True)
    assert _partitions(rig) == []


def _partitions(rig: Rig) -> list[list[str]]:
    state = load(rig.dir)
    assert state is not None
    return state.partitions


def test_etcd_three_members_and_store_write(rig: Rig) -> None:
    res = rig.exec("client1", [PY, "-I", "-c", MEMBERS, "https://10.77.0.61:2379",
                               *_client_tls(rig)], capture_output=True, text=True, timeout=30)
    assert res.stdout.split() == ["nid00060", "nid00061", "nid00062"], res.stderr
    res = store_roundtrip(rig, "client2", "hello")
    assert res.returncode == 0 and res.stdout.strip() == "hello", res.stderr


def test_the_store_refuses_plain_and_certificate_less_connections(rig: Rig) -> None:
    tls = rig.dir / "tls"
    tries = {
        "plain": f"etcd://{MEMBERS_AT}?timeout=1",
        "no client certificate": f"etcds://{MEMBERS_AT}?timeout=1&ca={tls}/ca.pem",
        "another CA": f"etcds://{MEMBERS_AT}?timeout=1&ca={rig.dir}/other/ca.pem"
                      f"&cert={rig.dir}/other/x.pem&key={rig.dir}/other/x.key",
        "the right certificate": rig.store_url,
    }
    from shoal.rig.certs import CertAuthority
    CertAuthority(rig.dir / "other", "a stranger's CA").issue("x")
    got = {}
    for what, url in tries.items():
        res = rig.exec("client1", [PY, "-c", STORE_TRY, url], capture_output=True, text=True,
                       timeout=30)
        got[what] = res.stdout.split(" ", 1)[0].strip()
    assert got == {"plain": "StoreUnreachable", "no client certificate": "StoreUnreachable",
                   "another CA": "StoreUnreachable", "the right certificate": "ok"}, got


def test_partition_and_heal(rig: Rig) -> None:
    server = serve(rig, "nid00063", 7002)
    back = serve(rig, "client1", 7002)
    try:
        rig.partition(["client1"], from_hosts=["nid00063"])
        assert not reaches(rig, "client1", "nid00063", 7002)
        assert not reaches(rig, "nid00063", "client1", 7002)  # both ways
        assert reaches(rig, "client2", "nid00063", 7002)  # only the named pair is cut
        assert reaches(rig, "nid00060", "client1", 7002)
        rig.heal()
        assert reaches(rig, "client1", "nid00063", 7002)
        rig.partition(["nid00063"])  # from every other host
        assert not reaches(rig, "client2", "nid00063", 7002)
        assert not reaches(rig, "nid00063", "client1", 7002)
        assert reaches(rig, "client2", "client1", 7002)
        rig.heal()
        assert reaches(rig, "client2", "nid00063", 7002)
    finally:
        rig.heal()
        for p in (server, back):
            p.kill()
            p.wait()


def _busy(device: str) -> bool:
    """True if the block device is mounted (or otherwise held) anywhere."""
    try:
        os.close(os.open(device, os.O_RDONLY | os.O_EXCL))
        return False
    except OSError:
        return True


def _mount_in(rig: Rig, host: str, target: str) -> str | None:
    """mkfs and mount a loop device of the rig in `host`; the device, or None if no mkfs."""
    if shutil.which("mkfs.ext4") is None:
        return None
    state = load(rig.dir)
    assert state is not None
    device = next(x.device for x in state.loops if x.target == target)
    subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, timeout=60)
    (rig.dir / "mnt").mkdir(exist_ok=True)
    rig.exec(host, ["mount", device, str(rig.dir / "mnt")], check=True, timeout=30)
    return device


def test_power_off_and_on(rig: Rig) -> None:
    device = _mount_in(rig, "nid00062", "ost3")  # as a server mounts its target
    assert device is None or _busy(device)
    sleeper = rig.spawn("nid00062", "sleeper", ["sleep", "1000"])
    etcd_pids = next(s for s in rig.status() if s.name == "nid00062").pids
    assert sleeper.pid in etcd_pids and len(etcd_pids) == 2
    rig.power_off("nid00062")
    assert next(s for s in rig.status() if s.name == "nid00062").state == "off"
    assert device is None or not _busy(device)  # its mounts went with it
    for pid in etcd_pids:  # every process of the host is gone
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with pytest.raises(Exception, match="powered off"):
        rig.exec("nid00062", ["true"])
    assert not reaches(rig, "client1", "nid00062", 2379)
    # two of three members are a quorum: the store still takes writes
    res = store_roundtrip(rig, "client1", "quorum")
    assert res.returncode == 0 and res.stdout.strip() == "quorum", res.stderr
    rig.power_on("nid00062")  # returns once its member is healthy again
    rig.wait_etcd(timeout=30)
    res = rig.exec("client2", [PY, "-I", "-c", MEMBERS, "https://10.77.0.62:2379",
                               *_client_tls(rig)], capture_output=True, text=True, timeout=30)
    assert res.stdout.split() == ["nid00060", "nid00061", "nid00062"], res.stderr
    new = next(s for s in rig.status() if s.name == "nid00062")
    assert new.state == "up" and len(new.pids) == 1 and new.pids[0] not in etcd_pids
    assert "sleeper" not in {p.name for p in _records(rig)}


def test_power_off_keeps_partitions_of_others(rig: Rig) -> None:
    """A host powered off while partitioned comes back partitioned (its port is new)."""
    rig.partition(["client2"], from_hosts=["nid00063"])
    try:
        rig.power_off("client2")
        rig.power_on("client2")
        server = serve(rig, "nid00063", 7003)
        try:
            assert not reaches(rig, "client2", "nid00063", 7003)
            rig.heal()
            assert reaches(rig, "client2", "nid00063", 7003)
        finally:
            server.kill()
            server.wait()
    finally:
        rig.heal()


def test_the_fence_agent_powers_a_host_off_from_inside_another(rig: Rig) -> None:
    """`fence_rig`, run where the daemons run it (inside a server host's namespaces), sees
    and powers off the other hosts in the root namespaces, in its own process."""
    from shoal.rig.fence_agent import install

    agent = str(install(rig.dir))
    rig.anchor()  # as starting the file system does

    def call(action: str, plug: str) -> subprocess.CompletedProcess[str]:
        return rig.exec("nid00063", [agent], input=f"action={action}\nplug={plug}\n"
                        f"rig_dir={rig.dir}\n", capture_output=True, text=True, timeout=60)

    on = call("status", "client2")
    assert (on.returncode, on.stdout.strip()) == (0, "Status: ON"), on
    try:
        off = call("off", "client2")
        assert off.returncode == 0 and "Success" in off.stdout, off
        assert {h.name: h.state for h in rig.status()}["client2"] == "off"
        st = call("status", "client2")
        assert (st.returncode, st.stdout.strip()) == (2, "Status: OFF"), st
    finally:
        rig.power_on("client2")
    nobody = call("status", "nid00099")
    assert nobody.returncode == 1 and "no host 'nid00099'" in nobody.stderr, nobody


# An empty FUSE file system on argv[1], served until it is unmounted.
EMPTY_FS = """
import asyncio, sys
import pyfuse3, pyfuse3.asyncio
pyfuse3.asyncio.enable()
class Empty(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = inode, 0o40755, 2
        return e
pyfuse3.init(Empty(), sys.argv[1], set())
print("mounted", flush=True)
asyncio.run(pyfuse3.main())
pyfuse3.close(unmount=False)
"""


def test_a_host_keeps_no_copy_of_the_machines_fuse_mounts(rig: Rig, tmp_path: Path) -> None:
    """A host's mount namespace is made from the machine's; a copy of a FUSE mount in it
    kept the session open after the machine unmounted it, and its process served on (a
    `shoal umount` of a mount made before a rig host's power-on timed out)."""
    where = tmp_path / "fuse"
    where.mkdir()
    fs = subprocess.Popen([PY, "-c", EMPTY_FS, str(where)], stdout=subprocess.PIPE, text=True)
    try:
        assert fs.stdout is not None and fs.stdout.readline().strip() == "mounted"
        rig.power_off("client2")
        rig.power_on("client2")  # made afresh from the machine's mounts
        assert rig.exec("client2", ["mountpoint", "-q", str(where)]).returncode != 0
        subprocess.run(["fusermount3", "-u", str(where)], check=True)
        assert fs.wait(timeout=20) == 0  # its session ended with the unmount
    finally:
        if fs.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(where)], check=False)
            fs.kill()
            fs.wait()


def _records(rig: Rig) -> list[ProcRecord]:
    state = load(rig.dir)
    assert state is not None
    return state.procs


def test_daemon_hook(rig: Rig, tmp_path: Path) -> None:
    """With a daemon command configured, power-on starts it in the host, placeholders filled."""
    out = tmp_path / "daemon.out"
    rig.set_daemon_command(["sh", "-c", f"echo {{host}} {{address}} '{{store}}' > {out}; "
                            "exec sleep 1000"])
    try:
        rig.power_off("client1")
        rig.power_on("client1")
        record = next(p for p in _records(rig) if p.host == "client1" and p.name == "daemon")
        assert record.pid in next(s for s in rig.status() if s.name == "client1").pids
        for _ in range(100):  # bounded: 5 s
            if out.exists() and out.read_text():
                break
            time.sleep(0.05)
        assert out.read_text().split() == ["client1", "10.77.0.101", rig.store_url]
    finally:
        rig.set_daemon_command([])
        rig.power_off("client1")
        rig.power_on("client1")


def test_pause_and_resume_a_host(rig: Rig) -> None:
    """A paused host's processes are stopped, not gone: its connections stay open."""
    etcd = next(p for p in _records(rig) if p.host == "nid00062" and p.name == "etcd")
    assert etcd.pid in rig.pause("nid00062")
    for _ in range(100):  # a signal is delivered when the process is next scheduled
        if psutil.Process(etcd.pid).status() == psutil.STATUS_STOPPED:
            break
        time.sleep(0.02)
    assert psutil.Process(etcd.pid).status() == psutil.STATUS_STOPPED
    try:
        connect = "import socket; socket.create_connection(('10.77.0.62', 2379), timeout=2)"
        res = rig.exec("client1", [PY, "-I", "-c", connect], capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr  # the kernel still accepts for it
        res = store_roundtrip(rig, "client1", "paused")  # two of three members answer
        assert res.returncode == 0 and res.stdout.strip() == "paused", res.stderr
    finally:
        assert etcd.pid in rig.resume("nid00062")
    with pytest.raises(Exception, match="runs no 'daemon'"):
        rig.pause("nid00062", "daemon")
