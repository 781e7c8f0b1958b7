"""The local cluster's store: where it is, the local etcd `shoal up --store etcd` runs, and
the layout `shoal up` reads from it.

    <dir>/store.db            the SQLite store (the default, `--store sqlite`)
    <dir>/etcd/               local etcd members (`--store etcd`), stopped by `shoal down`
    <dir>/cluster.json        records the store's URL (`store_url`), so node processes and
                              every later command (`shoal config|db|foadmin`) find it

`shoal up` writes the file system's configuration into the store (write_conf) and builds the
node layout from what it reads back (read_conf): the store, not the fs_defs file, is what the
cluster runs on. Without an fs_defs file it uses what the store already holds (e.g. after
`shoal db` edits) and only falls back to the built-in example when the store has nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shoal.config.fs_defs import parse_fs_defs
from shoal.config.model import FileSystemDef
from shoal.config.write_conf import Diff, read_conf, snapshot, write_conf
from shoal.errors import ConfigError, NotFound
from shoal.node.spec import SPEC_FILE, ClusterSpec
from shoal.store import open_store
from shoal.store.etcd_server import STATE_FILE, EtcdCluster

STORE_DB = "store.db"
ETCD_DIR = "etcd"
STORE_CHOICES = ("sqlite", "etcd")


def sqlite_url(cluster_dir: Path | str) -> str:
    return f"sqlite://{Path(cluster_dir).resolve() / STORE_DB}"


def etcd_dir(cluster_dir: Path | str) -> Path:
    return Path(cluster_dir).resolve() / ETCD_DIR


def cluster_store_url(cluster_dir: Path | str) -> str:
    """The store of the cluster in `cluster_dir`: what its cluster.json records, else the
    SQLite file `<dir>/store.db` (whether or not it exists yet)."""
    d = Path(cluster_dir).resolve()
    if (d / SPEC_FILE).exists():
        url = ClusterSpec.load(d).store_url
        if url:
            return url
    return sqlite_url(d)


def normalize_url(url: str) -> str:
    """The URL with a bare path made sqlite:///abs/path (options kept); ConfigError, naming
    it, for one open_store cannot use."""
    store = open_store(url)
    return url.strip() if "://" in url else store.url


@dataclass
class StoreSetup:
    """The store `shoal up` runs on, and the etcd members it started for it, if any."""

    url: str
    etcd: EtcdCluster | None = None
    started: list[str] = field(default_factory=list)  # etcd members this call started

    def undo(self) -> None:
        """Stop the etcd members this call started (when `shoal up` fails before any node
        runs, so a failed `up` leaves nothing behind)."""
        if self.etcd is not None:
            for i, m in enumerate(self.etcd.members):
                if m.name in self.started:
                    self.etcd.stop_member(i)


def start_store(cluster_dir: Path, choice: str | None = None, *,
                etcd_members: int | None = None, previous_url: str = "") -> StoreSetup:
    """Make the store `--store choice` names ready: `sqlite` (`<dir>/store.db`), `etcd`
    (start `etcd_members` local members under `<dir>/etcd/`, or restart the ones kept there,
    on their old ports and data), or a store URL (used as it is). None: the store the
    cluster in this directory used before (`previous_url`, local etcd restarted), else
    sqlite."""
    if choice is None:
        choice = _previous_choice(cluster_dir, previous_url)
        if choice == "etcd" and etcd_members is None:
            etcd_members = EtcdCluster.attach(etcd_dir(cluster_dir)).size
    choice = choice.strip()
    if etcd_members is not None and choice != "etcd":
        raise ConfigError("--etcd-members goes with --store etcd (local etcd members)")
    if choice == "sqlite":
        cluster_dir.mkdir(parents=True, exist_ok=True)
        return StoreSetup(sqlite_url(cluster_dir))
    if choice == "etcd":
        members = etcd_members or 1
        cluster = EtcdCluster.at(etcd_dir(cluster_dir), size=members)
        running = {m.name for m in cluster.members if m.pid and cluster._running(m)}
        cluster.start()
        started = [m.name for m in cluster.members if m.name not in running]
        return StoreSetup(cluster.url, cluster, started)
    return StoreSetup(normalize_url(choice))


def _previous_choice(cluster_dir: Path, previous_url: str) -> str:
    if not previous_url or previous_url == sqlite_url(cluster_dir):
        return "sqlite"
    state = etcd_dir(cluster_dir) / STATE_FILE
    if state.exists() and EtcdCluster.attach(etcd_dir(cluster_dir)).url == previous_url:
        return "etcd"
    return previous_url


def stop_local_etcd(cluster_dir: Path | str) -> list[str]:
    """Stop the etcd members `shoal up --store etcd` started under `<dir>/etcd/` (their data
    stays, for the next `shoal up --store etcd`); the names of those that were running."""
    d = etcd_dir(cluster_dir)
    if not (d / STATE_FILE).exists():
        return []
    cluster = EtcdCluster.attach(d)
    running = [m.name for m in cluster.members if m.pid and cluster._running(m)]
    cluster.stop()
    return running


def local_etcd_running(cluster_dir: Path | str) -> list[str]:
    """Names of the local etcd members under `<dir>/etcd/` that are running."""
    d = etcd_dir(cluster_dir)
    if not (d / STATE_FILE).exists():
        return []
    cluster = EtcdCluster.attach(d)
    return [m.name for m in cluster.members if m.pid and cluster._running(m)]


@dataclass
class Layout:
    """What `shoal up` runs: the file system as read back from the store."""

    fsdef: FileSystemDef
    diff: Diff | None  # what writing the fs_defs changed in the store (None: nothing written)
    warnings: list[str]
    source: str  # where the configuration came from, for `shoal up` to say


async def layout_from_store(url: str, fs_defs: Path | None, *, fs: str | None = None,
                            previous_fs: str | None = None,
                            example: Path | None = None) -> Layout:
    """Write `fs_defs` (if given) into the store, then read the file system back from it.

    Without `fs_defs`: the file system named `fs`, else the one the cluster ran before
    (`previous_fs`) if the store holds it, else the store's only one; an empty store (or
    one without `fs`, when `fs` is the example's) gets the built-in `example` first."""
    warnings: list[str] = []
    diff: Diff | None = None
    async with open_store(url) as store:
        if fs_defs is not None:
            fsdef, warnings = parse_fs_defs(fs_defs)
            if fs is not None and fs != fsdef.name:
                raise ConfigError(f"{fs_defs}: defines file system {fsdef.name}, not {fs}")
            diff = await write_conf(store, [fsdef])
            name = fsdef.name
            source = f"{fs_defs}, " + ("written into it" if diff else "which it already held")
        else:
            configured = sorted((await snapshot(store)).fss)
            name = _choose(configured, fs, previous_fs, url)
            source = "the configuration it holds"
            if name is None:
                if example is None:
                    raise NotFound(f"store {url} holds no file system configuration "
                                   "(give an fs_defs file, or `shoal config write` one)")
                exdef, warnings = parse_fs_defs(example)
                if fs is not None and fs != exdef.name:
                    raise NotFound(f"file system {fs} is not configured in store {url} "
                                   f"(holds: {', '.join(configured) or 'nothing'})")
                diff = await write_conf(store, [exdef])
                name, source = exdef.name, f"the built-in example {example}, written into it"
        try:
            (fsdef,) = await read_conf(store, name)
        except ConfigError as exc:
            raise ConfigError(f"store {url}: the configuration of {name} cannot run:\n{exc}") \
                from None
    return Layout(fsdef, diff, warnings, source)


def _choose(configured: list[str], fs: str | None, previous: str | None,
            url: str) -> str | None:
    if fs is not None:
        return fs if fs in configured else None
    if previous is not None and previous in configured:
        return previous
    if len(configured) == 1:
        return configured[0]
    if not configured:
        return None
    raise ConfigError(f"store {url} holds several file systems ({', '.join(configured)}): "
                      "choose one with --fs")
