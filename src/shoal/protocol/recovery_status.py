"""A recovery window's `recovery_status`, sans I/O: the numbers (ServerRecovery.status in
protocol/recovery.py fills them in) and their text in Lustre's format, which tools parse.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecoveryStatus:
    """The numbers behind `recovery_status` (Lustre's lprocfs_recovery_status_seq_show)."""
    status: str  # INACTIVE, RECOVERING or COMPLETE
    recovery_start: int
    recovery_duration: int
    time_remaining: int
    max_clients: int
    connected: int
    req_replay: int
    completed: int
    evicted: int
    replayed: int
    queued: int
    next_transno: int
    vbr: bool
    ir: bool


def render_status(s: RecoveryStatus) -> str:
    """`recovery_status` in Lustre's format (tools parse it: keep names, order, spelling)."""
    if s.status == "INACTIVE":
        return "status: INACTIVE"
    if s.status == "COMPLETE":
        return "\n".join([
            "status: COMPLETE",
            f"recovery_start: {s.recovery_start}",
            f"recovery_duration: {s.recovery_duration}",
            f"completed_clients: {s.max_clients - s.evicted}/{s.max_clients}",
            f"replayed_requests: {s.replayed}",
            f"last_transno: {s.next_transno - 1}",
            f"VBR: {'ENABLED' if s.vbr else 'DISABLED'}",
            f"IR: {'ENABLED' if s.ir else 'DISABLED'}",
        ])
    return "\n".join([
        "status: RECOVERING",
        f"recovery_start: {s.recovery_start}",
        f"time_remaining: {s.time_remaining}",
        f"connected_clients: {s.connected}/{s.max_clients}",
        f"req_replay_clients: {s.req_replay}",
        "lock_repay_clients: 0",  # sic: Lustre's spelling, which tools parse
        f"completed_clients: {s.completed}",
        f"evicted_clients: {s.evicted}",
        f"replayed_requests: {s.replayed}",
        f"queued_requests: {s.queued}",
        f"next_transno: {s.next_transno}",
    ])
