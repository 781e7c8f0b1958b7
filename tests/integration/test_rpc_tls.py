"""A local cluster with RPC_TLS=yes (issue 17): every process (nodes among themselves,
administrators, library clients) speaks TLS, verified against TLS_CA; a client without TLS
is refused and told why; a node whose certificate file is missing says so at start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.client import Client
from shoal.errors import AuthFailure
from shoal.net import loop
from shoal.node.spec import read_key
from shoal.rig.certs import CertAuthority
from tests.helpers import shoal

NODES = {"n1": "127.0.9.1", "n2": "127.0.9.2"}


def fs_defs(pki: Path, cert: str = "node") -> str:
    return f"""fs_name="tls"
NID_MAP="{' '.join(f'{n}={a}' for n, a in NODES.items())}"
MGSDEV="n1:mgt n2:mgt"
MDSDEV[0]="n1:mdt0 n2:mdt0"
OSTDEV[0]="n2:ost0 n1:ost0"
FENCE_METHOD="local"
RPC_TLS=yes
TLS_CA={pki}/ca.pem
TLS_CERT={pki}/{cert}.pem
TLS_KEY={pki}/{cert}.key
"""


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("tls")
    CertAuthority(d / "pki").issue("node", ips=list(NODES.values()))
    (d / "tls.fs_defs").write_text(fs_defs(d / "pki"))
    shoal("up", "--fs-defs", str(d / "tls.fs_defs"), cluster_dir=d / "run")
    try:
        yield d
    finally:
        shoal("down", cluster_dir=d / "run", check=False)


def test_files_and_administration_go_over_tls(tls_cluster: Path, tmp_path: Path) -> None:
    run = tls_cluster / "run"
    src = tmp_path / "in"
    src.write_bytes(b"over tls\n" * 50_000)
    shoal("fs", "put", str(src), "/f", cluster_dir=run)
    shoal("fs", "get", "/f", str(tmp_path / "out"), cluster_dir=run)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    status = shoal("status", "--json", cluster_dir=run).stdout
    assert '"UP"' in status or "UP" in status
    stats = shoal("ctl", "get_param", "net.*.stats", cluster_dir=run).stdout
    assert "connections" in stats


def test_a_client_without_tls_is_refused_and_told_why(tls_cluster: Path) -> None:
    key = read_key(tls_cluster / "run" / "key")

    async def plain() -> None:
        client = Client([f"{NODES['n1']}:{_port(tls_cluster)}"], key, fs="tls",
                        connect_timeout=1.0)
        try:
            with pytest.raises(AuthFailure, match="the nodes speak TLS"):
                await client.mount()
        finally:
            await client.close()

    loop.run(plain())


def test_a_missing_certificate_is_named_at_start(tmp_path: Path) -> None:
    CertAuthority(tmp_path / "pki").issue("node", ips=list(NODES.values()))
    (tmp_path / "bad.fs_defs").write_text(fs_defs(tmp_path / "pki", cert="nothere"))
    res = shoal("up", "--fs-defs", str(tmp_path / "bad.fs_defs"), "--timeout", "20",
                cluster_dir=tmp_path / "run", check=False)
    try:
        assert res.returncode != 0
        assert f"TLS_CERT={tmp_path}/pki/nothere.pem: no such file" in res.stdout + res.stderr
        assert "Traceback" not in res.stdout + res.stderr
    finally:
        shoal("down", cluster_dir=tmp_path / "run", check=False)


def _port(d: Path) -> int:
    from shoal.node.spec import ClusterSpec

    return ClusterSpec.load(d / "run").addr_port("n1")[1]


def test_up_reports_nodes_that_all_die_at_once_without_waiting(tmp_path: Path) -> None:
    """Both nodes' port is taken: each dies at start, and `up` says why at once instead of
    waiting out its timeout."""
    import socket
    import time

    taken = []
    for address in NODES.values():
        s = socket.socket()
        s.bind((address, 0))
        s.listen()
        taken.append(s)
    port = taken[0].getsockname()[1]
    taken[1].close()
    s = socket.socket()
    s.bind((NODES["n2"], port))
    s.listen()
    taken[1] = s
    (tmp_path / "busy.fs_defs").write_text(fs_defs(tmp_path, "x").split("RPC_TLS")[0]
                                           + f"PORT={port}\n")
    started = time.monotonic()
    res = shoal("up", "--fs-defs", str(tmp_path / "busy.fs_defs"), "--timeout", "60",
                cluster_dir=tmp_path / "run", check=False)
    try:
        assert res.returncode == 1 and time.monotonic() - started < 30
        assert "every node died at start" in res.stderr and "is in use" in res.stderr, res.stderr
    finally:
        shoal("down", cluster_dir=tmp_path / "run", check=False)
        for s in taken:
            s.close()
