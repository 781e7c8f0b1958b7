"""Shared by the import state machine tests (test_import_state*.py): a fake clock, requests,
and a connect through the public methods."""

from __future__ import annotations

from shoal.protocol.import_state import ImportState as S
from shoal.protocol.import_state import ImportStateMachine
from shoal.protocol.messages import Request

NIDS = ["10.0.0.1:988", "10.0.0.2:988", "10.0.0.3:988"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self, dt: float = 1.0) -> float:
        self.t += dt
        return self.t


def req(xid: int, op: str = "mkdir") -> Request:
    return Request(xid, op, "T", {"path": f"/{xid}"})


def connect(sm: ImportStateMachine, now: float, *, epoch: int = 7, recovering: bool = False,
            last_committed: int = 0) -> S:
    sm.connect_start(now)
    return sm.connected(now, epoch=epoch, last_committed=last_committed, recovering=recovering)

