"""The fence driver interface: make sure a node is off before anyone touches its devices.

Rules every driver follows (the failover agent relies on them, DESIGN.md invariant 2):
- `fence(node)` powers the node off AND verifies that it is off (`begin` splits the two). It returns a FenceResult
  only for a verified success (ok=True). Every failure, a timeout or a result that cannot be
  verified included, raises FenceFailed carrying the failed FenceResult (ok=False): a caller
  that forgets to look at the result cannot mistake a failed fence for a good one.
- a node that is already off is a success (fencing is idempotent);
- `status(node)` answers "on", "off" or "unknown" and never raises for a node it cannot
  reach: "unknown" is the honest answer then;
- nothing here is imported lazily and nothing reads a Shoal mount (invariant 3): fencing is
  on the recovery path.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from shoal.errors import ShoalError

PowerState = Literal["on", "off", "unknown"]
POWER_STATES: tuple[str, ...] = ("on", "off", "unknown")


@dataclass(frozen=True, slots=True)
class FenceResult:
    node: str
    ok: bool
    method: str  # the driver's name, e.g. "local", "manual", "fence-agent:fence_ipmilan"
    detail: str  # what happened, for the event log; never holds a password
    seconds: float  # wall time the fence took


class FenceFailed(ShoalError):
    """The node could not be fenced, or its being off could not be verified.

    Takeover must not proceed: the node may still be writing to the shared device."""

    errno_name = "EIO"

    def __init__(self, message: str = "", *, result: FenceResult | None = None) -> None:
        super().__init__(message or (result.detail if result else ""))
        self.result = result


class FenceDriver(abc.ABC):
    """One way of fencing nodes (see the module docstring for the rules)."""

    name: str = "fence"

    @abc.abstractmethod
    async def fence(self, node: str, instance: str = "") -> FenceResult:
        """Power `node` off and verify it is off; raises FenceFailed otherwise. `instance`:
        the boot id of the node's process that must not run on (the one that held the
        lease); a driver that can tell a node's processes apart leaves a newer one alone,
        one that powers a machine off cannot, and ignores it."""

    async def begin(self, node: str, instance: str = ""
                    ) -> tuple[FenceResult, Callable[[], Awaitable[FenceResult]]]:
        """The fence in two halves: power `node` off now (raises FenceFailed if that fails)
        and return what that did with the check that it is off, to be awaited before its
        devices are mounted; meanwhile the taker may win its owner keys and claim the MMP
        block, which refuses a node still writing. A driver with no separate check does
        all of it here."""
        result = await self.fence(node, instance)

        async def verified() -> FenceResult:
            return result

        return result, verified

    @abc.abstractmethod
    async def status(self, node: str) -> PowerState:
        """"on", "off" or "unknown"."""

    # -- helpers for drivers ---------------------------------------------------------------
    def _ok(self, node: str, started: float, detail: str) -> FenceResult:
        return FenceResult(node, True, self.name, detail, time.monotonic() - started)

    def _failed(self, node: str, started: float, detail: str) -> FenceFailed:
        result = FenceResult(node, False, self.name, detail, time.monotonic() - started)
        return FenceFailed(f"fencing {node} ({self.name}) failed: {detail}", result=result)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
