"""What a target's request handler is given and gives back: the operation table entry
(OpSpec), the request's context (OpContext) with its VBR bookkeeping, and the handler's result.
Split from target/base.py, which runs the handlers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import VersionMismatch

MAX_PRE_VERSIONS = 4  # Lustre's reply carries the versions of up to 4 objects

@dataclass(slots=True)
class OpContext:
    """What a handler learns about the request it serves, and tells back."""

    client: str
    xid: int
    transno: int  # the transno this change gets (0 for a read-only request)
    replay: bool = False
    pre_versions: list[int] = field(default_factory=list)
    force_commit: bool = False  # fsync/sync: the reply waits for the commit
    # VBR: on a replay, the versions the original execution saw, in touch order
    expected: list[int] | None = None
    touches: int = 0

    def touched(self, version: int) -> None:
        """Record an object's version before this change (VBR); at most 4 are kept.

        On a replay the version must be the one the original execution saw at the same
        position: otherwise something this change depends on was lost (or changed by a
        transaction that ran in between), and redoing it would build on the wrong state.
        Handlers call this before they change anything, and the MDT runs each change in a
        savepoint, so raising here leaves nothing behind."""
        i = self.touches
        self.touches = i + 1
        exp = self.expected
        if exp is not None and i < MAX_PRE_VERSIONS and (i >= len(exp) or exp[i] != version):
            want = f"{exp[i]:#x}" if i < len(exp) else "no object"
            raise VersionMismatch(
                f"replay of transno {self.transno:#x}: object {i} is at version {version:#x}, "
                f"the original change saw {want}")
        if len(self.pre_versions) < MAX_PRE_VERSIONS:
            self.pre_versions.append(version)

    def check_all_touched(self) -> None:
        """A replay that touched fewer objects than the original took another path."""
        exp = self.expected
        if exp is not None and self.touches < min(len(exp), MAX_PRE_VERSIONS):
            raise VersionMismatch(
                f"replay of transno {self.transno:#x} changed {self.touches} objects, "
                f"the original changed {len(exp)}")


# handler(ctx, args, bulk) -> (reply data, reply bulk)
OpResult = tuple[dict[str, Any], bytes | None]


@dataclass(frozen=True, slots=True)
class OpSpec:
    handler: Callable[[OpContext, dict[str, Any], bytes | None], OpResult]
    modifying: bool
    # False for a change whose result does not depend on the objects' versions (destroying
    # objects: gone is gone), which a replay then redoes without checking them
    vbr: bool = True
    # True for a change that may be done twice (destroying objects): a sender may ask for
    # it with FLAG_SYNC, without replay state
    idempotent: bool = False


def _version_checked(handler: Callable[[OpContext, dict[str, Any], bytes | None], OpResult],
                     ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
    result = handler(ctx, args, bulk)
    ctx.check_all_touched()  # inside the subclass's savepoint, like the handler
    return result
