"""PNG plots of a run: latency distributions (CDFs) and throughput per path (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot

import matplotlib.pyplot as plt

from bench.result import BenchResult

# (load, metric, title) of each throughput panel.
THROUGHPUT_PANELS = (
    ("bulk", "gbit_s", "bulk TCP, Gbit/s"),
    ("connrate", "conn_s", "new connections/s (1 KiB each)"),
    ("http1", "req_s", "HTTP/1.1 req/s, 1 conn"),
    ("http16", "req_s", "HTTP/1.1 req/s, 16 conns"),
    ("grpc", "req_s", "gRPC unary req/s"),
    ("rr", "p50_us", "1 KiB RR p50, us (lower is better)"),
)

# (load, title, file name) of each latency distribution plot.
LATENCY_PLOTS = (
    ("rr", "1 KiB request/response round trip, one connection", "latency_rr.png"),
    ("connrate", "whole new connection (connect + 1 KiB exchange + close)", "latency_connrate.png"),
)


def plot_latency_cdfs(
    samples_us: dict[tuple[str, str], list[float]], load: str, title: str, out: Path
) -> Path | None:
    """Cumulative distribution of one load's latencies, one line per path (last round's samples)."""
    series = {path: s for (path, name), s in samples_us.items() if name == load and s}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for path, samples in sorted(series.items()):
        ordered = sorted(samples)
        count = len(ordered)
        ax.plot(ordered, [(i + 1) / count for i in range(count)], label=f"{path} (n={count:,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, microseconds (log scale)")
    ax.set_ylabel("fraction of samples at or below")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_throughput(result: BenchResult, out: Path) -> Path:
    """A bar per path for each load: the median, with the min..max of the rounds as error bars."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (load, metric, title) in zip(axes.flat, THROUGHPUT_PANELS, strict=True):
        figures = [f for f in result.figures if f.load == load and f.metric == metric and f.rounds]
        names = [f.path for f in figures]
        medians = [f.median or 0.0 for f in figures]
        low = [m - min(f.rounds) for m, f in zip(medians, figures, strict=True)]
        high = [max(f.rounds) - m for m, f in zip(medians, figures, strict=True)]
        ax.bar(names, medians, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, axis="y", alpha=0.3)
        if not figures:
            ax.text(0.5, 0.5, "no path ran this load", ha="center", transform=ax.transAxes)
    rounds = result.settings.get("rounds")
    fig.suptitle(f"weft bench: medians of {rounds} rounds, bars span min..max of the rounds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(
    result: BenchResult, samples_us: dict[tuple[str, str], list[float]], directory: Path, stem: str
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [plot_throughput(result, directory / f"{stem}-throughput.png")]
    for load, title, name in LATENCY_PLOTS:
        path = plot_latency_cdfs(samples_us, load, title, directory / f"{stem}-{name}")
        if path is not None:
            written.append(path)
    return written
