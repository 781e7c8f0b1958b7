"""A device's identity: the label `shoal format` writes (Lustre's mkfs.lustre), and the check a
node makes before it touches a device.

A node serves a target only from a device whose label names that file system and that target
(invariant 5): a missing device, an unformatted one or another target's is refused with the
reason, before anything is written to it, and nothing formats a device on the fly. So a typo
in a backup's device path makes the takeover fail loudly instead of serving a new, empty
target in place of the one with the data.

The label lives in the device's target.db (`info` table: label, fs, kind, index, uuid), read
here through a read-only connection so that checking a device can never create or change it.
"""

from __future__ import annotations

import sqlite3
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import NoDevice
from shoal.target import lun

DB_FILE = "target.db"


@dataclass(frozen=True, slots=True)
class Label:
    fs: str
    target: str
    kind: str
    index: int
    uuid: str

    @staticmethod
    def new(fs: str, target: str, kind: str, index: int) -> Label:
        return Label(fs, target, kind, index, str(uuid_mod.uuid4()))


def read_label(device: Path) -> Label | None:
    """The device's label; None if it holds no Shoal target. NoDevice if it is missing or
    cannot be read (a path that is not there, a file system not mounted). A block device
    (a LUN) keeps its label raw at its end (target/lun.py), read without mounting it."""
    device = Path(device)
    if lun.is_block_device(device):
        rec = lun.read_record(device, lun.LABEL_AT)
        if rec is None or "target" not in rec:
            return None
        return Label(str(rec.get("fs", "")), str(rec["target"]), str(rec.get("kind", "")),
                     int(rec.get("index", -1)), str(rec.get("uuid", "")))
    if not device.is_dir():
        raise NoDevice(f"device {device} does not exist (a typo in the device path, or "
                       "shared storage not attached to this node?)")
    db = device / DB_FILE
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            info = dict(conn.execute("SELECT key, value FROM info").fetchall())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise NoDevice(f"device {device}: cannot read its label: {exc}") from None
    if "label" not in info:
        return None
    index = info.get("index")
    return Label(str(info.get("fs", "")), str(info["label"]), str(info.get("kind", "")),
                 int(index) if index is not None else -1, str(info.get("uuid", "")))


def check_device(device: Path, fs: str, target: str) -> Label:
    """The device's label if it is `target` of file system `fs`; NoDevice with the reason
    otherwise. Reads only."""
    label = read_label(device)
    if label is None:
        raise NoDevice(f"device {device} is not formatted: refusing to serve {target} from "
                       "it (`shoal format` writes a label; nothing formats on the fly)")
    # fs "": a shared MGS, whatever file system its label names
    if label.target != target or (label.fs and fs and label.fs != fs):
        raise NoDevice(f"device {device} holds {label.fs}/{label.target}, not {fs}/{target}")
    return label


def write_lun_label(device: Path, label: Label) -> None:
    lun.write_record(device, lun.LABEL_AT, {"fs": label.fs, "target": label.target,
                                             "kind": label.kind, "index": label.index,
                                             "uuid": label.uuid})


__all__ = ["DB_FILE", "Label", "check_device", "read_label", "write_lun_label"]
