"""The targets a node makes: each from its spec on its device (`make_service`), and the
devices `shoal format` labels (`format_targets`, mkfs.lustre's part)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from shoal.errors import InvalidArgument
from shoal.node.host import HostSpec
from shoal.node.spec import ClusterSpec, TargetSpec
from shoal.target import lun
from shoal.target.base import TargetService
from shoal.target.label import check_device, read_label, write_lun_label
from shoal.target.mdt import MDT
from shoal.target.mgt import MGT
from shoal.target.ost import OST


def service_dir(t: TargetSpec, node: str, mounts: Path) -> Path:
    """Where the target's files are: its device path, or, for a LUN (a block device), the
    mount point this node mounts it on (target/lun.py)."""
    device = Path(t.devices[node])
    return mounts / t.name if lun.is_block_device(device) else device


def make_service(host: HostSpec, t: TargetSpec, node: str,
                 device: Path | None = None) -> TargetService:
    device = device or Path(t.devices[node])
    spec = host.spec_of(t)
    common: dict[str, Any] = {"node": node, "commit_interval": spec.commit_interval}
    if t.kind == "MGT":
        # one MGS, however many file systems name it: it serves each one's configuration
        return MGT(t.name, device, fs=spec.fs, **common,
                   configs={s.fs: s.client_config() for s in host.fss_of(t)})
    if t.kind == "MDT":
        return MDT(t.name, device, fs=spec.fs, index=t.index, ost_count=len(spec.osts),
                   default_stripe_size=spec.stripe_size,
                   default_stripe_count=spec.stripe_count, **common)
    if t.kind == "OST":
        ost = OST(t.name, device, fs=spec.fs, index=t.index, **common)
        ost.deferred_reads = True
        return ost
    raise InvalidArgument(f"unknown target kind {t.kind!r}")


def format_targets(spec: ClusterSpec) -> dict[str, bool]:
    """`shoal format` (mkfs.lustre): label every target's device, on its primary's path,
    that holds no target yet; target -> whether it was formatted now (False: it was already
    this target's). NoDevice for a device that holds another target: nothing is formatted
    over. Only this, at the administrator's word (or `shoal up`'s first use), formats:
    a node never does (target/label.py)."""
    return {t.name: _format_one(spec, t) for t in spec.targets}


def _format_one(spec: ClusterSpec, t: TargetSpec) -> bool:
    host = HostSpec.single(spec, t.primary)
    device = Path(t.devices[t.primary])
    if not lun.is_block_device(device):
        return make_service(host, t, t.primary).format()
    if read_label(device) is not None:
        check_device(device, t.fs, t.name)
        return False
    # a LUN: ext4 on it, the target's tables inside, then the raw label at its end
    lun.mkfs(device, t.name)
    with tempfile.TemporaryDirectory(prefix="shoal-format-") as tmp:
        lun.mount(device, Path(tmp))
        try:
            make_service(host, t, t.primary, Path(tmp)).format()
            label = read_label(Path(tmp))
        finally:
            lun.unmount(Path(tmp))
    assert label is not None  # format() just wrote it
    write_lun_label(device, label)
    return True
