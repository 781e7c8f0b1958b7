"""The MGT: the management target that hands the file system's configuration to clients.

Clients ask the MGS for the configuration log first (Lustre's `llog` of the file system): the
targets, their failover NIDs in order, and striping defaults. The location table that
imperative recovery pushes (which node serves a target now, in which epoch) lives here too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shoal.errors import NotFound
from shoal.target.base import CommitBatch, OpContext, OpResult, OpSpec, TargetService


class MGT(TargetService):
    kind = "MGT"

    def __init__(self, name: str, device: Path, *, fs: str, node: str = "",
                 commit_interval: float = 1.0, config: dict[str, Any] | None = None,
                 configs: dict[str, dict[str, Any]] | None = None) -> None:
        # fs name -> its client configuration: one MGS may serve several file systems
        self.configs: dict[str, dict[str, Any]] = dict(configs or {})
        if config is not None:
            self.configs[config["fs"]] = config
        super().__init__(name, device, fs=fs, node=node, commit_interval=commit_interval)

    def _register_ops(self) -> None:
        self.ops["get_config"] = OpSpec(self._get_config, modifying=False)

    def _format(self) -> None:
        pass

    async def _persist(self, batch: CommitBatch) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.write_reply_rows(batch)
        self.db.execute("COMMIT")

    def _get_config(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        fs = args.get("fs") or self.fs
        if fs not in self.configs:
            raise NotFound(f"MGS knows no file system {fs!r} (it serves "
                           f"{', '.join(sorted(self.configs)) or 'none'})")
        return copy.deepcopy(self.configs[fs]), None
