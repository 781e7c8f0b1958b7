"""`Rig`: a multi-host cluster on one machine, each host a network + mount namespace.

    bridge namespace  <prefix>bridge:  br0 ── p-nid00060 ── veth ── eth0 in <prefix>nid00060
                                           ── p-client1  ── veth ── eth0 in <prefix>client1 ...

The root namespace gets no interface, address or route: the rig is unreachable from it and
no rig traffic can leave. Every method reads the state file afresh, under the rig's lock, so
any process (a test, `shoal rig ...` commands) can drive the same rig; see state.py for how a
crash is survived.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shoal.rig.devices as devices
import shoal.rig.etcd as etcd
import shoal.rig.faults as faults
import shoal.rig.netns as netns
import shoal.rig.procs as procs
import shoal.rig.state as st
from shoal.errors import Exists, InvalidArgument, NotConnected, TimedOut
from shoal.node.spec import KEY_FILE, write_key
from shoal.rig.certs import CertAuthority
from shoal.rig.state import HostRecord, LoopRecord, ProcRecord, RigState

log = logging.getLogger(__name__)

NS_DIR = "ns"  # mount namespace files, under a private bind mount of itself
LOG_DIR = "logs"
ETCD_DIR = "etcd"
TLS_DIR = "tls"  # the rig's CA and the certificates of etcd members and clients
FS_DEFS = "fs_defs"
FS_NAME = "scratch"
ROOT_HOST = ""  # ProcRecord.host of what runs in the root namespaces (the anchor)


@dataclass
class HostStatus:
    name: str
    role: str
    address: str
    state: str  # "up", "off", or "lost" (should be up but its namespace is gone)
    etcd: bool
    pids: list[int] = field(default_factory=list)


class Rig:
    """The rig kept in directory `rig_dir` (made by `up`, undone by `down`)."""

    def __init__(self, rig_dir: Path | str) -> None:
        self.dir = Path(rig_dir).resolve()
        self.prefix = st.rig_prefix(self.dir)

    # -- what it is -------------------------------------------------------------------------
    @property
    def key_path(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def ca(self) -> CertAuthority:
        return CertAuthority(self.dir / TLS_DIR)

    @property
    def fs_defs_path(self) -> Path:
        return self.dir / FS_DEFS

    @property
    def store_url(self) -> str:
        return self._state().store_url

    @property
    def hosts(self) -> list[HostRecord]:
        return self._state().hosts

    def host(self, name: str) -> HostRecord:
        return self._host(self._state(), name)

    def processes(self, host: str) -> list[str]:
        """The names of the host's recorded processes that are alive ("etcd", "daemon")."""
        return [p.name for p in self._state().procs if p.host == host and procs.alive(p)]

    # -- up and down -------------------------------------------------------------------------
    def up(self, servers: int = 4, clients: int = 2, osts: int = 4,
           image_mib: int = devices.DEFAULT_SIZE_MIB, with_etcd: bool = True,
           timeout: float = 30.0) -> None:
        """Make the bridge, the hosts, the loop devices, the key and fs_defs; start etcd."""
        netns.check_supported()
        if not 1 <= servers <= st.MAX_SERVERS:
            raise InvalidArgument(f"--servers must be 1..{st.MAX_SERVERS}, not {servers}")
        if not 0 <= clients <= st.MAX_CLIENTS:
            raise InvalidArgument(f"--clients must be 0..{st.MAX_CLIENTS}, not {clients}")
        if osts < 0 or image_mib < 1:
            raise InvalidArgument("--osts must be >= 0 and the image size >= 1 MiB")
        with st.locked(self.dir):
            old = st.load(self.dir)
            if old is not None or netns.netns_list(self.prefix):
                raise Exists(f"a rig is already up in {self.dir}: `shoal rig down` it first")
            state = self._plan(servers, clients, osts, with_etcd)
            st.save(self.dir, state)  # intent first: `down` can undo a half-made rig
            try:
                self._build(state, image_mib, timeout)
            except BaseException:
                log.warning("rig up failed; undoing what was made")
                self._undo_failed_up(state)
                raise

    def _undo_failed_up(self, state: RigState) -> None:
        """Tear down a half-made rig; the state file goes only if that worked, so a failed
        teardown can still be finished by `down` (the original error is what is raised)."""
        try:
            self._teardown(state)
        except Exception:  # noqa: BLE001 - reported, and the up's own error matters more
            log.exception("undoing the failed rig up failed: run `shoal rig down`")
            return
        st.remove(self.dir)

    def _plan(self, servers: int, clients: int, osts: int, with_etcd: bool) -> RigState:
        state = RigState(dir=str(self.dir), prefix=self.prefix, bridge_ns=self.prefix + "bridge",
                         etcd_token="shoal-rig-" + secrets.token_hex(4))
        names = [(f"nid{st.FIRST_SERVER + i:05d}", "server", st.FIRST_SERVER + i)
                 for i in range(servers)]
        names += [(f"client{i}", "client", st.FIRST_CLIENT + i - 1) for i in range(1, clients + 1)]
        for name, role, n in names:
            state.hosts.append(HostRecord(
                name=name, role=role, address=f"{st.SUBNET}.{n}", netns=self.prefix + name,
                mntns=str(self.dir / NS_DIR / f"{name}.mnt"), port=f"p-{name}"[:15]))
        if with_etcd:
            members = [h for h in state.hosts if h.role == "server"][:etcd.MEMBERS]
            for h in members:
                h.etcd = True
            state.store_url = etcd.store_url(members, self.dir / TLS_DIR)
        state.loops = [LoopRecord(target=t, image=str(self.dir / devices.IMAGES / f"{t}.img"))
                       for t in devices.target_devices(osts)]
        state.mounts = [str(self.dir / NS_DIR)]
        return state

    def _build(self, state: RigState, image_mib: int, timeout: float) -> None:
        if not self.key_path.exists():
            write_key(self.dir)
        netns.private_dir(self.dir / NS_DIR)
        netns.make_bridge(state.bridge_ns)
        for h in state.hosts:
            self._host_up(state, h)
        for loop in state.loops:
            devices.make_image(Path(loop.image), image_mib)
            loop.device = devices.attach(loop)
            st.save(self.dir, state)
        servers = [(h.name, h.address) for h in state.hosts if h.role == "server"]
        self.fs_defs_path.write_text(devices.render_fs_defs(
            FS_NAME, servers, {x.target: x.device for x in state.loops}))
        if state.store_url:
            etcd.reset_if_other_cluster(self.dir / ETCD_DIR, [h for h in state.hosts if h.etcd])
        for h in state.hosts:
            if h.etcd:
                self._start_etcd(state, h)
        if state.store_url:
            self._wait_etcd(state, [h for h in state.hosts if h.etcd], timeout)
        for h in state.hosts:
            if h.role == "server":
                self._start_daemon(state, h)

    def down(self, purge: bool = False) -> None:
        """Remove every namespace, interface, loop device, mount and process the rig made,
        whether or not the process that made them still lives. `purge` also deletes the
        images, etcd data, certificates, key and fs_defs (logs are kept)."""
        netns.check_supported()
        with st.locked(self.dir):
            state = st.load(self.dir) or RigState(dir=str(self.dir), prefix=self.prefix)
            self._teardown(state)
            st.remove(self.dir)
            if purge:
                for sub in (devices.IMAGES, ETCD_DIR, NS_DIR, TLS_DIR):
                    shutil.rmtree(self.dir / sub, ignore_errors=True)
                for f in (self.key_path, self.fs_defs_path):
                    f.unlink(missing_ok=True)

    def _teardown(self, state: RigState) -> None:
        """Undo everything in `state`, plus whatever carries the rig's names (a crash may have
        come before the state was saved). Every step tolerates what is already gone."""
        names = {h.netns for h in state.hosts} | set(netns.netns_list(self.prefix))
        for ns in sorted(names):
            records = [p for p in state.procs if self.prefix + p.host == ns]
            procs.kill_all(records, lambda ns=ns: netns.netns_pids(ns))
        procs.kill_all(state.procs, lambda: [])  # recorded ones outside any namespace
        ns_dir = self.dir / NS_DIR
        files = {Path(h.mntns) for h in state.hosts} | set(ns_dir.glob("*.mnt"))
        for f in sorted(files):
            netns.drop_mntns(f)
        for ns in sorted(names):
            netns.netns_del(ns)
        images = {Path(x.image) for x in state.loops} | set((self.dir / devices.IMAGES).glob("*.img"))
        for image in sorted(images):
            devices.detach(image)
        for mount in set(state.mounts) | {str(ns_dir)}:
            for m in netns.mounts_under(Path(mount)):
                netns.umount(m)

    # -- running things in hosts -----------------------------------------------------------
    def host_argv(self, host: str, argv: list[str], cwd: str | Path | None = None) -> list[str]:
        """`argv` prefixed with the nsenter that puts it into `host` (net and mount ns)."""
        h = self._up_host(self._state(), host)
        return netns.nsenter_argv(h.netns, h.mntns, str(cwd or os.getcwd())) + list(argv)

    def host_env(self, host: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of `host`'s administrator: the store URL and the cluster key."""
        return self._env(self._state(), host, env)

    def _env(self, state: RigState, host: str, env: dict[str, str] | None = None
             ) -> dict[str, str]:
        out = dict(os.environ if env is None else env)
        out.update(SHOAL_STORE=state.store_url, SHOAL_KEY=str(self.key_path),
                   SHOAL_RIG_DIR=str(self.dir), SHOAL_RIG_HOST=host)
        return out

    def exec(self, host: str, argv: list[str], *, cwd: str | Path | None = None,
             env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in `host` and wait (kw go to subprocess.run: timeout, capture_output...)."""
        return subprocess.run(self.host_argv(host, argv, cwd), env=self.host_env(host, env), **kw)

    def popen(self, host: str, argv: list[str], *, cwd: str | Path | None = None,
              env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` in `host`, not recorded: the caller owns it (power_off still kills it)."""
        return subprocess.Popen(self.host_argv(host, argv, cwd), env=self.host_env(host, env),
                                **kw)

    def spawn(self, host: str, name: str, argv: list[str]) -> ProcRecord:
        """Start a long-lived process in `host`, recorded in the state file (found again by
        any later rig command, killed by power_off and down); output in logs/<host>.<name>.log."""
        with st.locked(self.dir):
            state = self._state()
            return self._spawn(state, self._up_host(state, host), name, argv)

    def _spawn(self, state: RigState, h: HostRecord, name: str, argv: list[str]) -> ProcRecord:
        prefix = netns.nsenter_argv(h.netns, h.mntns, str(self.dir))
        _, record = procs.spawn(prefix, h.name, name, argv,
                                self.dir / LOG_DIR / f"{h.name}.{name}.log",
                                self._env(state, h.name))
        state.procs.append(record)
        st.save(self.dir, state)
        return record

    def set_daemon_command(self, template: list[str]) -> None:
        """The argv of a host's Shoal daemon, started by power_on (and by up, on servers).
        Placeholders: {host} {address} {dir} {store} {key} {fs_defs}. [] disables it."""
        with st.locked(self.dir):
            state = self._state()
            state.daemon_command = list(template)
            st.save(self.dir, state)

    def start_daemon(self, host: str) -> ProcRecord | None:
        """Start `host`'s Shoal daemon if a daemon command is configured; None if not."""
        with st.locked(self.dir):
            state = self._state()
            return self._start_daemon(state, self._up_host(state, host))

    def _start_daemon(self, state: RigState, h: HostRecord) -> ProcRecord | None:
        if not state.daemon_command:
            return None  # hook: the node daemon's command is configured by whoever needs it
        values = dict(host=h.name, address=h.address, dir=str(self.dir), store=state.store_url,
                      key=str(self.key_path), fs_defs=str(self.fs_defs_path))
        argv = [arg.format(**values) for arg in state.daemon_command]
        return self._spawn(state, h, "daemon", argv)

    def anchor(self) -> int:
        """The pid of a process the rig keeps in the root namespaces (started on first use):
        the fence agent, run by a daemon inside a host, enters the root namespaces through
        it to power hosts off, as a real agent reaches a PDU on the management network."""
        with st.locked(self.dir):
            state = self._state()
            for p in state.procs:
                if p.host == ROOT_HOST and p.name == "anchor" and procs.alive(p):
                    return p.pid
            state.procs = [p for p in state.procs
                           if not (p.host == ROOT_HOST and p.name == "anchor")]
            _, record = procs.spawn([], ROOT_HOST, "anchor", ["sleep", "infinity"],
                                    self.dir / LOG_DIR / "anchor.log", dict(os.environ))
            state.procs.append(record)
            st.save(self.dir, state)
            return record.pid

    # -- faults (faults.py) -------------------------------------------------------------------
    def power_off(self, host: str) -> None:
        """Cut the host's link, SIGKILL all its processes, release its mounts and namespaces."""
        faults.power_off(self, host)

    def power_on(self, host: str, timeout: float = faults.ETCD_REJOIN_TIMEOUT) -> None:
        """Make the host afresh, start its etcd member (waiting for it to rejoin) and daemon."""
        faults.power_on(self, host, timeout)

    def pause(self, host: str, only: str | None = None) -> list[int]:
        """Stop every process of the host (or only its `only` process: "etcd", "daemon")."""
        return faults.pause(self, host, only)

    def resume(self, host: str, only: str | None = None) -> list[int]:
        """Let what `pause` stopped run again."""
        return faults.pause(self, host, only, resume=True)

    def kill(self, host: str, only: str = "daemon") -> list[int]:
        """SIGKILL the host's `only` process ("daemon", "etcd"): a crash, the host still up."""
        return faults.kill(self, host, only)

    def partition(self, hosts: Iterable[str], from_hosts: Iterable[str] | None = None) -> None:
        """Cut traffic both ways between `hosts` and `from_hosts` (default: all the others)."""
        faults.partition(self, hosts, from_hosts)

    def cut_from_store(self, hosts: Iterable[str]) -> None:
        """Cut `hosts` from the etcd members' client port only (rig/faults.py)."""
        faults.cut_from_store(self, hosts)

    def heal(self) -> None:
        """Undo every partition and store cut."""
        faults.heal(self)

    # -- status --------------------------------------------------------------------------------
    def status(self) -> list[HostStatus]:
        state = self._state()
        out = []
        for h in state.hosts:
            state_now = faults.condition(h)
            out.append(HostStatus(h.name, h.role, h.address, state_now, h.etcd,
                                  netns.netns_pids(h.netns) if state_now == "up" else []))
        return out

    def wait_etcd(self, timeout: float = 30.0, members: list[str] | None = None) -> None:
        """Wait until the named etcd members (default: every powered one) are healthy."""
        state = self._state()
        chosen = [h for h in state.hosts if h.etcd and h.powered
                  and (members is None or h.name in members)]
        self._wait_etcd(state, chosen, timeout)

    # -- internals -----------------------------------------------------------------------------
    def _state(self) -> RigState:
        return st.require(self.dir)

    def _host(self, state: RigState, name: str) -> HostRecord:
        return st.require_host(state, name)

    def _up_host(self, state: RigState, name: str) -> HostRecord:
        h = self._host(state, name)
        if not h.powered:
            raise NotConnected(f"host {name} is powered off: `shoal rig power-on` it first")
        return h

    def _host_up(self, state: RigState, h: HostRecord) -> None:
        """Make the host's namespaces and plug it into the bridge (its partitions reapplied)."""
        netns.netns_add(h.netns)
        netns.plug_host(state.bridge_ns, h.port, h.netns, h.address, st.PREFIX_LEN)
        netns.make_mntns(Path(h.mntns), self.dir / NS_DIR)
        faults.apply_cuts(state, {h.name})

    def _start_etcd(self, state: RigState, h: HostRecord) -> None:
        members = [m for m in state.hosts if m.etcd]
        argv = etcd.member_argv(h, members, self.dir / ETCD_DIR, state.etcd_token, self.ca)
        self._spawn(state, h, "etcd", argv)

    def _wait_etcd(self, state: RigState, members: list[HostRecord], timeout: float) -> None:
        if not members:
            return
        via = members[0]  # any live host will do: the probe only needs the rig's network
        probe = etcd.probe_argv([etcd.client_url(m) for m in members], timeout, self.ca)
        argv = netns.nsenter_argv(via.netns, via.mntns, str(self.dir)) + probe
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            raise TimedOut(f"etcd members not healthy after {timeout:.0f} s") from None
        if res.returncode != 0:
            raise TimedOut(f"etcd not healthy after {timeout:.0f} s (logs in "
                           f"{self.dir / LOG_DIR}): {res.stdout.strip() or res.stderr.strip()}")

