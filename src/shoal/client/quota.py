"""Quotas from a client: set and read limits, usage per target, projects, the recount.

Limits live with the quota master (MDT0). Usage is each target's own: the MDT counts
inodes, each OST blocks; a report adds them up, as `lfs quota` does. After setting a limit
the client tells every OST (`quota_notify`), which learns it from the master before it
answers, so that the next write already meets the limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from shoal.client.client import Client
from shoal.client.md_calls import setattr_call
from shoal.errors import InvalidArgument, ShoalError
from shoal.protocol import quota as q


@dataclass
class TargetUsage:
    target: str
    kbytes: int
    inodes: int
    granted: int  # KiB the master granted this OST (-1: none, or not an OST)


@dataclass
class QuotaReport:
    """One id's limits and usage, summed over the targets and per target."""

    qtype: str
    id: int
    limits: q.Limits
    bgrace: float
    igrace: float
    now: float  # the master's clock, which the grace ends are on
    targets: list[TargetUsage] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # targets that did not answer

    @property
    def kbytes(self) -> int:
        return sum(t.kbytes for t in self.targets)

    @property
    def inodes(self) -> int:
        return sum(t.inodes for t in self.targets)

    def over(self, res: str) -> bool:
        """Past a limit (lfs quota marks the figure with `*`)."""
        used = self.kbytes if res == "b" else self.inodes
        soft, hard = self.limits.soft(res), self.limits.hard(res)
        return bool((hard and used >= hard) or (soft and used > soft))

    def grace(self, res: str) -> str:
        used = self.kbytes if res == "b" else self.inodes
        soft = self.limits.soft(res)
        if not soft or used <= soft:
            return "-"
        return q.grace_left(self.limits.grace_end(res), self.now)


def _key(qtype: str, qid: int) -> tuple[str, int]:
    try:
        return q.check_qtype(qtype), q.check_id(qid)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


async def notify_osts(c: Client) -> list[str]:
    """Every OST learns the limits from the master now; the names of those that did not."""
    names = sorted(c.osts)
    replies = await asyncio.gather(*(c.osts[i].call(q.QUOTA_NOTIFY, {}) for i in names),
                                   return_exceptions=True)
    return [c.osts[i].target for i, r in zip(names, replies, strict=True)
            if isinstance(r, BaseException) or not r.data.get("synced")]


async def set_quota(c: Client, qtype: str, qid: int, *, bsoft: int | None = None,
                    bhard: int | None = None, isoft: int | None = None,
                    ihard: int | None = None) -> list[str]:
    """Set an id's limits (KiB, inodes; None: unchanged, 0: none). Returns the OSTs that
    could not be told yet (they learn it within their next sync)."""
    t, i = _key(qtype, qid)
    args: dict[str, Any] = {"qtype": t, "id": i}
    for k, v in (("bsoft", bsoft), ("bhard", bhard), ("isoft", isoft), ("ihard", ihard)):
        if v is not None:
            args[k] = v
    await c.mdt.call("quota_set", args)
    return await notify_osts(c)


async def set_grace(c: Client, qtype: str, bgrace: int, igrace: int) -> None:
    """The grace periods (seconds) of a quota type's block and inode soft limits."""
    t, _ = _key(qtype, 1)
    await c.mdt.call("quota_set", {"qtype": t, "grace": [bgrace, igrace]})


async def get_quota(c: Client, qtype: str, qid: int) -> QuotaReport:
    t, i = _key(qtype, qid)
    lim = (await c.mdt.call("quota_get", {"qtype": t, "id": i})).data
    report = QuotaReport(t, i, q.Limits(lim["bsoft"], lim["bhard"], lim["isoft"],
                                        lim["ihard"], lim["btime"], lim["itime"]),
                         lim["bgrace"], lim["igrace"], lim["now"])
    imps = [c.mdt, *(c.osts[k] for k in sorted(c.osts))]
    replies = await asyncio.gather(*(imp.call("quota_usage", {"qtype": t, "id": i})
                                     for imp in imps), return_exceptions=True)
    for imp, r in zip(imps, replies, strict=True):
        if isinstance(r, ShoalError):
            report.unreachable.append(imp.target)
        elif isinstance(r, BaseException):
            raise r
        else:
            report.targets.append(TargetUsage(imp.target, int(r.data["kbytes"]),
                                              int(r.data["inodes"]),
                                              int(r.data.get("granted", -1))))
    return report


async def set_project(c: Client, path: str, projid: int, *, inherit: bool = True) -> None:
    """Give `path` project `projid`; a directory with `inherit` passes it on to what is
    created in it (lfs project -p ID -s). A symbolic link gets it itself, as lstat shows."""
    _key("p", projid)
    args: dict[str, Any] = {"path": path, "projid": projid, "follow": False}
    if (await c.lstat(path)).is_dir:
        args["projinherit"] = inherit
    await setattr_call(c.mdt, args)


async def check(c: Client) -> dict[str, list[list[Any]]]:
    """Each target's usage recounted from what it holds: {target: [[qtype, id, counted,
    recounted], ...]} for the ids whose figures differ (none when all is well). Every
    target commits first, so that the recount sees what its usage counts."""
    await c.sync_all()
    imps = [c.mdt, *(c.osts[k] for k in sorted(c.osts))]
    replies = await asyncio.gather(*(imp.call("quota_recount", {}) for imp in imps),
                                   return_exceptions=True)
    out: dict[str, list[list[Any]]] = {}
    for imp, r in zip(imps, replies, strict=True):
        if isinstance(r, ShoalError):
            raise type(r)(f"{imp.target}: {r}", errno_name=r.errno_name) from r
        if isinstance(r, BaseException):
            raise r
        out[imp.target] = r.data["drift"]
    return out


__all__ = ["QuotaReport", "TargetUsage", "check", "get_quota", "notify_osts", "set_grace",
           "set_project", "set_quota"]
