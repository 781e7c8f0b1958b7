"""The client's metadata cache under locks (client/md_locks.py), against the rules of its
docstring: kept under a lock, dropped by its callback, a callback that overtakes its grant,
replies from before a reset, the LRU's cancels sent in the background."""

from __future__ import annotations

import asyncio
import os

from shoal.client.md_locks import MetadataLocks


class Server:
    """Where the cancels go (the MDT import's call, in a client)."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    async def cancel(self, handles: list[int]) -> None:
        self.cancelled += handles


def attrs(ino: int, **kw: object) -> dict[str, object]:
    return {"ino": ino, "mode": 0o100644, **kw}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_kept_under_its_lock_until_called_back() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel)
    dropped: list[int] = []
    md.on_drop.append(lambda ino, kept, handle: dropped.append(ino))
    md.learn(md.generation, attrs(5, lock=100))
    assert md.attrs(5) == attrs(5, lock=100)
    md.called_back(100)
    assert md.attrs(5) is None and dropped == [5]
    await settle()
    assert srv.cancelled == [100]


async def test_names_are_kept_under_the_directorys_lock() -> None:
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(7, lock=101, parent_lock=102), parent=2, name="f")
    assert md.child(2, "f") == 7 and md.attrs(7) is not None
    md.called_back(102)
    assert md.child(2, "f") is None and md.attrs(7) is not None


async def test_a_callback_that_overtakes_its_grant_gives_the_grant_back() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel)
    md.called_back(103)  # the server called it back before its reply came
    await settle()
    assert srv.cancelled == [103]  # answered at once: never left waiting on a reply
    md.learn(md.generation, attrs(8, lock=103))
    assert md.attrs(8) is None
    await settle()
    assert srv.cancelled == [103]


async def test_a_callback_for_a_lock_given_back_already_is_answered() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel)
    md.learn(md.generation, attrs(4, lock=110))
    assert md.cancels_for("setattr", {"ino": 4}) == [110]  # went with a change
    md.called_back(110)  # a server that has not seen that change yet
    await settle()
    assert srv.cancelled == [110]


async def test_replies_from_before_a_reset_are_not_kept() -> None:
    md = MetadataLocks(Server().cancel)
    gen = md.generation
    md.learn(gen, attrs(9, lock=104))
    md.reset()  # the import connected again: the server dropped them all
    assert md.attrs(9) is None
    md.learn(gen, attrs(9, lock=105))  # sent before the reset
    assert md.attrs(9) is None and len(md.cache) == 0


async def test_a_second_grant_on_a_held_inode_goes_back_and_the_lru_cancels() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel, limit=2)
    md.learn(md.generation, attrs(1, lock=11))
    md.learn(md.generation, attrs(1, lock=12, size=5))
    assert md.attrs(1)["size"] == 5 and len(md.cache) == 1
    md.learn(md.generation, attrs(2, lock=13))
    md.learn(md.generation, attrs(3, lock=14))  # past the limit: 1's lock goes
    await settle()
    assert sorted(srv.cancelled) == [11, 12]
    assert md.attrs(1) is None and md.attrs(3) is not None


async def test_a_change_gives_this_clients_own_locks_on_what_it_touches_back() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel)
    md.learn(md.generation, attrs(7, lock=201, parent_lock=202), parent=2, name="f")
    md.learn(md.generation, attrs(9, lock=203))
    # unlink of 2/f touches the directory and the file this client knows it names
    assert sorted(md.cancels_for("unlink", {"parent": 2, "name": "f"})) == [201, 202]
    assert md.attrs(7) is None and md.child(2, "f") is None
    assert md.cancels_for("open", {"ino": 9}) == []  # not a change to what is kept
    assert md.cancels_for("setattr", {"ino": 9, "mode": 0o600}) == [203]
    await settle()
    assert srv.cancelled == []  # they travel with the requests, not on their own


async def test_a_name_is_kept_under_the_lookup_lock_of_what_it_names() -> None:
    """Lustre's LOOKUP bit: a name outlives its directory's UPDATE lock (another create in
    the directory) and goes with its own inode's LOOKUP lock (the name went)."""
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(2, type="d", lock=200))  # the directory's own lock
    md.learn(md.generation, attrs(7, type="f", lock=201, name_lock=202), parent=2, name="f")
    assert md.child(2, "f") == 7 and md.kind(7) == "f"
    md.called_back(200)  # a create in directory 2
    assert md.child(2, "f") == 7 and md.attrs(7) is not None
    md.called_back(202)  # f was renamed or unlinked
    assert md.child(2, "f") is None and md.attrs(7) is not None


async def test_a_change_by_path_gives_back_what_the_cache_resolves_it_to() -> None:
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(3, type="d", lock=300, name_lock=301), parent=1, name="d")
    md.learn(md.generation, attrs(9, type="f", lock=302, name_lock=303), parent=3, name="f")
    assert md.resolve("/d/f") == (3, "f", 9)
    assert md.resolve("/d/g") == (3, "g", None) and md.resolve("/x/f") is None
    assert md.resolve("/d/../f") is None
    # a chmod by path: only f's attributes go
    assert md.cancels_for("setattr", {"path": "/d/f", "mode": 0o600}) == [302]
    md.learn(md.generation, attrs(9, type="f", lock=304))
    # an unlink by path: d's attributes and entries, f's attributes and f's name
    assert sorted(md.cancels_for("unlink", {"path": "/d/f"})) == [300, 303, 304]
    assert md.child(3, "f") is None and md.child(1, "d") == 3


async def test_an_absent_name_is_kept_under_the_directorys_lock() -> None:
    srv = Server()
    md = MetadataLocks(srv.cancel)
    md.learn_absent(md.generation, 2, "missing", 400)
    assert md.absent(2, "missing") and not md.absent(2, "other")
    md.learn_listing(md.generation, 2, None, [("f", 7, "f")],  # read under the lock held
                     md.attr_lock(2))
    assert md.absent(2, "other") and not md.absent(2, "f")  # the listing is whole
    assert md.keep_absent(2, "other")  # handed out: forgotten with the lock
    kept: list[set[str]] = []
    md.on_drop.append(lambda ino, data, handle: kept.append(set(data["absent"])))
    md.called_back(400)  # a create in directory 2
    assert not md.absent(2, "missing") and kept == [{"missing", "other"}]
    assert not md.keep_absent(2, "missing")
    gen = md.generation
    md.reset()
    md.learn_absent(gen, 2, "missing", 401)  # an answer from before the reset
    assert not md.absent(2, "missing")


async def test_dot_and_dot_dot_are_never_kept_as_names_nor_absent() -> None:
    """A whole listing has no "." or "..": they are not absent from it; and a lookup of
    ".." (made before the client asked the directory's attributes) binds no name."""
    md = MetadataLocks(Server().cancel)
    md.learn_listing(md.generation, 2, 400, [("f", 7, "f")])
    assert md.absent(2, "g") and not md.absent(2, "..") and not md.absent(2, ".")
    md.learn(md.generation, attrs(1, lock=401, name_lock=401, parent_lock=400),
             parent=2, name="..")
    assert md.child(2, "..") is None and md.attrs(1) is not None
    assert md.keep_absent(2, "g")


async def test_a_create_keeps_the_names_known_in_its_directory_if_it_was_the_only_change(
        ) -> None:
    """carry.detach gives the directory's lock up with the create, quietly; the reply's
    parent_before (the directory before the create) matching what was kept means nothing
    else changed it: the names, the listing and the absent names stay, with the new name,
    under the lock the reply brought, and the kernel is not told to forget them."""
    md = MetadataLocks(Server().cancel)
    dropped: list[int] = []
    md.on_drop.append(lambda ino, kept, handle: dropped.append(handle))
    md.learn(md.generation, attrs(2, type="d", ctime=5.0, nlink=2, lock=400))
    md.learn_listing(md.generation, 2, None, [("a", 7, "f")], md.attr_lock(2))
    md.learn_absent(md.generation, 2, "b", None)
    prior = md.carry.detach(2)
    assert prior is not None and prior[0] == 400 and md.listing(2) is None
    assert md.cancels_for("create", {"parent": 2, "name": "b"}) == []  # given up already
    reply = {"parent_lock": 401, "parent_before": [5.0, 2],
             "parent_attr": attrs(2, type="d", ctime=6.0, nlink=2)}
    md.carry.learn(md.generation, 2, reply, prior, "b", {"ino": 8, "type": "f"})
    assert md.listing(2) == [("a", 7, "f"), ("b", 8, "f")] and dropped == []
    assert md.child(2, "b") == 8 and not md.absent(2, "b") and md.absent(2, "c")
    assert md.attrs(2) is not None and md.attrs(2)["ctime"] == 6.0

    # an unlink: the name goes (known absent now), the listing with it, the rest stays
    prior = md.carry.detach(2)
    assert prior is not None
    reply = {"parent_lock": 404, "parent_before": [6.0, 2],
             "parent_attr": attrs(2, type="d", ctime=6.2, nlink=2)}
    md.carry.learn(md.generation, 2, reply, prior, "a", None)
    assert md.absent(2, "a") and md.child(2, "b") == 8 and md.listing(2) is None
    assert dropped == [] and md.attrs(2)["ctime"] == 6.2
    md.learn_listing(md.generation, 2, None, [("b", 8, "f")], md.attr_lock(2))
    dropped.clear()

    # another change came between: the prior knowledge goes, and the kernel forgets it
    prior = md.carry.detach(2)
    assert prior is not None
    reply = {"parent_lock": 402, "parent_before": [6.5, 2],
             "parent_attr": attrs(2, type="d", ctime=7.0, nlink=2)}
    md.carry.learn(md.generation, 2, reply, prior, "c", {"ino": 9, "type": "f"})
    assert md.listing(2) is None and md.child(2, "b") is None and dropped == [404]

    # called back while the create was on its way: forgotten at once, never kept on
    prior = md.carry.detach(2)
    assert prior is not None
    md.called_back(402)
    assert dropped == [404, 402]
    reply = {"parent_lock": 403, "parent_before": [7.0, 2],
             "parent_attr": attrs(2, type="d", ctime=8.0, nlink=2)}
    md.carry.learn(md.generation, 2, reply, prior, "d", {"ino": 10, "type": "f"})
    assert md.listing(2) is None


async def test_an_rmdir_gives_back_the_locks_of_the_directory_it_removes() -> None:
    """The directory removed is known only through its parent's listing (a listing brings
    no LOOKUP lock for a directory), and the parent's lock is given up first (carry.detach):
    the removed directory's own lock must still go with the request, or the MDT calls it
    back while the kernel holds that directory for the rmdir (bench smallfiles' rm -rf
    then spent SETTLE_WAIT, 0.5 s, on every directory)."""
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(2, type="d", ctime=5.0, nlink=3, lock=400))
    md.learn_listing(md.generation, 2, None, [("d", 7, "d")], md.attr_lock(2))
    md.learn(md.generation, attrs(7, type="d", lock=401))  # a getattr of it, or its listing
    assert md.named(2, "d") is None and md.child(2, "d") == 7
    prior = md.carry.detach(2)
    assert prior is not None and prior[0] == 400
    assert md.cancels_for("rmdir", {"parent": 2, "name": "d"}) == [401]


async def test_an_open_that_creates_or_truncates_gives_its_own_locks_back() -> None:
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(2, type="d", lock=500))
    md.learn(md.generation, attrs(8, type="f", lock=501, name_lock=502), parent=2, name="f")
    assert md.cancels_for("open", {"ino": 8, "flags": os.O_RDONLY}) == []
    assert md.cancels_for("open", {"parent": 2, "name": "g",
                                   "flags": os.O_WRONLY | os.O_CREAT}) == [500]
    assert md.cancels_for("open", {"ino": 8, "flags": os.O_WRONLY | os.O_TRUNC}) == [501]
    assert md.child(2, "f") == 8  # its name stays: nothing unnamed it
    md.learn(md.generation, attrs(2, type="d", lock=503, name_lock=504), parent=1, name="d")
    assert md.cancels_for("open", {"path": "/d/new", "flags": os.O_CREAT}) == [503]


async def test_after_a_failover_what_is_kept_waits_for_the_lock_replay() -> None:
    """Held over a failover: nothing served until the new server answered the replay; the
    locks it granted take their new handles, the others go with what they kept, and one
    called back before the answer was read goes too (its cancel already on its way)."""
    srv = Server()
    md = MetadataLocks(srv.cancel)
    dropped: list[int] = []
    md.on_drop.append(lambda ino, kept, handle: dropped.append(ino))
    for ino, h in ((5, 200), (6, 201), (7, 202)):
        md.learn(md.generation, attrs(ino, lock=h, version=ino * 10, ctime=1.5),
                 parent=2, name=f"f{ino}")
    md.learn(md.generation, attrs(9, lock=203, name_lock=203, version=1, ctime=2.0),
             parent=2, name="both")  # a file's one lock with both bits
    told: list[int] = []
    md.on_suspend.append(lambda ino, kept, handle: told.append(handle))
    md.suspend()
    assert not md.ready and md.attrs(5) is not None  # kept, but the namespace waits
    assert sorted(told) == [200, 201, 202, 203]  # the kernel must ask again
    waiter = asyncio.ensure_future(md.usable())
    await settle()
    assert not waiter.done()
    wanted = {w["h"]: w for w in md.replayable()}
    assert set(wanted) == {200, 201, 202, 203}
    assert wanted[200] == {"h": 200, "ino": 5, "bits": 2, "version": 50, "ctime": 1.5}
    assert wanted[203]["bits"] == 3 and wanted[203]["names"] == [[2, "both"]]
    md.called_back(301)  # the new server called 201's new lock back already
    md.replayed([[200, 300], [201, 301], [203, 303], "junk"])
    await settle()
    assert waiter.done() and md.ready
    assert md.attrs(5) is not None and md.attrs(6) is None and md.attrs(7) is None
    assert md.child(2, "both") == 9 and md.attrs(9) is not None
    assert sorted(dropped) == [6, 7]
    assert srv.cancelled == [301]  # once: the others the new server never held
    md.called_back(300)  # the new handle is the one the server calls back
    assert md.attrs(5) is None


async def test_a_listing_is_kept_only_under_the_lock_its_first_page_came_under() -> None:
    """A listing of several pages: if the lock granted with the first page was called
    back before the last came, or the lock it was read under went (and another came with
    a later reply), the pages may straddle a change: the listing is not kept."""
    md = MetadataLocks(Server().cancel)
    md.called_back(500)  # the callback overtook the grant (the later pages' replies)
    md.learn_listing(md.generation, 2, 500, [("f", 7, "f")])
    assert md.listing(2) is None
    md.learn(md.generation, attrs(2, lock=501))
    before = md.attr_lock(2)
    md.called_back(501)  # a change in directory 2 while its pages were read
    md.learn(md.generation, attrs(2, lock=502))  # a getattr after the change
    md.learn_listing(md.generation, 2, None, [("f", 7, "f")], before)
    assert md.listing(2) is None
    now = md.attr_lock(2)
    md.learn_listing(md.generation, 2, None, [("g", 8, "f")], now)  # read under 502 only
    assert md.listing(2) == [("g", 8, "f")]


async def test_an_own_change_spares_the_names_it_sets_unless_it_fails() -> None:
    """The early cancel of a create drops the directory's lock with what it kept, the new
    name's absence among it; the kernel sets that name from the reply, so the hooks see it
    spared while the lock goes; if the change fails, they are told to forget it after all."""
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(2, lock=600, type="d"))
    md.learn_absent(md.generation, 2, "new", 600)
    seen: list[frozenset[tuple[int, str]]] = []
    md.on_drop.append(lambda ino, data, handle: seen.append(md.spared))
    unspared: list[list[tuple[int, str]]] = []
    md.on_unspared.append(unspared.append)
    args = {"parent": 2, "name": "new", "mode": 0o644}
    assert md.cancels_for("create", args) == [600]
    assert seen == [frozenset({(2, "new")})] and md.spared == frozenset()
    md.unspare("create", args)
    assert unspared == [[(2, "new")]]
    md.learn(md.generation, attrs(7, lock=601))
    md.cancels_for("setattr", {"ino": 7, "mode": 0o600})  # names nothing: spares nothing
    assert seen[-1] == frozenset()


async def test_a_name_is_its_childs_own_only_under_the_childs_lookup_lock() -> None:
    """`named` answers through a child's own LOOKUP lock only, never the directory's: what
    the kernel may keep when the directory's lock goes, or is suspended by a failover."""
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(2, lock=600, type="d"))
    md.learn_listing(md.generation, 2, None, [("f", 7, "f"), ("g", 8, "f")],
                     md.attr_lock(2))
    assert md.child(2, "f") == 7 and md.named(2, "f") is None
    md.learn(md.generation, attrs(8, lock=601, name_lock=601), parent=2, name="g")
    assert md.named(2, "g") == 8


async def test_a_setattr_asks_back_the_names_its_lock_gave_up_and_keeps_those_confirmed(
        ) -> None:
    """A file's name and attributes under one lock: a setattr's early cancel gives both
    up, spares the names while it runs, and keeps again under the new lock those the MDT
    confirmed; the others are forgotten."""
    md = MetadataLocks(Server().cancel)
    md.learn(md.generation, attrs(7, lock=700, name_lock=700), parent=2, name="f")
    md.learn(md.generation, attrs(7, lock=700, name_lock=700), parent=3, name="hard")
    names = md.combined_names(7)
    assert names == [(2, "f"), (3, "hard")]
    seen: list[frozenset[tuple[int, str]]] = []
    md.on_drop.append(lambda ino, data, handle: seen.append(md.spared))
    forgotten: list[list[tuple[int, str]]] = []
    md.on_unspared.append(forgotten.append)
    args = {"ino": 7, "mode": 0o600, "names": [list(n) for n in names]}
    assert md.cancels_for("setattr", args) == [700]
    assert seen == [frozenset(names)]
    gen = md.generation
    md.learn(gen, attrs(7, lock=701, name_lock=701))
    md.rebind(gen, 7, 701, [(2, "f")])  # (3, "hard") was renamed meanwhile
    md.forget_names([(3, "hard")])
    assert md.named(2, "f") == 7 and md.named(3, "hard") is None
    assert forgotten == [[(3, "hard")]]
    md.rebind(gen, 7, 699, [(3, "hard")])  # not the lock that came: forgotten
    assert md.named(3, "hard") is None and forgotten[-1] == [(3, "hard")]


async def test_a_callback_for_an_own_change_is_told_apart_to_those_it_waits_for() -> None:
    """What a called-back lock covered is dropped either way, and the cancel waits for those
    who were handed it to forget it (`before_cancel`: the mount's kernel), told which of the
    handles were called back for this client's own change (they wait only a moment: the
    change may hold what they would wait for)."""
    srv = Server()
    md = MetadataLocks(srv.cancel)
    waited: list[list[int]] = []
    own: list[int] = []

    async def before(handles: list[int], mine: list[int]) -> None:
        waited.append(sorted(handles))
        own.extend(mine)

    md.before_cancel.append(before)
    dropped: list[int] = []
    md.on_drop.append(lambda ino, kept, handle: dropped.append(ino))
    for ino, lock in ((5, 100), (6, 101)):
        md.learn(md.generation, attrs(ino, lock=lock))
    md.called_back(100, own=True)
    md.called_back(101)
    await settle()
    assert sorted(dropped) == [5, 6] and sorted(srv.cancelled) == [100, 101]
    assert sorted(h for w in waited for h in w) == [100, 101] and own == [100]
