"""open_store: which URL gives which backend, and a clear ConfigError for every bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import ConfigError
from shoal.store import open_store
from shoal.store.etcd import EtcdStore
from shoal.store.sqlite import SQLiteStore


async def test_sqlite_url_and_bare_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(f"sqlite://{tmp_path}/a.db?history=500")
    assert isinstance(s, SQLiteStore)
    assert s.path == tmp_path / "a.db" and s.url == f"sqlite://{tmp_path}/a.db"
    assert s.history_revisions == 500
    await s.close()

    b = open_store(str(tmp_path / "b.db"))
    assert isinstance(b, SQLiteStore) and b.path == tmp_path / "b.db"
    await b.close()

    monkeypatch.chdir(tmp_path)
    c = open_store("rel/c.db")
    assert isinstance(c, SQLiteStore) and c.path == tmp_path / "rel" / "c.db"
    await c.close()


async def test_etcd_url() -> None:
    s = open_store("etcd://127.0.0.1:2379,127.0.0.2:2380,localhost?timeout=0.5")
    assert isinstance(s, EtcdStore)
    assert s.endpoints == [("127.0.0.1", 2379), ("127.0.0.2", 2380), ("localhost", 2379)]
    assert s.url == "etcd://127.0.0.1:2379,127.0.0.2:2380,localhost:2379"
    assert s.timeout == 0.5
    await s.close()


async def test_etcds_url(tmp_path: Path) -> None:
    s = open_store("etcds://10.0.0.1:2379,10.0.0.2?ca=/etc/ca.pem&cert=/etc/c.pem"
                   "&key=/etc/c.key&server_name=etcd.example.org&timeout=3")
    assert isinstance(s, EtcdStore) and s.tls is not None
    assert s.url == "etcds://10.0.0.1:2379,10.0.0.2:2379" and s.timeout == 3
    assert (s.tls.ca, s.tls.cert, s.tls.key, s.tls.server_name) == (
        Path("/etc/ca.pem"), Path("/etc/c.pem"), Path("/etc/c.key"), "etcd.example.org")
    await s.close()


async def test_etcds_with_a_missing_ca_file_says_which(tmp_path: Path) -> None:
    s = open_store(f"etcds://127.0.0.1:2379?ca={tmp_path}/nothere.pem")
    with pytest.raises(ConfigError, match=f"etcd TLS ca {tmp_path}/nothere.pem: No such file"):
        await s.get("/x")
    await s.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("redis://127.0.0.1:6379", "unknown scheme 'redis'"),
        ("zk:127.0.0.1", "unknown form"),
        ("sqlite://relative.db", "absolute path"),
        ("etcd://", "empty member"),
        ("etcd://127.0.0.1:notaport", "bad member address"),
        ("etcd://127.0.0.1:99999", "bad member address"),
        ("etcd://127.0.0.1:2379,,127.0.0.1:2380", "empty member"),
        ("etcd://127.0.0.1:2379?timeout=soon", "needs a number"),
        ("etcd://127.0.0.1:2379?timeout=0", "must be positive"),
        ("etcd://127.0.0.1:2379?history=5", "unknown option 'history'"),
        ("sqlite:///tmp/x.db?timeout=1", "unknown option 'timeout'"),
        ("etcds://127.0.0.1:2379", "needs ca="),
        ("etcds://127.0.0.1:2379?ca=ca.pem", "ca= needs an absolute path"),
        ("etcds://127.0.0.1:2379?ca=/ca.pem&cert=/c.pem", "both cert= and key="),
        ("etcd://127.0.0.1:2379?ca=/ca.pem", "unknown option 'ca'"),
    ],
)
def test_bad_urls_are_config_errors(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as err:
        open_store(url)
    if url:
        assert url in str(err.value)
