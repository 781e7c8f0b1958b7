"""The rig's etcd cluster: one member on each of the first three server hosts.

Members listen on their host's rig address (not loopback), so the store is reached over the
rig's network and a power-off or partition of a member's host is real to etcd. The existing
shoal.store.etcd_server.EtcdCluster binds 127.0.0.1 only, so members are started here, with
the same flags it uses; data lives under <rig dir>/etcd/<host>/.

The store speaks TLS only, as a real one would: members serve clients and each other with
certificates from the rig's own CA (rig/certs.py) and require client certificates, so a plain
or certificate-less connection is refused. Every member's certificate is valid for its own
address, which is what the client checks.

Health is asked from inside a host (the root namespace has no route to the rig): a short
Python probe polls each member's /health until it reports a leader, bounded in time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from shoal.errors import ConfigError
from shoal.rig.certs import CertAuthority, CertFiles
from shoal.rig.state import ETCD_CLIENT_PORT, ETCD_PEER_PORT, HostRecord
from shoal.store.etcd_server import etcd_binary

MEMBERS = 3
HEARTBEAT_MS = 100
ELECTION_MS = 1000
HISTORY_REVISIONS = 10_000
CLIENT_CERT = "shoal-client"  # the certificate every Shoal process of the rig presents


def binary() -> str:
    path = etcd_binary()
    if path is None:
        raise ConfigError("etcd not found on PATH: install Debian's etcd-server package")
    return path


def client_url(host: HostRecord) -> str:
    return f"https://{host.address}:{ETCD_CLIENT_PORT}"


def peer_url(host: HostRecord) -> str:
    return f"https://{host.address}:{ETCD_PEER_PORT}"


def client_files(ca: CertAuthority) -> CertFiles:
    return ca.issue(CLIENT_CERT)


def member_files(ca: CertAuthority, host: HostRecord) -> CertFiles:
    return ca.issue(f"etcd-{host.name}", ips=[host.address])


def store_url(members: list[HostRecord], tls_dir: Path) -> str:
    """etcds://a:2379,b:2379,c:2379?ca=...&cert=...&key=..., the form shoal.store.open_store
    reads."""
    d = Path(tls_dir)
    return ("etcds://" + ",".join(f"{h.address}:{ETCD_CLIENT_PORT}" for h in members)
            + f"?ca={d / 'ca.pem'}&cert={d / CLIENT_CERT}.pem&key={d / CLIENT_CERT}.key")


def member_argv(host: HostRecord, members: list[HostRecord], data_root: Path,
                token: str, ca: CertAuthority) -> list[str]:
    """etcd's command line for `host`'s member. The initial-cluster flags only matter on
    first start; a restarted member finds its data directory and rejoins with its history."""
    initial = ",".join(f"{m.name}={peer_url(m)}" for m in members)
    data = data_root / host.name
    files = member_files(ca, host)
    tls = [f"--cert-file={files.cert}", f"--key-file={files.key}", "--client-cert-auth",
           f"--trusted-ca-file={ca.ca}", f"--peer-cert-file={files.cert}",
           f"--peer-key-file={files.key}", "--peer-client-cert-auth",
           f"--peer-trusted-ca-file={ca.ca}"]
    return [
        binary(),
        *tls,
        f"--name={host.name}",
        f"--data-dir={data}",
        f"--listen-client-urls={client_url(host)}",
        f"--advertise-client-urls={client_url(host)}",
        f"--listen-peer-urls={peer_url(host)}",
        f"--initial-advertise-peer-urls={peer_url(host)}",
        f"--initial-cluster={initial}",
        f"--initial-cluster-state={'existing' if data.exists() else 'new'}",
        f"--initial-cluster-token={token}",
        f"--heartbeat-interval={HEARTBEAT_MS}",
        f"--election-timeout={ELECTION_MS}",
        "--auto-compaction-mode=revision",
        f"--auto-compaction-retention={HISTORY_REVISIONS}",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def reset_if_other_cluster(data_root: Path, members: list[HostRecord]) -> None:
    """Keep etcd data from an earlier `rig up` only if it was made by the same members: a
    member whose data knows another membership would wait forever for peers that are gone."""
    initial = ",".join(f"{m.name}={peer_url(m)}" for m in members)
    marker = data_root / "members"
    if marker.exists() and marker.read_text().strip() != initial:
        shutil.rmtree(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    marker.write_text(initial + "\n")


# Polls every URL given until each answers /health with a leader, or the deadline passes;
# prints the last answer of each unhealthy one and exits 1 then.
_PROBE = r"""
import json, ssl, sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
pending = {u: "no answer" for u in sys.argv[5:]}
while pending and time.monotonic() < deadline:
    for url in list(pending):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1.0, context=ctx) as r:
                body = json.loads(r.read())
            if body.get("health") in (True, "true"):
                del pending[url]
            else:
                pending[url] = json.dumps(body)
        except (OSError, ValueError) as exc:
            pending[url] = str(exc)
    if pending:
        time.sleep(0.1)
for url, why in pending.items():
    print(f"{url}: {why}")
sys.exit(1 if pending else 0)
"""


def probe_argv(urls: list[str], timeout: float, ca: CertAuthority) -> list[str]:
    """A command that, run inside a host, waits until every member at `urls` is healthy."""
    files = client_files(ca)
    return [sys.executable, "-I", "-c", _PROBE, str(timeout), str(ca.ca), str(files.cert),
            str(files.key), *urls]
