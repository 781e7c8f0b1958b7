"""Issue 19: special files, extended attributes and ACLs made behind the MDT's commit (the
replay barrier) survive the MDS node's death under `shoal load`: the client replays them
on the backup, and they read back whole from a client that never saw them made."""

from __future__ import annotations

import stat

import pytest

from shoal.cluster.local import LocalCluster
from shoal.protocol.posix_acl import GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, Entry, decode, encode
from tests.scenarios.harness import Load, Probe, assert_clean, served_by, set_fail, wait_for

MDS_A, MDS_B = "nid00060", "nid00061"
MDT = "scratch-MDT0000"
ACCESS, DEFAULT = b"system.posix_acl_access", b"system.posix_acl_default"
ACL = encode([Entry(USER_OBJ, 7), Entry(USER, 5, 1234), Entry(GROUP_OBJ, 5), Entry(MASK, 5),
              Entry(OTHER, 0)])

pytestmark = pytest.mark.timeout(150)


def test_special_files_xattrs_and_acls_are_replayed_after_an_mds_death(
        cl: LocalCluster) -> None:
    load = Load(cl, clients=4, duration=8.0)
    probe = Probe()
    c = probe.client(cl)
    readers = []
    try:
        probe.run(c.mkdir("/x"))
        probe.run(c.sync_all())
        # the load's clients connected first: behind the barrier their slots would stay in
        # memory too (Lustre's replay_barrier), and the backup would not know them
        load.wait_writing()
        set_fail(cl, MDS_A, loc="0x720", target=MDT)  # nothing below commits on nid00060
        probe.run(c.mknod("/x/fifo", stat.S_IFIFO | 0o640))
        probe.run(c.mknod("/x/null", stat.S_IFCHR | 0o666, 0x0103))
        probe.run(c.setxattr("/x", DEFAULT, ACL))
        probe.run(c.create("/x/f"))  # inherits the default ACL as its access ACL
        probe.run(c.setxattr("/x/f", "user.color", b"blue"))
        probe.run(c.setxattr("/x/f", "trusted.gone", b"soon"))
        probe.run(c.removexattr("/x/f", "trusted.gone"))
        probe.run(c.setxattr("/x/fifo", "security.label", b"fifo\0"))
        assert cl.kill_node(MDS_A)
        wait_for("MGS and MDT on the backup", served_by(cl, MDS_B, ["MGS", MDT]), timeout=40)
        assert c.mdt.sm.evictions == 0 and c.mdt.lost_to_eviction == 0
        fresh = probe.client(cl, name="fresh-reader")
        readers.append(fresh)
        assert probe.run(fresh.lstat("/x/fifo")).type == "p"
        assert probe.run(fresh.lstat("/x/null")).rdev == 0x0103
        assert probe.run(fresh.getxattr("/x", DEFAULT)) == ACL
        assert probe.run(fresh.getxattr("/x/f", "user.color")) == b"blue"
        assert probe.run(fresh.listxattr("/x/f")) == [ACCESS, b"user.color"]
        inherited = decode(probe.run(fresh.getxattr("/x/f", ACCESS)))
        assert Entry(USER, 5, 1234) in inherited
        assert probe.run(fresh.getxattr("/x/fifo", "security.label")) == b"fifo\0"
        assert_clean(load.result())
    finally:
        probe.close(c, *readers)
