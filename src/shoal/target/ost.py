"""The OST: an object storage target, serving numbered objects of bytes.

Objects are named by an integer `oid`. Data lives in one file per object (ost_files.py), the
per-object metadata (size, version, allocated blocks) in the `objects` table of target.db.
An object that was never written reads as empty; a write or punch creates it; holes read as
zeros.

Durability (DESIGN.md, "in-memory log"): a change goes into a pending log in memory
(ost_journal.py) and is answered; nothing touches the files until a commit. `_persist` swaps
the log out on the event loop, writes it to the files and fsyncs them in a worker thread,
then records the object rows and the batch's reply data in one SQLite transaction. A crash
loses exactly the uncommitted tail, which clients replay. Reads overlay the files with the
log being written and the fresh one, in that order, so acknowledged writes are always seen.

Threads: only `_persist`'s worker thread touches self.db after open; every request handler
runs on the event loop and works from in-memory state (`_attrs`, `_committed`) plus the
object files, which the worker only changes in ranges the in-flight log overlays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, ClassVar

from shoal.errors import InvalidArgument, IOFailure, ShoalError
from shoal.net.frame import HashedBulk
from shoal.net.writer import FileBulk
from shoal.target.base import CommitBatch, OpContext, OpResult, OpSpec, TargetService
from shoal.target.ost_args import (
    ROOT,
    oid_list,
    owner_of,
    uint_arg,
)
from shoal.target.ost_deferred import DeferredRead, deferrable, read_cached
from shoal.target.ost_digests import PieceDigests
from shoal.target.ost_files import (
    FdCache,
    Readahead,
    apply_log,
    make_objects_dir,
    object_path,
    read_plain,
    read_range,
)
from shoal.target.ost_journal import Destroy, PendingLog, Punch, Write, last_destroy, overlay
from shoal.target.ost_quota import Key, OstQuota, keys_of
from shoal.target.ost_quota_ops import OstQuotaOps
from shoal.target.ost_rows import OBJECTS_SCHEMA, UPSERT, ObjectAttrs, Row

log = logging.getLogger(__name__)

SEND_WAIT = 5.0  # longest a commit waits for reads being sent from the files it rewrites



class OST(OstQuotaOps, TargetService):
    kind = "OST"

    max_io: ClassVar[int] = 16 << 20  # largest read or write, as the frame's bulk limit
    max_object_size: ClassVar[int] = 1 << 48
    max_oids: ClassVar[int] = 4096  # per destroy/getattrs request

    def __init__(
        self,
        name: str,
        device: Path,
        *,
        fs: str,
        node: str = "",
        commit_interval: float = 1.0,
        index: int = 0,
    ) -> None:
        self.index = index
        self.objects_dir = Path(device) / "objects"
        self._attrs: dict[int, ObjectAttrs] = {}
        self._committed: dict[int, int] = {}  # oid -> size its file is valid up to
        self._log = PendingLog()  # new changes
        self._inflight = PendingLog()  # the log a commit is writing out (empty if none)
        self._fds = FdCache(self.objects_dir)
        self._readahead = Readahead()
        self._digests = PieceDigests()  # of the pieces written or read (ost_digests.py)
        self._sending: Counter[int] = Counter()  # oid -> reads being sent from its file
        self._sent = asyncio.Event()  # set each time one of those sends ends
        # large cold reads on worker threads (target/ost_deferred.py); a node turns it on, a
        # bare OST in a test answers every read on the spot
        self.deferred_reads = False
        self._commit_seq = 0  # commits begun; the objects the latest of them write:
        self._commits_begun: deque[tuple[int, frozenset[int]]] = deque(maxlen=64)
        self._total_size = 0
        self.bytes_read = 0  # what the node's metrics report (node/metrics.py)
        self.bytes_written = 0
        self.quota = OstQuota(name)
        super().__init__(name, device, fs=fs, node=node, commit_interval=commit_interval)

    # -- TargetService hooks -------------------------------------------------------------
    def _register_ops(self) -> None:
        self.ops["write"] = OpSpec(self._op_write, True)
        self.ops["punch"] = OpSpec(self._op_punch, True)
        self.ops["destroy"] = OpSpec(self._op_destroy, True, vbr=False, idempotent=True)
        self.ops["read"] = OpSpec(self._op_read, False)
        self.ops["getattr"] = OpSpec(self._op_getattr, False)
        self.ops["getattrs"] = OpSpec(self._op_getattrs, False)
        self.ops["statfs"] = OpSpec(self._op_statfs, False)
        self.ops["sync"] = OpSpec(self._op_sync, False)
        # from the MDT's owner log, with FLAG_SYNC: setting an owner twice is harmless
        self.ops["setowner"] = OpSpec(self._op_setowner, True, vbr=False, idempotent=True)
        self.ops["quota_usage"] = OpSpec(self._op_quota_usage, False)
        self.ops["quota_recount"] = OpSpec(self._op_quota_recount, False)

    def _format(self) -> None:
        self.db.execute(OBJECTS_SCHEMA)  # one statement: executescript would COMMIT
        OstQuota.prepare(self.db)
        self._set_info("index", self.index)
        make_objects_dir(self.objects_dir)

    def _after_open(self) -> None:
        if not self.objects_dir.is_dir():
            make_objects_dir(self.objects_dir)
        self.db.execute(OBJECTS_SCHEMA)
        OstQuota.prepare(self.db)
        self.quota.load(self.db)
        self._attrs.clear()
        self._committed.clear()
        self._log, self._inflight = PendingLog(), PendingLog()
        self._fds.close_all()
        self._digests.clear()
        self._total_size = 0
        for oid, size, version, blocks, uid, gid, projid, owned in self.db.execute(
                "SELECT oid, size, version, blocks, uid, gid, projid, owned FROM objects"):
            self._attrs[oid] = ObjectAttrs(size, version, blocks, (uid, gid, projid),
                                           bool(owned))
            self._committed[oid] = size
            self._total_size += size

    def dirty_bytes(self) -> int:
        return self._log.nbytes + self._inflight.nbytes

    def _close_db(self) -> None:
        self._fds.close_all()
        super()._close_db()

    def check_device(self) -> str | None:
        why = super().check_device()
        if why is not None:
            return why
        probe = self.objects_dir / ".health_probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            probe.unlink()
        except OSError as exc:
            return f"OST objects dir {self.objects_dir} not writable: {exc.strerror}"
        return None

    # -- commit --------------------------------------------------------------------------
    async def _persist(self, batch: CommitBatch) -> None:
        # batch.upto covers exactly what is in self._log now: swap before any await
        log, self._log = self._log, PendingLog()
        self._inflight = log
        qlog = self.quota.begin_commit()
        self._commit_seq += 1
        oids = frozenset(log.entries)
        self._commits_begun.append((self._commit_seq, oids))
        try:
            await self._sends_finished(oids)
        except asyncio.CancelledError:
            self._log.prepend(log)  # nothing written: all of it is pending again
            self._inflight = PendingLog()
            self.quota.commit_failed()
            raise
        rows: dict[int, Row | None] = {}
        for oid in log.entries:
            a = self._attrs.get(oid)
            rows[oid] = None if a is None else (a.size, a.version, a.owner, a.owned)
            if a is not None:  # an owner set while the commit waited above is written too
                qlog.keys.update(keys_of(a.owner))
        base = {oid: self._committed.get(oid, 0) for oid in log.entries}
        work = asyncio.ensure_future(asyncio.to_thread(self._write_out, log, base, rows, batch,
                                                       qlog.keys))
        cancelled = False
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # a thread cannot be stopped: let it finish, so the files and the
                # database are never used by two commits at once
                cancelled = True
            except (OSError, sqlite3.Error):
                pass  # raised again by work.result() below
        try:
            blocks, usage = work.result()
        except BaseException:
            # the files may be half written: keep it all pending, ahead of newer changes
            self._log.prepend(log)
            self._inflight = PendingLog()
            self.quota.commit_failed()
            raise
        self._inflight = PendingLog()
        self.quota.committed(usage)
        self._committed_done(log, rows, blocks)
        if cancelled:
            raise asyncio.CancelledError

    def _committed_done(self, log: PendingLog, rows: dict[int, Row | None],
                        blocks: dict[int, int | None]) -> None:
        for oid, row in rows.items():
            if row is None:
                self._committed.pop(oid, None)
            else:
                self._committed[oid] = row[0]
                a = self._attrs.get(oid)
                newer = self._log.get(oid)
                if a is not None and (newer is None or last_destroy(newer) < 0):
                    a.blocks = blocks.get(oid) or 0
            if last_destroy(log.entries[oid]) >= 0:
                self._fds.drop(oid)  # a read may have reopened the unlinked file

    def _write_out(self, log: PendingLog, base: dict[int, int], rows: dict[int, Row | None],
                   batch: CommitBatch,
                   keys: set[Key]) -> tuple[dict[int, int | None], dict[Key, int]]:
        """Worker thread: files first, then the rows that say how much of them is valid
        (and, by the triggers, the usage of their owners, read back for `keys`)."""
        blocks = apply_log(self.objects_dir, log, base)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for oid, row in rows.items():
                if row is None:
                    self.db.execute("DELETE FROM objects WHERE oid=?", (oid,))
                else:
                    self.db.execute(UPSERT, (oid, row[0], row[1], blocks.get(oid) or 0,
                                              *row[2], row[3]))
            self.write_reply_rows(batch)
            self.db.execute("COMMIT")
        except sqlite3.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return blocks, OstQuota.read_usage(self.db, keys)

    # -- modifying operations ------------------------------------------------------------
    def _op_write(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        oid = uint_arg(args, "oid")
        offset = uint_arg(args, "offset")
        if bulk is None:
            raise InvalidArgument("write without bulk data")
        if len(bulk) > self.max_io:
            raise InvalidArgument(f"write of {len(bulk)} bytes exceeds {self.max_io}")
        if offset + len(bulk) > self.max_object_size:
            raise ShoalError(f"write past {self.max_object_size} bytes", errno_name="EFBIG")
        if not isinstance(bulk, bytes) and type(bulk) is not HashedBulk:
            # the log outlives the request: a mutable buffer may change. A received bulk
            # (net/framing.py) never does while anything refers to it (BulkPool), so the
            # log keeps it as it is: copying every written byte once more cost the OSS a
            # tenth of a streaming write
            bulk = bytes(bulk)
        a = self._attrs.get(oid)
        ctx.touched(a.version if a is not None else 0)
        owner, owned, grows = self.write_owner(oid, a, offset, len(bulk), args)
        self.quota.check(owner, grows, ctx.replay)
        # only now: a replay refused above must not leave its digests behind
        self._digests.remember(oid, offset, len(bulk), getattr(bulk, "pieces", None))
        if a is None:
            a = self._attrs[oid] = ObjectAttrs(0, 0, 0, owner, owned)
        elif a.owner != owner or a.owned != owned:
            self.quota.changed(a.owner)
            a.owner, a.owned = owner, owned
        self.quota.changed(owner, grows)
        self.bytes_written += len(bulk)
        if bulk:
            self._log.add(oid, Write(offset, bulk))
            new_size = max(a.size, offset + len(bulk))
        else:
            # nothing to write, but the object exists now: a no-op punch records it
            self._log.add(oid, Punch(a.size))
            new_size = a.size
        self._total_size += new_size - a.size
        a.size, a.version = new_size, ctx.transno
        return {"size": new_size}, None

    def _op_punch(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        oid = uint_arg(args, "oid")
        size = uint_arg(args, "size", self.max_object_size)
        a = self._attrs.get(oid)
        ctx.touched(a.version if a is not None else 0)
        if a is None:
            a = self._attrs[oid] = ObjectAttrs(0, 0, 0, *owner_of(ROOT, False, args))
        self.quota.changed(a.owner)
        self._digests.forget(oid, min(size, a.size))
        self._log.add(oid, Punch(size))
        self._total_size += size - a.size
        a.size, a.version = size, ctx.transno
        return {"size": size}, None

    def _op_destroy(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        oids = oid_list(args, self.max_oids)
        n = 0
        for oid in oids:
            a = self._attrs.pop(oid, None)
            if a is None:
                continue  # never written, or already gone: destroying it again is fine
            ctx.touched(a.version)
            self.quota.changed(a.owner)
            self._log.add(oid, Destroy())
            self._total_size -= a.size
            self._fds.drop(oid)
            self._readahead.forget(oid)
            self._digests.forget(oid)
            n += 1
        return {"destroyed": n}, None

    # -- reading operations --------------------------------------------------------------
    def _op_read(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        oid = uint_arg(args, "oid")
        offset = uint_arg(args, "offset")
        length = uint_arg(args, "length", self.max_io)
        a = self._attrs.get(oid)
        size = a.size if a is not None else 0
        n = min(length, size - offset)
        reply = {"size": size}
        self.bytes_read += max(n, 0)
        if (self.deferred_reads and deferrable(n) and not self._inflight.get(oid)
                and not self._log.get(oid)):
            fd = self._fds.get(oid)
            digest = self._digests.digest(oid, offset, n) if fd is not None else None
            if digest is not None:
                return reply, self._file_bulk(oid, fd, offset, n, digest)  # type: ignore[arg-type]
            self._readahead.after_read(fd, oid, offset, n)
            cached = read_cached(fd, offset, n)
            if cached is not None:
                self._digests.remember(oid, offset, n, cached.pieces)
                return reply, cached
            seq = self._commit_seq

            def redo() -> bytes:
                a = self._attrs.get(oid)
                reply["size"] = size = a.size if a is not None else 0
                return self._read_or_fail(oid, offset, min(length, size - offset))

            return reply, DeferredRead(  # type: ignore[return-value]
                object_path(self.objects_dir, oid), offset, n,
                lambda: self._untouched_since(seq, oid), redo,
                lambda buf: self._digests.remember(oid, offset, n, buf.pieces))
        return reply, self._read_or_fail(oid, offset, n)

    def _file_bulk(self, oid: int, fd: int, offset: int, n: int, digest: bytes) -> FileBulk:
        """The read's bytes, sent from the file by the connection's writer (net/writer.py);
        until they are, no commit writes this object (_sends_finished)."""
        # no posix_fadvise(WILLNEED) here, nor ost_files.Readahead: both would allocate the
        # pages and queue their reads on the event loop. The duplicate shares the open file,
        # so sendfile on the writer's thread drives the kernel's own readahead for a
        # sequential reader (cold streams read at 1.4-1.8 GB/s here, against 1.1-1.3 with
        # WILLNEED on the loop)
        bulk = FileBulk(os.dup(fd), offset, n, digest)
        self.stats["read_sendfile"] += 1
        self._sending[oid] += 1

        def sent() -> None:
            self._sending[oid] -= 1
            if not self._sending[oid]:
                del self._sending[oid]
            self._sent.set()

        bulk.on_done.append(sent)
        return bulk

    async def _sends_finished(self, oids: frozenset[int]) -> None:
        """A read being sent straight from an object's file must see the bytes its digest
        was computed from: a commit that rewrites the object waits for it (new reads of the
        object meanwhile overlay the log being committed, as they do during the commit)."""
        give_up = time.monotonic() + SEND_WAIT
        while not oids.isdisjoint(self._sending):
            self._sent.clear()
            try:
                await asyncio.wait_for(self._sent.wait(), give_up - time.monotonic())
            except TimeoutError:
                log.warning("%s: reads still being sent after %g s; committing anyway",
                            self.name, SEND_WAIT)
                return

    def _untouched_since(self, seq: int, oid: int) -> bool:
        """No commit begun after commit `seq` has written object oid (as far as we know)."""
        if self._commit_seq == seq:
            return True
        begun = self._commits_begun
        if not begun or begun[0][0] > seq + 1:
            return False  # forgotten: assume the worst
        return not any(s > seq and oid in oids for s, oids in begun)

    def _read_or_fail(self, oid: int, offset: int, n: int) -> bytes:
        try:
            return self._read(oid, offset, n) if n > 0 else b""
        except OSError as exc:
            raise IOFailure(f"read object {oid:#x}: {exc.strerror}") from None

    def _read(self, oid: int, offset: int, n: int) -> bytes:
        pending = [e for e in (self._inflight.get(oid), self._log.get(oid)) if e]
        if not pending:
            fd = self._fds.get(oid)
            data = read_plain(fd, n, offset)
            self._readahead.after_read(fd, oid, offset, n)
            return data
        buf = bytearray(n)
        # past the committed size the file holds nothing valid: holes, or what a commit
        # in flight is writing, which the in-flight log overlays anyway
        valid = min(n, self._committed.get(oid, 0) - offset)
        if valid > 0:
            read_range(self._fds.get(oid), buf, offset, valid)
        for entries in pending:
            overlay(entries, buf, offset)
        return bytes(buf)

    def _attrs_of(self, oid: int) -> dict[str, int]:
        a = self._attrs.get(oid)
        if a is None:
            return {"size": 0, "version": 0, "blocks": 0}
        pending = self._log.pending_bytes(oid) + self._inflight.pending_bytes(oid)
        # not yet allocated on the device: count what the pending writes will take at most
        return {"size": a.size, "version": a.version, "blocks": a.blocks + (pending + 511) // 512}

    def _op_getattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        return self._attrs_of(uint_arg(args, "oid")), None

    def _op_getattrs(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        return {"attrs": {oid: self._attrs_of(oid) for oid in oid_list(args, self.max_oids)}}, None

    def _op_statfs(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        try:
            st = os.statvfs(self.device)
        except OSError as exc:
            raise IOFailure(f"statfs {self.device}: {exc.strerror}") from None
        return {
            "bsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree,
            "bavail": st.f_bavail, "files": st.f_files, "ffree": st.f_ffree,
            "objects": len(self._attrs), "used_bytes": self._total_size,
        }, None

    def _op_sync(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ctx.force_commit = True  # the node holds the reply until everything is committed
        return {}, None
