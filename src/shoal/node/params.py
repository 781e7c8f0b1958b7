"""The node's parameter tree, named as Lustre's `lctl get_param` names it.

    health_check                         healthy | NOT HEALTHY
    mgs.MGS.stats, mdt.<target>.stats, obdfilter.<target>.stats
    <type>.<target>.{last_committed,last_transno,epoch,num_exports,exports,commit_interval}
    net.<node>.stats                     frames, rejected frames by reason, connections
    node.<node>.{loop_lag,max_loop_lag,targets}
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable

from shoal.target.base import TargetService

OBD_TYPE = {"MGT": "mgs", "MDT": "mdt", "OST": "obdfilter"}


def obd_name(svc: TargetService) -> str:
    return f"{OBD_TYPE[svc.kind]}.{svc.name}"


def format_stats(svc: TargetService) -> str:
    lines = [f"{'snapshot_time':<26}{time.time():.6f} secs.nsecs"]
    for op, count in sorted(svc.stats.items()):
        if op.startswith("err_") or op == "reconstructed":
            lines.append(f"{op:<26}{count} samples [events]")
            continue
        total_us = svc.service_time.get(op, 0.0) * 1e6
        lines.append(f"{op:<26}{count} samples [usec] {total_us / max(count, 1):.0f} avg")
    lines.append(f"{'commits':<26}{svc.commits} samples [commits]")
    return "\n".join(lines)


def service_params(svc: TargetService) -> dict[str, Callable[[], str]]:
    base = obd_name(svc)
    return {
        f"{base}.stats": lambda: format_stats(svc),
        f"{base}.last_committed": lambda: str(svc.last_committed),
        f"{base}.last_transno": lambda: str(svc.last_transno),
        f"{base}.epoch": lambda: str(svc.epoch),
        f"{base}.commit_interval": lambda: str(svc.commit_interval),
        f"{base}.num_exports": lambda: str(len(svc.known_clients)),
        f"{base}.exports": lambda: "\n".join(svc.known_clients),
        f"{base}.uuid": lambda: svc.name,
    }


def match(params: dict[str, Callable[[], str]], pattern: str) -> dict[str, str]:
    return {name: fn() for name, fn in sorted(params.items()) if fnmatch.fnmatchcase(name, pattern)}
