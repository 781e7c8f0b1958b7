"""`-o` options of `shoal mount`: the ones Shoal reads itself, and the ones libfuse gets.

Cache timeouts default to zero: without lock callbacks (Lustre's LDLM) a client is never told
that another client changed an inode, so any positive timeout is a window in which a stale
name or size may show. `-o attr_timeout=1,entry_timeout=1` trades that window for fewer MDT
round trips, as NFS's actimeo does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.errors import InvalidArgument

# handed to libfuse unchanged (mount(8) flags and libfuse's own mount options)
FUSE_FLAGS = frozenset({
    "allow_other", "allow_root", "auto_unmount", "default_permissions", "ro", "rw",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async", "dirsync",
    "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
})
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read", "blksize"})

MiB = 1 << 20


@dataclass(slots=True)
class MountOptions:
    attr_timeout: float = 0.0
    entry_timeout: float = 0.0
    mount_timeout: float = 30.0  # for the MGS's configuration when mounting
    max_tasks: int = 64  # concurrent FUSE requests in service
    readahead_mb: int = 64  # per file being read sequentially
    writebehind_mb: int = 32  # per file: bytes buffered or in flight before write() waits
    chunk_mb: int = 0  # RPC batch for read-ahead and write-behind; 0: whole stripe rows
    # the kernel's own read-ahead (128 KiB by default) sets the size of the reads it sends:
    # at 4 MiB they come as 1 MiB requests, several at once (0: leave the kernel's)
    read_ahead_kb: int = 4096
    locks: bool = True  # keep names and attributes under the MDT's locks (kernel_cache.py)
    metrics: tuple[str, int] | None = None  # where to serve Prometheus metrics (ADDR:PORT)
    fuse: set[str] = field(default_factory=lambda: {"default_permissions"})

    @property
    def read_only(self) -> bool:
        return "ro" in self.fuse

    def fuse_options(self, fs_name: str) -> set[str]:
        opts = set(self.fuse)
        if not any(o.startswith("fsname=") for o in opts):
            opts.add(f"fsname=shoal:{fs_name}")
        if not any(o.startswith("subtype=") for o in opts):
            opts.add("subtype=shoal")
        return opts

    def chunk_bytes(self, stripe_size: int, stripe_count: int, *, least: int = 4 * MiB) -> int:
        """Bytes per read-ahead / write-behind RPC batch for a file of this layout: whole
        stripe rows, so every batch keeps all the file's OSTs busy, and at least `least`."""
        if self.chunk_mb > 0:
            return self.chunk_mb * MiB
        row = stripe_size * max(1, stripe_count)
        return row * max(1, -(-least // row))

    def read_chunk_bytes(self, stripe_size: int, stripe_count: int) -> int:
        """Read-ahead fetches 4 MiB from each OST at a time, as the library's streaming
        reads do: per RPC, each side pays a fixed cost (a thread hop and a sendfile on the
        OSS, a frame to verify here), which at 1 MiB RPCs cost the OSSs half as much again
        as the bytes did."""
        return self.chunk_bytes(stripe_size, stripe_count,
                                least=4 * MiB * max(1, stripe_count))


def _number(key: str, value: str, kind: type[int] | type[float], low: float) -> float:
    try:
        v = kind(value)
    except ValueError:
        raise InvalidArgument(f"-o {key}={value}: not a number") from None
    if v < low:
        raise InvalidArgument(f"-o {key}={value}: must be at least {low}")
    return v


def _address(item: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"-o {item}: expected ADDR:PORT (e.g. 127.0.0.1:9100)")
    return host, int(port)


def parse_options(specs: tuple[str, ...] | list[str]) -> MountOptions:
    """Parse every `-o a,b=c` given (later ones win); EINVAL for an unknown option."""
    opts = MountOptions()
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            if key in ("attr_timeout", "entry_timeout", "mount_timeout"):
                setattr(opts, key, float(_number(key, value, float, 0.0)))
            elif key in ("max_tasks", "readahead_mb", "writebehind_mb", "chunk_mb",
                         "read_ahead_kb"):
                low = 1 if key == "max_tasks" else 0
                setattr(opts, key, int(_number(key, value, int, low)))
            elif key in FUSE_FLAGS and not eq:
                if key in ("ro", "rw"):
                    opts.fuse.discard("rw" if key == "ro" else "ro")
                opts.fuse.add(key)
            elif key in ("locks", "nolocks") and not eq:
                opts.locks = key == "locks"
            elif key == "no_default_permissions" and not eq:
                opts.fuse.discard("default_permissions")
            elif key == "metrics" and eq:
                opts.metrics = _address(item, value)
            elif key in FUSE_VALUED and eq and value:
                opts.fuse = {o for o in opts.fuse if not o.startswith(key + "=")}
                opts.fuse.add(item)
            else:
                raise InvalidArgument(f"-o {item}: unknown mount option")
    return opts
