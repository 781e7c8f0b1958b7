"""Two mounts changing a few files at random, checked against a model after every step
(issue 20: what a mount keeps under its locks, the kernel's names, attributes and pages
among it, is never older than a change another client's call has returned from).

Each step is one change through either mount (a write by a new or a kept descriptor, a
truncate, an append, a write through a shared map, a rename over another name, an unlink,
a chmod, a descriptor kept open or closed); then every file is read back through either
mount (a new open, a descriptor kept open from before, a shared map) and the directory
listed, and all of it must be the model's. A seed draws the same steps again: a failure
names its seed and the steps before it. `SHOAL_RANDOM_STEPS` runs longer.
"""

from __future__ import annotations

import mmap
import os
import random
from pathlib import Path

import pytest

from tests.mount.conftest import Mount

NAMES = 3
MAX_SIZE = 300_000
STEPS = int(os.environ.get("SHOAL_RANDOM_STEPS", "80"))
OPS = ("write", "write", "write", "truncate", "append", "unlink", "rename", "hold", "drop",
       "chmod", "map_write", "hold_rw", "write_kept", "write_kept")


class Exerciser:
    def __init__(self, dirs: tuple[Path, Path], seed: int) -> None:
        self.dirs = dirs
        self.rng = random.Random(seed)
        self.seed = seed
        self.model: dict[str, bytearray | None] = {f"f{i}": None for i in range(NAMES)}
        self.kept: dict[tuple[int, str, str], int] = {}  # (mount, name, "r"|"rw") -> fd
        self.steps: list[str] = []

    def close(self) -> None:
        for fd in self.kept.values():
            os.close(fd)
        self.kept.clear()

    def _forget(self, *names: str) -> None:
        """Close the descriptors kept of `names` (they would follow the inode elsewhere)."""
        for key in [k for k in self.kept if k[1] in names]:
            os.close(self.kept.pop(key))

    def step(self) -> None:
        rng = self.rng
        name = rng.choice(list(self.model))
        side = rng.randrange(2)
        path = self.dirs[side] / name
        data = self.model[name]
        op = rng.choice(OPS) if data is not None else "create"
        self.steps.append(f"{op} {name} via mount {side}")
        if op == "create":
            new = bytearray(rng.randbytes(rng.randrange(0, 50_000)))
            path.write_bytes(new)
            self.model[name] = new
        elif op == "write":
            assert data is not None
            off, new = rng.randrange(0, min(MAX_SIZE, len(data) + 20_000)), \
                rng.randbytes(rng.randrange(1, 40_000))
            fd = os.open(path, rng.choice((os.O_WRONLY, os.O_RDWR)))
            try:
                os.pwrite(fd, new, off)
                if rng.random() < 0.3:
                    os.fsync(fd)
            finally:
                os.close(fd)
            _put(data, off, new)
        elif op == "write_kept":
            assert data is not None
            fds = [fd for (s, n, how), fd in self.kept.items() if n == name and how == "rw"]
            if fds:
                off, new = rng.randrange(0, min(MAX_SIZE, len(data) + 20_000)), \
                    rng.randbytes(rng.randrange(1, 30_000))
                os.pwrite(fds[0], new, off)
                _put(data, off, new)
        elif op == "truncate":
            assert data is not None
            size = rng.randrange(0, MAX_SIZE)
            if rng.random() < 0.5:
                os.truncate(path, size)
            else:
                fd = os.open(path, os.O_RDWR)
                os.ftruncate(fd, size)
                os.close(fd)
            del data[size:]
            data.extend(bytes(size - len(data)))
        elif op == "append":
            assert data is not None
            new = rng.randbytes(rng.randrange(1, 20_000))
            with open(path, "ab") as f:
                f.write(new)
            data.extend(new)
        elif op == "map_write" and data:
            with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
                off = rng.randrange(0, len(data))
                new = rng.randbytes(min(rng.randrange(1, 5000), len(data) - off))
                m[off:off + len(new)] = new
                if rng.random() < 0.5:
                    m.flush()
            data[off:off + len(new)] = new
        elif op == "unlink":
            self._forget(name)
            path.unlink()
            self.model[name] = None
        elif op == "rename":
            other = rng.choice(list(self.model))
            if other != name:
                self._forget(name, other)
                path.rename(self.dirs[side] / other)
                self.model[other], self.model[name] = data, None
                self.steps[-1] += f" onto {other}"
        elif op in ("hold", "hold_rw"):
            how = "r" if op == "hold" else "rw"
            if (side, name, how) not in self.kept:
                flags = os.O_RDONLY if how == "r" else os.O_RDWR
                self.kept[(side, name, how)] = os.open(path, flags)
        elif op == "drop":
            self._forget(name)
        elif op == "chmod":
            path.chmod(rng.choice((0o644, 0o600, 0o664)))
        self.check()

    def check(self) -> None:
        rng = self.rng
        for name, data in self.model.items():
            side = rng.randrange(2)
            how = rng.choice(("open", "open", "kept", "map"))
            fd = self.kept.get((side, name, "r"))
            if how == "kept" and fd is not None:
                size = os.fstat(fd).st_size
                got = os.pread(fd, size + 1, 0)
            else:
                try:
                    got, size = _read(self.dirs[side] / name, mapped=how == "map")
                except FileNotFoundError:
                    got = size = None
            want = None if data is None else bytes(data)
            where = f"seed {self.seed}: {name} through mount {side} ({how})"
            assert (size, got == want) == (None if want is None else len(want), True), \
                f"{where}: size {size}, model {None if want is None else len(want)}; " \
                f"after {self.steps[-6:]}"
        side = rng.randrange(2)
        listed = sorted(os.listdir(self.dirs[side]))
        assert listed == sorted(n for n, d in self.model.items() if d is not None), \
            f"seed {self.seed}: listing through mount {side}: {listed}; after {self.steps[-6:]}"


def _put(data: bytearray, off: int, new: bytes) -> None:
    data.extend(bytes(max(0, off - len(data))))
    data[off:off + len(new)] = new


def _read(path: Path, *, mapped: bool) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if mapped and size:
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                return bytes(m), size
        return f.read(), size


@pytest.mark.parametrize("seed", [1, 2])
def test_two_mounts_agree_with_a_model_through_random_changes(
        mnt: Mount, mnt2: Mount, work: Path, seed: int) -> None:
    ex = Exerciser((work, mnt2.path / work.relative_to(mnt.path)), seed)
    try:
        for _ in range(STEPS):
            ex.step()
    finally:
        ex.close()
