"""PNG plots of simulated failovers (matplotlib, drawn off screen).

- total_vs_clients: total_s against N, one line per preset, log-log, with the anchors;
- timeline: one run's clients over time: how many have reconnected, finished replaying
  (sent their final ping) and resumed I/O, with the failover's marks as vertical lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from shoal.sim.records import RunResult


def _pyplot():  # type: ignore[no-untyped-def]
    # imported when drawing only: `shoal sim` without --plot needs no matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def total_vs_clients(runs: Mapping[str, Sequence[RunResult]], path: Path,
                     anchors: Mapping[str, tuple[int, float, float]] | None = None) -> Path:
    """`anchors`: preset -> (N, low, high) seconds, drawn as a bar where it must land."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, results in runs.items():
        pts = sorted((r.clients, r.total_s, r.converged) for r in results)
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)[0]
        cut = [p for p in pts if not p[2]]
        if cut:
            ax.scatter([p[0] for p in cut], [p[1] for p in cut], marker="x", s=120,
                       color=line.get_color(), zorder=5)
        if anchors and name in anchors:
            n, lo, hi = anchors[name]
            ax.vlines(n, lo, hi, color=line.get_color(), linewidth=6, alpha=0.35)
    ax.axhline(10, color="grey", linestyle=":", linewidth=1)
    ax.text(11, 10.5, "10 s: Shoal's goal at 100,000", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients (N)")
    ax.set_ylabel("server death -> every client's I/O resumed (s)")
    ax.set_title("Simulated failover time against client count\n"
                 "(bars: where each preset's anchor says it lands; x: the run was cut, "
                 "no recovery)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(result: RunResult, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    total = result.imports
    for label, times in (("reconnected", result.connected_at),
                         ("replayed (final ping sent)", result.replayed_at),
                         ("resumed I/O", result.resumed_at)):
        if times:
            ys = [(i + 1) / total * 100 for i in range(len(times))]
            ax.step(times, ys, where="post", label=label)
    m = result.marks
    for name, at in (("detect", m.detect), ("fenced", m.fenced), ("taken", m.taken),
                     ("started", m.started), ("notified", m.notified),
                     ("window closed", m.recovered)):
        ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.text(at, 101, name, rotation=60, fontsize=7, va="bottom")
    ax.set_ylim(0, 100)
    ax.set_xlabel("seconds after the server died (virtual time)")
    ax.set_ylabel("% of live client imports")
    ax.set_title(f"{result.preset}, {result.fault}, N = {result.clients:,}: "
                 f"total {result.total_s:.2f} s"
                 + ("" if result.converged else " (cut: no recovery)"), fontsize=10, pad=40)
    ax.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
