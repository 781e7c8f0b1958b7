"""Quota rules: limits, grace and the master's grants of space to its slaves (sans-I/O).

Lustre's design (QMT/QSD): one quota master holds every limit; each target that allocates
(an OST for blocks, the MDT for inodes) is a slave that enforces on its own, within a grant
the master gave it, so that a write asks the master nothing until its grant runs out.

- Usage is counted per id: a user (`u`), a group (`g`) and a project (`p`) id each.
  Blocks in KiB (Lustre's `kbytes`), inodes in files.
- A limit of 0 is none. Past the hard limit nothing more is allocated; past the soft limit,
  the grace period starts, and when it ends the soft limit holds as a hard one, until usage
  falls back under it.
- A slave asks for its grant to be *set*, never raised by an amount: asked twice (a lost
  reply, a failover of either side), the same ask gives the same grant, and no grant is
  lost or counted twice. A grant never falls below what the slave has in use.
- The master grants a slave what it needs plus headroom (`qunit`), so that the next writes
  ask nothing; the headroom shrinks as the limit nears, so that space held by one slave
  and unused holds back the others by little. A slave's periodic ask (for what it uses)
  gives back headroom it holds past that.

Replays are never refused: what a client was told is done stays done, even past a limit
lowered since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QTYPES = ("u", "g", "p")  # user, group, project, in the order of an owner triple
QTYPE_NAMES = {"u": "usr", "g": "grp", "p": "prj"}  # as lfs quota prints them
DEFAULT_GRACE = 7 * 24 * 3600.0  # Lustre's default grace period: one week
QUNIT_MIN = {"b": 256, "i": 32}  # KiB, inodes: the least headroom a grant carries
QUNIT_MAX = {"b": 1 << 20, "i": 4096}  # the most (1 GiB: a stream asks a few times a GiB)
MAX_ASKS = 4096  # asks in one quota_acquire (a slave sends more in several)
QUOTA_NOTIFY = "quota_notify"  # to an OST: a limit was set, learn it from the master now
MAX_LIMIT = (1 << 62) - 1  # KiB or inodes: what msgpack and SQLite hold with room


def check_qtype(qtype: object) -> str:
    if qtype not in QTYPES:
        raise ValueError(f"quota type must be one of {', '.join(QTYPES)}, not {qtype!r}")
    return str(qtype)


def check_id(qid: object) -> int:
    if type(qid) is not int or not 0 <= qid < 1 << 32:
        raise ValueError(f"a quota id is a 32-bit unsigned integer, not {qid!r}")
    return qid


@dataclass(slots=True)
class Limits:
    """One id's limits (0: none) and when its grace ends (0: not running)."""

    bsoft: int = 0  # KiB
    bhard: int = 0
    isoft: int = 0  # inodes
    ihard: int = 0
    btime: float = 0.0  # grace end of the block soft limit, on the master's clock
    itime: float = 0.0

    @property
    def limited(self) -> bool:
        return bool(self.bsoft or self.bhard or self.isoft or self.ihard)

    def soft(self, res: str) -> int:
        return self.bsoft if res == "b" else self.isoft

    def hard(self, res: str) -> int:
        return self.bhard if res == "b" else self.ihard

    def grace_end(self, res: str) -> float:
        return self.btime if res == "b" else self.itime

    def set_grace_end(self, res: str, t: float) -> None:
        if res == "b":
            self.btime = t
        else:
            self.itime = t

def cap(limits: Limits, res: str, now: float) -> float:
    """The most of `res` this id may have in use now: the hard limit, or the soft one once
    its grace has run out; infinity when neither holds."""
    out = float(limits.hard(res) or math.inf)
    soft, end = limits.soft(res), limits.grace_end(res)
    if soft and end and now >= end:
        out = min(out, soft)
    return out


def grace_after(limits: Limits, res: str, used: int, now: float, grace: float) -> float:
    """The grace end once `used` is in use: it starts when usage passes the soft limit,
    keeps running while it stays past, and stops when usage is back under."""
    soft, end = limits.soft(res), limits.grace_end(res)
    if not soft or used <= soft:
        return 0.0
    return end or now + grace


def qunit(limits: Limits, res: str, slaves: int, left: float) -> int:
    """The headroom a grant carries: a quarter of what the limit leaves (`left`, past what
    every slave has in use) spread over the slaves, within QUNIT_MIN..QUNIT_MAX. It
    shrinks as the limit nears, so that what the other slaves hold unused (they come back
    to used + this, each time they sync) holds back the one that writes by less and less."""
    if math.isinf(left):
        return QUNIT_MIN[res]
    share = int(left) // (4 * max(1, slaves))
    return max(QUNIT_MIN[res], min(QUNIT_MAX[res], share))


def grant(limits: Limits, res: str, *, need: int, used: int, others: int, others_used: int,
          slaves: int, now: float) -> int:
    """The grant a slave gets when it needs `need` in total and has `used` in use, while the
    other slaves hold `others` and use `others_used`: `need` plus headroom, within what the
    limit leaves, and never less than `used` (what is allocated stays allocated)."""
    top = cap(limits, res, now)
    room = top - others
    want = need + qunit(limits, res, slaves, top - others_used - used)
    if room >= want:
        return want
    return max(used, int(max(room, 0)))


def resync(limits: Limits, res: str, *, need: int, used: int, current: int, others: int,
           others_used: int, slaves: int, now: float) -> int:
    """A slave's periodic ask: its grant stays as it is when it covers `need` with no more
    than a headroom to spare (a stream is not held up by it, and the master learns what is
    used, for the grace period); past that, what is spare goes back; short of `need`, it
    is asked for as any grant."""
    unit = qunit(limits, res, slaves, cap(limits, res, now) - others_used - used)
    if need <= current <= need + unit:
        return current
    if current > need + unit:
        return need + unit
    return grant(limits, res, need=need, used=used, others=others, others_used=others_used,
                 slaves=slaves, now=now)


def fits(granted: int, used: int, more: int) -> bool:
    """Whether `more` may be allocated on a slave holding `granted` with `used` in use."""
    return used + more <= granted


def kib(blocks512: int) -> int:
    """512-byte blocks in KiB, rounded up (what `lfs quota` shows of one target)."""
    return (blocks512 + 1) // 2


def grace_left(end: float, now: float) -> str:
    """A grace period as lfs quota prints it (its __sec2str): `-` when none runs, `none`
    when it ran out, else the time left in weeks, days, hours, minutes and seconds, units
    that are zero left out (`1w`, `6d23h59m59s`)."""
    if not end:
        return "-"
    left = int(end - now)
    if left <= 0:
        return "none"
    out = ""
    for mult, unit in ((604800, "w"), (86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        c, left = divmod(left, mult)
        if c:
            out += f"{c}{unit}"
    return out


__all__ = ["DEFAULT_GRACE", "Limits", "QTYPES", "QUOTA_NOTIFY", "QTYPE_NAMES", "cap", "check_id",
           "check_qtype", "fits", "grace_after", "grace_left", "grant", "kib", "qunit", "resync"]
