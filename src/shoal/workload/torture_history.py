"""A torture campaign's history file, and resuming a campaign from it.

A thousand rig faults take more than three hours; a campaign stopped by a reboot, a session
or Ctrl-C goes on with `shoal torture --history FILE --resume` from the round after the last
one the file holds, with the settings the file holds. Each round draws its fault from the
seed and its own number (`round_rng`), so a resumed campaign draws what it would have drawn
unstopped. The campaign's first line names the code it ran (`code_version`), and a resume on
other code is refused: the rounds of one campaign are the rounds of one version.
"""

from __future__ import annotations

import fcntl
import json
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import shoal
from shoal.errors import Busy, InvalidArgument

SETTINGS = ("faults", "mix", "seed", "clients")


def code_version() -> str:
    """Shoal's version, and the commit of the checkout it runs from (`+dirty` if that has
    uncommitted changes); only the version for an installed package."""
    src = Path(shoal.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return shoal.__version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."],
                               cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return shoal.__version__
    return (f"{shoal.__version__}+{head.stdout.strip()[:12]}"
            f"{'+dirty' if dirty.stdout.strip() else ''}")


def round_rng(seed: int, index: int) -> random.Random:
    """Round `index`'s draws: the same seed and number draw the same, resumed or not."""
    return random.Random(f"{seed}/{index}")


@dataclass
class Campaign:
    settings: dict[str, Any]  # the campaign line: faults, mix, seed, clients, rig, version
    rounds: list[dict[str, Any]]  # the rounds it finished, in order

    @property
    def done(self) -> int:
        return len(self.rounds)


@contextmanager
def holding(history: Path | None) -> Iterator[None]:
    """One campaign writes a history at a time: a second (a resume started while the first
    still runs) is refused instead of interleaving its rounds."""
    if history is None:
        yield
        return
    try:
        f = history.open("a")
    except OSError as exc:
        raise InvalidArgument(f"--history: cannot open {history}: {exc.strerror}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{history}: another shoal torture is writing it") from None
        yield


def begin(history: Path | None, settings: dict[str, Any]) -> None:
    """A new campaign's first line."""
    if history is not None:
        with history.open("a") as f:
            f.write(json.dumps({"campaign": settings | {"version": code_version(),
                                                        "started": time.time()}}) + "\n")


def read_campaign(history: Path) -> Campaign:
    """The last campaign in `history` and the rounds it finished."""
    try:
        lines = history.read_text().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"--resume: cannot read {history}: {exc.strerror}") from None
    settings: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise InvalidArgument(f"{history}:{n}: not a line of JSON") from None
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{history}:{n}: not a campaign, round or resume record")
        if "campaign" in entry:
            settings, rounds = entry["campaign"], []
        elif "index" in entry:
            if settings is None:
                raise InvalidArgument(f"{history}:{n}: a round before any campaign line")
            if entry["index"] != len(rounds) + 1:
                raise InvalidArgument(f"{history}:{n}: round {entry['index']} where round "
                                      f"{len(rounds) + 1} was due")
            rounds.append(entry)
        elif "resumed" not in entry:
            raise InvalidArgument(f"{history}:{n}: not a campaign, round or resume record")
    if settings is None:
        raise InvalidArgument(f"--resume: {history} holds no campaign")
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise InvalidArgument(f"--resume: {history}'s campaign line lacks {', '.join(missing)}")
    return Campaign(settings, rounds)


def resume(history: Path) -> Campaign:
    """The campaign to go on with: refused if it is over or ran on other code."""
    c = read_campaign(history)
    if c.done >= c.settings["faults"]:
        raise InvalidArgument(f"--resume: the campaign in {history} is over "
                              f"({c.done} of {c.settings['faults']} rounds)")
    now, then = code_version(), c.settings.get("version")
    if then != now:
        raise InvalidArgument(f"--resume: the campaign in {history} ran on "
                              f"{then or 'an unrecorded version'}, this is {now}: "
                              "start a new campaign")
    with history.open("a") as f:
        f.write(json.dumps({"resumed": {"at": c.done + 1, "time": time.time()}}) + "\n")
    return c


def as_rounds(entries: list[dict[str, Any]], make: type) -> list[Any]:
    """History entries back into Round records (keys the record does not know are left)."""
    known = {f.name for f in fields(make)}
    return [make(**{k: v for k, v in e.items() if k in known}) for e in entries]
