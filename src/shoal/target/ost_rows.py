"""An OST's per-object metadata: the `objects` table of target.db and the record kept in
memory for each object (target/ost.py)."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.target.ost_args import ROOT, Owner

OBJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    oid INTEGER PRIMARY KEY, size INTEGER NOT NULL, version INTEGER NOT NULL,
    blocks INTEGER NOT NULL, uid INTEGER NOT NULL DEFAULT 0, gid INTEGER NOT NULL DEFAULT 0,
    projid INTEGER NOT NULL DEFAULT 0, owned INTEGER NOT NULL DEFAULT 0);
"""
# a row written by a commit: the owner changes by setowner, never by a later write
UPSERT = ("INSERT INTO objects (oid, size, version, blocks, uid, gid, projid, owned) "
           "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (oid) DO UPDATE SET size=excluded.size, "
           "version=excluded.version, blocks=excluded.blocks, uid=excluded.uid, "
           "gid=excluded.gid, projid=excluded.projid, owned=excluded.owned")


@dataclass(slots=True)
class ObjectAttrs:
    size: int  # pending changes included
    version: int  # transno of the last change (VBR)
    blocks: int = 0  # 512-byte blocks allocated on the device as of the last commit
    owner: Owner = ROOT  # (uid, gid, projid), whose quotas its blocks count in
    owned: bool = False  # the owner is known (named by a write or a setowner)


Row = tuple[int, int, Owner, bool]  # what a commit writes of an object


__all__ = ["OBJECTS_SCHEMA", "UPSERT", "ObjectAttrs", "Row"]
