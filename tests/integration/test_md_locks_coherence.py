"""Attributes and names kept under the MDT's locks (issue 20), with two real clients on a real
cluster: a second read is a hit, and every change another client makes is seen at once."""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.client.client import Client
from shoal.client.md_calls import unname_call
from shoal.cluster.local import LocalCluster
from shoal.errors import NotFound
from shoal.protocol.ldlm import Bits


def hits(c: Client) -> int:
    md = c.mdt.md_locks
    assert md is not None
    return md.cache.stats["hits"]


def misses(c: Client) -> int:
    md = c.mdt.md_locks
    assert md is not None
    return md.cache.stats["misses"]


def test_reads_are_kept_and_another_clients_changes_are_seen_at_once(
        cluster: LocalCluster) -> None:
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(f"/mdl-{os.getpid()}")
            f = await a.create(f"/mdl-{os.getpid()}/f", 0o644)
            await (await a.open(f"/mdl-{os.getpid()}/f", os.O_WRONLY)).close()
            first = await b.lookup(d.ino, "f")
            before = hits(b)
            assert (await b.lookup(d.ino, "f")).ino == first.ino
            assert (await b.getattr(f.ino)).mode & 0o777 == 0o644
            assert hits(b) >= before + 2  # no round trip for either

            await a.chmod(f"/mdl-{os.getpid()}/f", 0o600)  # calls b's lock back first
            assert b.mdt.md_locks is not None
            assert b.mdt.md_locks.cache.stats["callbacks"] >= 1
            assert (await b.getattr(f.ino)).mode & 0o777 == 0o600
            await a.rename(f"/mdl-{os.getpid()}/f", f"/mdl-{os.getpid()}/g")
            try:
                await b.lookup(d.ino, "f")
                raise AssertionError("b still sees the old name")
            except NotFound:
                pass
            assert (await b.lookup(d.ino, "g")).ino == f.ino
            names = [e[0] for e in await b.entries(d.ino)]
            before = hits(b)
            assert [e[0] for e in await b.entries(d.ino)] == names == ["g"]
            assert hits(b) > before  # the listing was kept
            await a.mkdir(f"/mdl-{os.getpid()}/sub")
            assert sorted(e[0] for e in await b.entries(d.ino)) == ["g", "sub"]
            f2 = await a.open(f"/mdl-{os.getpid()}/g", os.O_WRONLY)
            await f2.write(b"x" * 5000, 0)
            await f2.close()
            assert (await b.getattr(f.ino)).size == 5000

    asyncio.run(go())


def test_a_client_without_locks_sees_the_same(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir) as plain:
            f = await a.create(f"/mdl-plain-{os.getpid()}", 0o644)
            await a.getattr(f.ino)
            await plain.chmod(f"/mdl-plain-{os.getpid()}", 0o640)
            assert (await a.getattr(f.ino)).mode & 0o777 == 0o640
            assert plain.mdt.md_locks is None

    asyncio.run(go())


def test_a_name_is_kept_under_its_inodes_lookup_lock_and_goes_with_the_name(
        cluster: LocalCluster) -> None:
    """Names kept by a path walk: a change in the directory (another create) leaves the name
    of what is in it alone, a rename or unlink of that name is seen at once, and the
    creator's stat of what it made needs no round trip (its create's intent)."""
    async def go() -> None:
        top = f"/mdn-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b, \
                Client.from_cluster_dir(cluster.dir) as plain:
            await a.mkdir(top)
            await a.mkdir(f"{top}/d")
            made = await a.create(f"{top}/d/f", 0o640)
            before = hits(a)
            assert (await a.stat(f"{top}/d/f")).ino == made.ino  # kept from the create
            assert hits(a) > before
            assert (await b.stat(f"{top}/d/f")).ino == made.ino  # walked once
            for i in range(3):
                await a.create(f"{top}/d/other{i}")  # calls back b's lock on d itself
                before = hits(b)
                assert (await b.stat(f"{top}/d/f")).mode & 0o777 == 0o640
                assert hits(b) > before  # every name and attribute on the way was kept
            await a.rename(f"{top}/d/f", f"{top}/d/g")
            with pytest.raises(NotFound):
                await b.stat(f"{top}/d/f")
            assert (await b.stat(f"{top}/d/g")).ino == made.ino
            await plain.rename(f"{top}/d", f"{top}/e")  # a client that keeps nothing
            with pytest.raises(NotFound):
                await b.stat(f"{top}/d/g")
            with pytest.raises(NotFound):
                await a.lstat(f"{top}/d")
            assert (await b.stat(f"{top}/e/g")).ino == made.ino
            await plain.unlink(f"{top}/e/g")
            with pytest.raises(NotFound):
                await b.stat(f"{top}/e/g")
            await plain.symlink("e", f"{top}/link")  # through a symlink: the MDT resolves it
            await a.create(f"{top}/e/h")
            assert (await b.stat(f"{top}/link/h")).type == "f"
            assert (await b.lstat(f"{top}/link")).type == "l"

    asyncio.run(go())


def test_an_absent_name_is_answered_here_until_another_client_makes_it(
        cluster: LocalCluster) -> None:
    async def go() -> None:
        top = f"/mda-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(top)
            for _ in range(2):
                with pytest.raises(NotFound):
                    await b.lookup(d.ino, "later")
                with pytest.raises(NotFound):
                    await b.stat(f"{top}/later")  # walks to the directory once
            sent = b.mdt.requests_sent
            with pytest.raises(NotFound):
                await b.stat(f"{top}/later")  # no round trip: the absence is kept
            assert b.mdt.requests_sent == sent
            made = await a.create(f"{top}/later")  # calls b's lock on the directory back
            assert (await b.stat(f"{top}/later")).ino == made.ino
            await a.unlink(f"{top}/later")
            with pytest.raises(NotFound):
                await b.stat(f"{top}/later")

    asyncio.run(go())


def test_a_listing_brings_its_entries_attributes_under_their_locks(
        cluster: LocalCluster) -> None:
    """readdirplus with locks (statahead): after one listing every entry's stat is answered
    here, and a change to one of them is seen at once."""
    async def go() -> None:
        top = f"/mdr-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(top)
            made = {f"f{i}": (await a.create(f"{top}/f{i}", 0o600 + i)).ino for i in range(5)}
            await a.mkdir(f"{top}/sub")
            listed = await b.entries(d.ino)
            assert sorted(n for n, _i, _t in listed) == [*sorted(made), "sub"]
            sent = b.mdt.requests_sent
            for name, ino in made.items():
                assert (await b.getattr(ino)).mode & 0o777 == 0o600 + int(name[1:])
            assert b.mdt.requests_sent == sent  # every attribute came with the listing
            await a.chmod(f"{top}/f3", 0o644)
            assert (await b.getattr(made["f3"])).mode & 0o777 == 0o644
            await a.unlink(f"{top}/f4")
            with pytest.raises(NotFound):
                await b.stat(f"{top}/f4")

    asyncio.run(go())


def test_a_file_is_kept_under_one_lock_a_directory_under_two(cluster: LocalCluster) -> None:
    """A file's attributes and name come under one lock with both bits (so a tree fits the
    LRU with one lock a file); a directory's name has a lock of its own, which outlives the
    changes to its entries."""
    async def go() -> None:
        top = f"/md1-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            await a.mkdir(top)
            f = await a.create(f"{top}/f")
            d = await a.mkdir(f"{top}/d")
            for c in (a, b):  # made with an intent (a), or looked up (b)
                await c.stat(f"{top}/f")
                await c.stat(f"{top}/d")
                md = c.mdt.md_locks
                assert md is not None
                on = {}
                for lk in md.cache.held():
                    on.setdefault(lk.resource[1], []).append(lk.policy)
                assert on[f.ino] == [Bits.UPDATE | Bits.LOOKUP], on[f.ino]
                assert sorted(on[d.ino]) == [Bits.LOOKUP, Bits.UPDATE], on[d.ino]
            await a.chmod(f"{top}/f", 0o600)  # calls back b's one lock on f: name and all
            assert (await b.stat(f"{top}/f")).mode & 0o777 == 0o600
            await a.rename(f"{top}/f", f"{top}/g")
            with pytest.raises(NotFound):
                await b.stat(f"{top}/f")

    asyncio.run(go())


def test_dot_dot_is_its_directorys_parent_whatever_else_is_kept(
        cluster: LocalCluster) -> None:
    """A directory's ".." comes from its own attributes (the MDT touches a directory it
    moves), never from the names kept in it. Session 19: a readdir on the mount failed with
    ENOENT after a failover (`git add` then added nothing, and said nothing): the listing
    kept under the directory's lock has no "..", so a lookup of ".." that the cache could
    not answer by name was answered "absent"; and ".." kept by name under the parent's
    LOOKUP lock outlived a move of the directory (the parent loses no name)."""
    async def go() -> None:
        top = f"/dotdot-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(top)
            sub = await a.mkdir(f"{top}/a")
            b_dir = await a.mkdir(f"{top}/a/b")
            other = await a.mkdir(f"{top}/x")
            assert (await b.lookup(b_dir.ino, "..")).ino == sub.ino
            assert (await b.lookup(b_dir.ino, ".")).ino == b_dir.ino
            await b.entries(b_dir.ino)  # the listing, kept: it has no ".."
            # a's name goes (a's LOOKUP lock with it), b's entries stay as they are
            await a.rename(f"{top}/a", f"{top}/a2")
            assert (await b.lookup(b_dir.ino, "..")).ino == sub.ino
            # b moves: its ".." is x now, although a keeps all its names
            await a.rename(f"{top}/a2/b", f"{top}/x/b")
            assert (await b.lookup(b_dir.ino, "..")).ino == other.ino
            assert (await b.lookup(other.ino, "..")).ino == d.ino
            assert (await b.lookup(1, "..")).ino == 1  # the root is its own parent

    asyncio.run(go())


def test_a_setattr_brings_its_lock_back_and_the_other_client_still_sees_it(
        cluster: LocalCluster) -> None:
    """A setattr gives this client's lock on the inode up (early cancel) and asks for it
    back with its reply: tar's utimens, chown and chmod of each file then need no getattr
    between them. Another client's kept attributes are called back all the same."""
    async def go() -> None:
        path = f"/setattr-lock-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            f = await a.create(path, 0o644)
            assert (await b.getattr(f.ino)).mode & 0o777 == 0o644
            for mode in (0o600, 0o640):
                await a.chmod(path, mode)
                before = misses(a)
                assert (await a.getattr(f.ino)).mode & 0o777 == mode
                assert misses(a) == before  # kept with the setattr's reply
                assert (await b.getattr(f.ino)).mode & 0o777 == mode
            await a.utime(path, 1_600_000_000.0, 1_600_000_000.0)
            assert (await b.getattr(f.ino)).mtime == 1_600_000_000.0
            before = misses(a)
            assert (await a.getattr(f.ino)).mtime == 1_600_000_000.0
            assert misses(a) == before

    asyncio.run(go())


def test_a_clients_own_open_and_close_for_writing_leave_its_lock_and_call_back_others(
        cluster: LocalCluster) -> None:
    """Who writes a file changes only what *other* clients keep of it (`writers`): the
    writer's own lock stays through its open and close. Its callback, which came before,
    waited on the kernel's lock of the directory whenever an unlink in it followed the close
    (git's index.lock: every other `git status` on a mount took 0.5 s longer)."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            path = f"/own-writer-{os.getpid()}"
            ino = (await a.create(path, 0o644)).ino
            await a.getattr(ino)
            md = a.mdt.md_locks
            assert md is not None
            held = md.attr_lock(ino)
            assert held is not None
            for _ in range(2):
                f = await a.open(path, os.O_WRONLY)
                await f.close()
            assert md.attr_lock(ino) is held and md.cache.stats["callbacks"] == 0
            # another client's attributes are marked `writers` while a writes
            await b.getattr(ino)
            bmd = b.mdt.md_locks
            assert bmd is not None and bmd.attr_lock(ino) is not None
            f = await a.open(path, os.O_WRONLY)
            assert bmd.cache.stats["callbacks"] == 1 and bmd.attr_lock(ino) is None
            assert (await b.getattr(ino)).size == 0
            await f.close()
            assert bmd.cache.stats["callbacks"] == 2
def test_creates_keep_what_is_known_of_their_directory_and_see_anothers_at_once(
        cluster: LocalCluster) -> None:
    """A create gives this client's lock on its directory up and gets one back with its
    reply: where nothing else changed the directory meanwhile, the listing and the names
    known absent stay (an untar's next lookup is answered here); another client's create
    in between is seen, never hidden by what was kept."""
    async def go() -> None:
        top = f"/keep-dir-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(top)
            assert await a.entries(d.ino) == []  # a new directory is known empty
            for n in range(3):
                await a.create(f"{top}/f{n}", 0o644)
            before = misses(a)
            assert [e[0] for e in await a.entries(d.ino)] == ["f0", "f1", "f2"]
            with pytest.raises(NotFound):
                await a.lookup(d.ino, "f3")
            assert misses(a) == before  # the listing, kept through three creates
            await b.create(f"{top}/g", 0o644)  # calls a's lock back
            await a.create(f"{top}/f3", 0o644)
            assert sorted(e[0] for e in await a.entries(d.ino)) == ["f0", "f1", "f2",
                                                                    "f3", "g"]
            assert (await a.lookup(d.ino, "g")).ino == (await b.lookup(d.ino, "g")).ino
            # the creates raced: whichever came first, each sees the other's
            await asyncio.gather(a.create(f"{top}/r1", 0o644), b.create(f"{top}/r2", 0o644))
            for c in (a, b):
                assert {"r1", "r2"} <= {e[0] for e in await c.entries(d.ino)}
                assert (await c.lookup(d.ino, "r2")).ino == (await b.lookup(d.ino, "r2")).ino

    asyncio.run(go())


def test_unlinks_keep_the_names_left_and_see_anothers_at_once(cluster: LocalCluster) -> None:
    """An unlink or rmdir by (directory, name), as the mount sends them, keeps what is known
    of the directory where nothing else changed it: the names left are answered here and
    the gone one is known absent; another client's change in between is seen."""
    async def go() -> None:
        top = f"/unname-{os.getpid()}"
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            d = await a.mkdir(top)
            for n in range(4):
                await a.create(f"{top}/f{n}", 0o644)
            await a.mkdir(f"{top}/sub")
            for name, op in (("f0", "unlink"), ("sub", "rmdir"), ("f1", "unlink")):
                await unname_call(a.mdt, op, {"parent": d.ino, "name": name})
            before = misses(a)
            assert (await a.lookup(d.ino, "f2")).ino > 0
            for gone in ("f0", "f1", "sub"):
                with pytest.raises(NotFound):
                    await a.lookup(d.ino, gone)
            assert misses(a) == before  # all answered from what was kept
            await b.create(f"{top}/g", 0o644)  # calls a's lock back
            await unname_call(a.mdt, "unlink", {"parent": d.ino, "name": "f2"})
            assert (await a.lookup(d.ino, "g")).ino == (await b.lookup(d.ino, "g")).ino
            assert sorted(e[0] for e in await a.entries(d.ino)) == ["f3", "g"]
            await asyncio.gather(unname_call(a.mdt, "unlink", {"parent": d.ino, "name": "f3"}),
                                 b.create(f"{top}/h", 0o644))
            for c in (a, b):
                assert sorted(e[0] for e in await c.entries(d.ino)) == ["g", "h"]
                assert (await c.lookup(d.ino, "h")).ino == (await b.lookup(d.ino, "h")).ino

    asyncio.run(go())


def test_setattrs_by_path_give_their_own_lock_back_and_are_never_called_back(
        cluster: LocalCluster) -> None:
    """The library's chmod, chown and utime name a path: each takes back the lock it gave
    up (early cancel) with the name it was kept under, so the next one finds the inode in
    the cache and gives its lock up with the request again. Before, the name went with the
    first, the next could not give the lock back, and the MDT called this client's own lock
    back for each: a callback and a cancel, slower than no locks at all."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a, \
                Client.from_cluster_dir(cluster.dir, locks=True) as b:
            path = f"/sapath-{os.getpid()}"
            await a.create(path, 0o644)
            md = a.mdt.md_locks
            assert md is not None
            before = md.cache.stats["callbacks"]
            for i in range(5):
                await a.chmod(path, 0o600 if i % 2 else 0o640)
                await a.utime(path, 1_000_000 + i, 2_000_000 + i)
            assert md.cache.stats["callbacks"] == before
            # a file whose name is not kept here (opened, written and closed): its
            # setattrs ask for no lock they could not give back
            other = f"{path}-opened"
            await (await a.open(other, os.O_CREAT | os.O_WRONLY)).close()
            before = md.cache.stats["callbacks"]
            for i in range(3):
                await a.chmod(other, 0o600 if i % 2 else 0o640)
            assert md.cache.stats["callbacks"] == before
            assert (await b.stat(other)).mode & 0o777 == 0o640
            st = await b.stat(path)  # and what it set is what another client sees
            assert st.mode & 0o777 == 0o640 and st.mtime == 2_000_004
            assert (await a.stat(path)).mode & 0o777 == 0o640

    asyncio.run(go())


def test_a_create_by_open_gives_back_the_directorys_lock_with_it(cluster: LocalCluster) -> None:
    """The library's open(O_CREAT) of a path changes the directory it creates in: this
    client's lock on that directory goes with the request (early cancel), not called back
    by the MDT after it (a callback and a cancel more, for the first create in each
    directory this client had listed or made)."""
    async def go() -> None:
        async with Client.from_cluster_dir(cluster.dir, locks=True) as a:
            d = f"/ocreat-{os.getpid()}"
            await a.mkdir(d)  # known here, and known empty, under its locks
            md = a.mdt.md_locks
            assert md is not None
            before = md.cache.stats["callbacks"]
            for i in range(3):
                await (await a.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY)).close()
            assert md.cache.stats["callbacks"] == before
            assert sorted(e[0] for e in await a.entries((await a.stat(d)).ino)) == \
                ["f0", "f1", "f2"]

    asyncio.run(go())
