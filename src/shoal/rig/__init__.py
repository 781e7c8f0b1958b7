"""`shoal rig`: a multi-host cluster on one machine made of network and mount namespaces.

See docs/rig.md. `Rig(dir)` is the API tests use; `shoal rig ...` (cli/rig_cmds.py) the CLI.
"""

from shoal.rig.netns import check_supported
from shoal.rig.rig import HostStatus, Rig
from shoal.rig.state import HostRecord, ProcRecord

__all__ = ["HostRecord", "HostStatus", "ProcRecord", "Rig", "check_supported"]
