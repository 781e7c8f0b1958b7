"""`shoal rig`: a multi-host cluster on one machine made of network and mount namespaces.

See docs/rig.md. `Rig(dir)` is the API tests use; `shoal rig ...` (cli/rig_cmds.py) the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.rig.netns import check_supported
    from shoal.rig.rig import HostStatus, Rig
    from shoal.rig.state import HostRecord, ProcRecord

__all__ = ["HostRecord", "HostStatus", "ProcRecord", "Rig", "check_supported"]

# Loaded when first asked for: the rig's fence agent imports shoal.rig.fence_agent, and runs
# once per fence on the failover's critical path; it must not pay for all of the rig.
_WHERE = {"check_supported": "netns", "HostStatus": "rig", "Rig": "rig",
          "HostRecord": "state", "ProcRecord": "state"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'shoal.rig' has no attribute {name!r}")
    return getattr(importlib.import_module(f"shoal.rig.{_WHERE[name]}"), name)
