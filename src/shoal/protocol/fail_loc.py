"""Fault injection points, as Lustre's fail_loc (libcfs_fail.h), sans I/O.

A node (or a client) has one fail point at a time, set at run time: `fail_loc` is a code
naming what to break, or'ed with flags saying how often; `fail_val` is the N of those flags.
Shoal adds three settings Lustre packs into fail_val or into the code itself, so that one
point can say "drop the reply of every 10th write to OST0002": `fail_opc` (which operations,
a glob), `fail_target` (which targets, a glob) and `fail_ms` (how long a delay lasts).

This module only decides: node/faults.py and client/faults.py ask `check()` at the place a
request or reply passes and carry the verdict out (drop it, sleep, or let it pass), and the
node applies the commit barrier. No clocks, no sleeps, no sockets; the random draw for
FAIL_RAND comes in as an argument.

Counting follows Lustre's __cfs_fail_check_set(), with one difference: only requests that
match fail_opc and fail_target are counted (Lustre counts every check of the code).

    ONCE         fire once, then set FAILED (shown in fail_loc) and never again
    SKIP  N      let the first N pass, then fire every time (with ONCE: once)
    SOME  N      fire N times, then stop (ONCE|FAILED set after the N-th)
    RAND  N      fire with probability 1/N
    EVERY N      (Shoal) fire on every N-th match: the N-th, 2N-th, ... (deterministic)
    no flag      fire every time
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass

from shoal.errors import InvalidArgument

# Lustre's flag bits (libcfs/include/libcfs/libcfs_fail.h)
FAIL_ONCE = 0x80000000
FAILED = 0x40000000
FAIL_SKIP = 0x20000000
FAIL_SOME = 0x10000000
FAIL_RAND = 0x08000000
# Shoal's own: Lustre has no deterministic "every N-th"; 0x01000000 is unused there
FAIL_EVERY = 0x01000000
FAIL_MASK_LOC = 0x0000FFFF
_COUNTING = FAIL_SKIP | FAIL_SOME | FAIL_RAND | FAIL_EVERY
_FLAGS = FAIL_ONCE | FAILED | _COUNTING

DEFAULT_MS = 1000


class Code(enum.IntEnum):
    """What a fail point breaks. In Lustre's ptlrpc (0x5xx) and target (0x7xx) ranges."""

    NONE = 0
    DROP_REQ = 0x505  # the request is lost: a node never serves it, a client never sends it
    DROP_REP = 0x506  # the reply is lost: the request was served, its answer never arrives
    DELAY_REQ = 0x507  # the request is held fail_ms before it is served (node) or sent
    DELAY_REP = 0x508  # the reply is held fail_ms after the request was served (or arrived)
    NO_COMMIT = 0x720  # replay barrier: the node's matching targets stop committing


# the names an administrator may set, and what each means (docs/fault-injection.md and
# `shoal ctl` help)
CODE_HELP: dict[Code, str] = {
    Code.DROP_REQ: "drop a request (node: not served; client: not sent)",
    Code.DROP_REP: "drop a reply (node: served, no reply sent; client: reply discarded)",
    Code.DELAY_REQ: "delay a request by fail_ms (node: before serving; client: before sending)",
    Code.DELAY_REP: "delay a reply by fail_ms (node: after serving; client: after arrival)",
    Code.NO_COMMIT: "commit barrier: matching targets stop committing (node only)",
}

PARAMS = ("fail_loc", "fail_val", "fail_opc", "fail_target", "fail_ms")


class Site(enum.Enum):
    """Where a check is made: as a request passes, or as its reply passes."""

    REQUEST = "request"
    REPLY = "reply"


class Verdict(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0  # seconds, for DELAY

    @property
    def passes(self) -> bool:
        return self.verdict is Verdict.PASS


PASS = Decision(Verdict.PASS)

_SITE: dict[Code, tuple[Site, Verdict]] = {
    Code.DROP_REQ: (Site.REQUEST, Verdict.DROP),
    Code.DROP_REP: (Site.REPLY, Verdict.DROP),
    Code.DELAY_REQ: (Site.REQUEST, Verdict.DELAY),
    Code.DELAY_REP: (Site.REPLY, Verdict.DELAY),
}


def parse_int(name: str, value: str) -> int:
    """An integer as lctl takes it: decimal or 0x-hex."""
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise InvalidArgument(f"{name}={value!r}: not an integer") from None


@dataclass(slots=True)
class FailPoint:
    """One node's or one client's fail point: what is set and how often it has fired."""

    loc: int = 0  # code | flags; FAILED is or'ed in when a ONCE point has fired
    val: int = 0
    opc: str = "*"
    target: str = "*"
    ms: int = DEFAULT_MS
    count: int = 0  # matches counted by SKIP / SOME / EVERY (Lustre's cfs_fail_count)
    hits: int = 0  # times it fired since fail_loc was set

    @property
    def code(self) -> Code:
        return Code(self.loc & FAIL_MASK_LOC)

    @property
    def active(self) -> bool:
        """Whether anything can still fire (a spent ONCE point is not)."""
        return self.code is not Code.NONE and not self.spent

    @property
    def spent(self) -> bool:
        return self.loc & (FAIL_ONCE | FAILED) == FAIL_ONCE | FAILED

    # -- setting -------------------------------------------------------------------------
    def set(self, name: str, value: str) -> None:
        """One `set_param NAME=VALUE`; InvalidArgument, with nothing changed, if it is bad.

        Setting fail_loc restarts the counting; fail_loc=0 clears the point and every
        other setting back to its default, so the next point starts from a clean slate."""
        if name == "fail_loc":
            loc = parse_int(name, value) & ~FAILED  # a fresh point has not fired yet
            self._check_loc(loc)
            if loc == 0:
                self.loc, self.val, self.opc, self.target, self.ms = 0, 0, "*", "*", DEFAULT_MS
            self.loc, self.count, self.hits = loc, 0, 0
        elif name == "fail_val":
            val = parse_int(name, value)
            if val < 0:
                raise InvalidArgument(f"fail_val={value}: must not be negative")
            self.val, self.count = val, 0
        elif name in ("fail_opc", "fail_target"):
            glob = value.strip() or "*"
            setattr(self, name.removeprefix("fail_"), glob)
        elif name == "fail_ms":
            ms = parse_int(name, value)
            if ms < 0:
                raise InvalidArgument(f"fail_ms={value}: must not be negative")
            self.ms = ms
        else:
            raise InvalidArgument(f"{name}: not a fail point setting ({', '.join(PARAMS)})")

    @staticmethod
    def _check_loc(loc: int) -> None:
        if loc & ~(_FLAGS | FAIL_MASK_LOC):
            raise InvalidArgument(f"fail_loc={loc:#x}: unknown flag bits {loc & ~_FLAGS:#x}")
        try:
            code = Code(loc & FAIL_MASK_LOC)
        except ValueError:
            known = ", ".join(f"{c:#x}" for c in CODE_HELP)
            raise InvalidArgument(f"fail_loc={loc:#x}: unknown code "
                                  f"{loc & FAIL_MASK_LOC:#x} (known: {known})") from None
        counting = loc & _COUNTING
        if counting & (counting - 1):
            raise InvalidArgument(f"fail_loc={loc:#x}: SKIP, SOME, RAND and EVERY do not "
                                  "combine (as in Lustre)")
        if code is Code.NO_COMMIT and loc & _FLAGS:
            raise InvalidArgument(f"fail_loc={loc:#x}: the commit barrier takes no flags")

    # -- what the appliers ask -----------------------------------------------------------
    def matches(self, op: str, target: str) -> bool:
        return fnmatch.fnmatchcase(op, self.opc) and fnmatch.fnmatchcase(target, self.target)

    def check(self, site: Site, op: str, target: str, draw: float = 0.0) -> Decision:
        """A request (site REQUEST) or its reply (site REPLY) of `op` to `target` passes:
        drop it, delay it, or let it pass. Counts it if it matches. `draw` is a random
        number in [0, 1), used by FAIL_RAND only."""
        where = _SITE.get(self.code)
        if where is None or where[0] is not site or self.spent:
            return PASS
        if not self.matches(op, target):
            return PASS
        loc, val = self.loc, self.val
        if loc & FAIL_RAND and (val < 2 or draw * val >= 1.0):
            return PASS  # as Lustre: fail_val < 2 never fires at random
        if loc & FAIL_SKIP:
            self.count += 1
            if self.count <= val:
                return PASS
        if loc & FAIL_EVERY:
            self.count += 1
            if val > 1 and self.count % val:
                return PASS
        if loc & FAIL_SOME and (not loc & FAIL_ONCE or val <= 1):
            self.count += 1
            if self.count >= val:
                self.loc |= FAIL_ONCE  # this one fires, and it is the last
                self.count = 0
        if self.loc & FAIL_ONCE:
            self.loc |= FAILED
        self.hits += 1
        verdict = where[1]
        return Decision(verdict, self.ms / 1000.0 if verdict is Verdict.DELAY else 0.0)

    def barrier(self, target: str) -> bool:
        """Whether the commit barrier holds `target` now."""
        return self.code is Code.NO_COMMIT and fnmatch.fnmatchcase(target, self.target)

    def params(self) -> dict[str, str]:
        """The settings as get_param shows them (fail_loc in hex, FAILED included)."""
        return {"fail_loc": f"{self.loc:#x}", "fail_val": str(self.val),
                "fail_opc": self.opc, "fail_target": self.target, "fail_ms": str(self.ms),
                "fail_hits": str(self.hits)}

    def describe(self) -> str:
        if self.code is Code.NONE:
            return "no fail point"
        flags = [n for n, b in (("ONCE", FAIL_ONCE), ("FAILED", FAILED), ("SKIP", FAIL_SKIP),
                                ("SOME", FAIL_SOME), ("RAND", FAIL_RAND),
                                ("EVERY", FAIL_EVERY)) if self.loc & b]
        return (f"{self.code.name} {'|'.join(flags) or 'always'} val={self.val} "
                f"opc={self.opc} target={self.target} ms={self.ms}")


def request_target(op: str, target: str, args: dict[str, object]) -> str | None:
    """The target a request is about, for matching; None for a request no fail point may
    touch. A connect names its target in its arguments; every other "@node" operation
    (get_param, set_param, status, the agents' own calls) is never failed, so a fail point
    can always be cleared and never fakes a dead node to the failover agents."""
    if target != "@node":
        return target
    if op == "connect":
        return str(args.get("target", ""))
    return None
