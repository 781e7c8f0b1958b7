"""The OST's quota requests: owners set from the MDT's owner log, whose quota a write counts
in (node/quota_slave.py asks grants by it), usage and a recount (target/ost_quota.py keeps
the figures). Part of the OST (target/ost.py), apart for its size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from shoal.errors import InvalidArgument
from shoal.protocol import messages as m
from shoal.target.base import OpContext, OpResult
from shoal.target.ost_args import ROOT, Owner, owner_of, owners_arg, qkey_arg, uint_arg
from shoal.target.ost_journal import PendingLog, Punch
from shoal.target.ost_quota import OstQuota, growth
from shoal.target.ost_rows import ObjectAttrs


class OstQuotaOps:
    """The OST's state these requests read and change (set up by OST)."""

    _attrs: dict[int, ObjectAttrs]
    _committed: dict[int, int]  # oid -> committed size
    _log: PendingLog
    quota: OstQuota
    objects_dir: Path
    max_oids: ClassVar[int]

    def _op_setowner(self, ctx: OpContext, args: dict[str, Any],
                     bulk: bytes | None) -> OpResult:
        """The owners of objects changed (a chown or a new project of their file, from the
        MDT's owner log). An object this OST does not have (not written yet, or destroyed)
        is left alone: recorded, it would come back. The version stays: a client's replay
        of an earlier write must still find its own."""
        parsed = owners_arg(args, self.max_oids)
        changed = 0
        for oid, owner in parsed:
            a = self._attrs.get(oid)
            if a is None:
                # not written yet, or destroyed (its file went): nothing to own. A first
                # write brings the owner its client knows
                continue
            a.owned = True
            if a.owner != owner:
                self.quota.changed(a.owner)
                a.owner = owner
                self.quota.changed(owner)
                changed += 1
            self._log.add(oid, Punch(a.size))  # the commit writes its row
        return {"changed": changed}, None

    def quota_need(self, req: m.Request) -> tuple[Owner, int]:
        """Whose quota a write counts in and the blocks it may add (node/quota_slave.py
        asks for grants by it); (ROOT, 0) for arguments the write itself will refuse."""
        try:
            oid = uint_arg(req.args, "oid")
            offset = uint_arg(req.args, "offset")
            n = len(req.bulk) if req.bulk is not None else 0
            owner, _owned, grows = self.write_owner(oid, self._attrs.get(oid), offset, n,
                                                    req.args)
        except InvalidArgument:
            return ROOT, 0
        return owner, grows

    def write_owner(self, oid: int, a: ObjectAttrs | None, offset: int, n: int,
                    args: dict[str, Any]) -> tuple[Owner, bool, int]:
        """Whose quota a write of n bytes at offset counts in, whether the object is owned
        then, and the blocks it may add."""
        owner, owned = (owner_of(a.owner, a.owned, args) if a is not None
                        else owner_of(ROOT, False, args))
        return owner, owned, growth(self._allocated(oid, a), offset, n)

    def _allocated(self, oid: int, a: ObjectAttrs | None) -> int:
        """How much of the object is known to be allocated on the device: its committed
        size, when its committed blocks cover every page of it (no holes); else 0."""
        size = self._committed.get(oid, 0)
        if a is None or a.blocks * 512 < -(-size // 4096) * 4096:
            return 0
        return size

    def _op_quota_usage(self, ctx: OpContext, args: dict[str, Any],
                        bulk: bytes | None) -> OpResult:
        key = qkey_arg(args)
        return {"kbytes": self.quota.use_kib(key), "inodes": 0,
                "granted": self.quota.granted.get(key, -1)}, None

    def _op_quota_recount(self, ctx: OpContext, args: dict[str, Any],
                          bulk: bytes | None) -> OpResult:
        """Usage against the object files' blocks now (a node does the stats on a worker
        thread: node/quota_slave.py)."""
        real = self.quota.count_files(self.committed_owners(), self.objects_dir)
        return {"drift": self.quota.drift(real)}, None

    def committed_owners(self) -> list[tuple[int, Owner]]:
        """(oid, owner) of every object with committed data: what a recount stats. Done
        after a commit with nothing pending (quota_check syncs first), the owners are
        those the database has."""
        return [(oid, self._attrs[oid].owner) for oid in self._committed if oid in self._attrs]

