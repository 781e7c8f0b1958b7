"""Faults of the rig's hosts: power off and on, pauses, network partitions and healing.

Power-off is a real power cut as far as the rest of the rig can tell: the host's switch port
goes down first, so nothing its dying processes send (FIN, RST) gets out; then every process
of the host is SIGKILLed, its mount namespace released (its mounts with it) and its network
namespace deleted, sockets and ARP cache included. Power-on makes the host afresh, as a
reboot would, and starts what the host runs at boot: its etcd member and its daemon.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import shoal.rig.netns as netns
import shoal.rig.procs as procs
import shoal.rig.state as st
from shoal.errors import InvalidArgument
from shoal.rig.state import HostRecord, ProcRecord, RigState


class Rig(Protocol):
    """What the faults need of the rig (rig/rig.py's Rig): its directory, its state, and the
    steps that bring a host up."""

    dir: Path

    def _state(self) -> RigState: ...
    def _host(self, state: RigState, name: str) -> HostRecord: ...
    def _host_up(self, state: RigState, h: HostRecord) -> None: ...
    def _start_etcd(self, state: RigState, h: HostRecord) -> None: ...
    def _wait_etcd(self, state: RigState, members: list[HostRecord], timeout: float) -> None: ...
    def _start_daemon(self, state: RigState, h: HostRecord) -> ProcRecord | None: ...

ETCD_REJOIN_TIMEOUT = 30.0


def power_off(rig: Rig, host: str) -> None:
    power_off_in(rig.dir, host)


def power_off_in(rig_dir: Path, host: str) -> None:
    """Power-off with nothing but the rig's directory (what the rig's fence agent has)."""
    with st.locked(rig_dir):
        state = st.require(rig_dir)
        h = st.require_host(state, host)
        netns.port_down(state.bridge_ns, h.port)  # first: no polite goodbye gets out
        records = [p for p in state.procs if p.host == h.name]
        procs.kill_all(records, lambda: netns.netns_pids(h.netns))
        netns.drop_mntns(Path(h.mntns))
        netns.unplug(state.bridge_ns, h.port)
        netns.netns_del(h.netns)
        state.procs = [p for p in state.procs if p.host != h.name]
        h.powered = False
        st.save(rig_dir, state)


def condition(h: HostRecord) -> str:
    """"up", "off", or "lost" (powered, but its namespaces are gone)."""
    if not h.powered:
        return "off"
    return "up" if netns.netns_exists(h.netns) else "lost"


def is_up(rig_dir: Path, host: str) -> bool:
    return condition(st.require_host(st.require(rig_dir), host)) == "up"


def power_on(rig: Rig, host: str, timeout: float = ETCD_REJOIN_TIMEOUT) -> None:
    """Bring the host back (no-op if it is up); waits until its etcd member is healthy."""
    with st.locked(rig.dir):
        state = rig._state()
        h = rig._host(state, host)
        if h.powered and netns.netns_exists(h.netns):
            return
        h.powered = True
        st.save(rig.dir, state)
        rig._host_up(state, h)
        if h.etcd:
            rig._start_etcd(state, h)
            rig._wait_etcd(state, [h], timeout)
        rig._start_daemon(state, h)


def pause(rig: Rig, host: str, only: str | None = None, *, resume: bool = False) -> list[int]:
    """SIGSTOP every process of the host (a hung machine: its connections stay open, it
    answers nothing), or only its recorded process `only` ("etcd", "daemon") and that one's
    children; SIGCONT with `resume`. The pids signalled."""
    with st.locked(rig.dir):
        state = rig._state()
        h = rig._host(state, host)
        if not h.powered:
            raise InvalidArgument(f"{host} is powered off")
        records = [p for p in state.procs if p.host == h.name and (only is None or p.name == only)]
        if only is not None and not records:
            raise InvalidArgument(f"{host} runs no {only!r} (it runs: "
                                  f"{', '.join(p.name for p in state.procs if p.host == h.name)})")
        find = (lambda: netns.netns_pids(h.netns)) if only is None else (lambda: [])
        return procs.signal_all(records, find, signal.SIGCONT if resume else signal.SIGSTOP)


def kill(rig: Rig, host: str, only: str = "daemon") -> list[int]:
    """SIGKILL the host's recorded process `only` and its children: a crash on a live host
    (its kernel closes the sockets; its port refuses from then on). The record goes; power-on
    or start_daemon starts it again. The pids killed."""
    with st.locked(rig.dir):
        state = rig._state()
        h = rig._host(state, host)
        records = [p for p in state.procs if p.host == h.name and p.name == only]
        if not h.powered or not records:
            raise InvalidArgument(f"{host} runs no {only!r}")
        done = procs.signal_all(records, lambda: [], signal.SIGKILL)
        state.procs = [p for p in state.procs if p not in records]
        st.save(rig.dir, state)
        return done


def partition(rig: Rig, hosts: Iterable[str], from_hosts: Iterable[str] | None = None) -> None:
    """Cut all traffic, both ways, between `hosts` and `from_hosts` (default: every other
    host). Cuts add up; `heal` removes them all."""
    with st.locked(rig.dir):
        state = rig._state()
        side_a = _names(rig, state, hosts)
        if from_hosts is None:
            side_b = {h.name for h in state.hosts} - side_a
        else:
            side_b = _names(rig, state, from_hosts)
        if not side_a or not side_b:
            raise InvalidArgument("a partition needs hosts on both sides")
        pairs = {tuple(p) for p in state.partitions}
        pairs |= {(min(a, b), max(a, b)) for a in side_a for b in side_b if a != b}
        state.partitions = [list(p) for p in sorted(pairs)]
        st.save(rig.dir, state)
        apply_cuts(state, side_a | side_b)


def cut_from_store(rig: Rig, hosts: Iterable[str]) -> None:
    """Cut `hosts` from the store alone: their traffic to and from the etcd members' client
    port, both ways; everything else (the servers on the same hosts, the clients) still
    flows. `heal` undoes it."""
    with st.locked(rig.dir):
        state = rig._state()
        cut = _names(rig, state, hosts)
        members = _members(state)
        if not members - cut:
            raise InvalidArgument("no etcd member would be left to cut these hosts from")
        state.store_cuts = sorted(set(state.store_cuts) | cut)
        st.save(rig.dir, state)
        apply_cuts(state, cut | members)


def heal(rig: Rig) -> None:
    with st.locked(rig.dir):
        state = rig._state()
        touched = {n for pair in state.partitions for n in pair}
        if state.store_cuts:
            touched |= set(state.store_cuts) | _members(state)
        state.partitions = []
        state.store_cuts = []
        st.save(rig.dir, state)
        apply_cuts(state, touched)


def _members(state: RigState) -> set[str]:
    """The hosts that carry an etcd member."""
    return {h.name for h in state.hosts if h.etcd}


def _names(rig: Rig, state: RigState, names: Iterable[str]) -> set[str]:
    return {rig._host(state, n).name for n in names}


def apply_cuts(state: RigState, names: set[str]) -> None:
    """Rewrite the rules of the named hosts' ports (a powered-off host has none: power-on
    reapplies them when it plugs the host in again)."""
    chosen = [h for h in state.hosts if h.name in names and h.powered]
    if not chosen:
        return
    plugged = netns.links(state.bridge_ns)
    netns.set_cuts(state.bridge_ns, {h.port: (cut_addresses(state, h.name),
                                              store_port_cuts(state, h.name))
                                     for h in chosen if h.port in plugged})


def cut_addresses(state: RigState, host: str) -> list[str]:
    """Addresses `host` is partitioned from."""
    peers = {b if a == host else a for a, b in state.partitions if host in (a, b)}
    return [h.address for h in state.hosts if h.name in peers]


def store_port_cuts(state: RigState, host: str) -> list[tuple[str, str, int]]:
    """The etcd traffic `host` must not send: to the members' client port if `host` is cut
    from the store, and from its own member to each host that is."""
    me = state.host(host)
    cuts: list[tuple[str, str, int]] = []
    if host in state.store_cuts:
        cuts += [(h.address, "dport", st.ETCD_CLIENT_PORT) for h in state.hosts
                 if h.etcd and h.name != host]
    if me is not None and me.etcd:
        cuts += [(h.address, "sport", st.ETCD_CLIENT_PORT) for h in state.hosts
                 if h.name in state.store_cuts and h.name != host]
    return cuts
