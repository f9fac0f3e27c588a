"""A 1 MiB response through a proxy: how much the proxy's resident memory grows while it streams.

A proxy that streams holds a few reads' worth of the body at a time; one that buffers holds all
of it. Before each transfer the peak resident set (VmHWM) of the path's processes is reset to
their current size (`/proc/<pid>/clear_refs` 5), so the peak read after it is the growth that
transfer caused. The client (curl) reads at a bounded rate, slower than the proxy can read from
the server, so a proxy that does not apply back-pressure has to hold the difference.
"""

from __future__ import annotations

from pathlib import Path

from bench.loads.catalog import Load
from bench.measurement import LoadContext, LoadError, LoadOutcome, Metric, run_client
from bench.procstats import process_tree

GROWTH = Metric("rss_growth_kib", "1 MiB memory growth", "KiB", higher_is_better=False)
BODY_BYTES = 1024 * 1024
RATE_LIMIT = "4M"  # bytes/s curl reads at: the 1 MiB takes ~0.25 s, the server sends faster
PROC = Path("/proc")


def _status_kib(pid: int, field: str, proc: Path) -> int:
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def reset_peaks(roots: tuple[int, ...], proc: Path = PROC) -> dict[int, int]:
    """Reset each process's VmHWM to its VmRSS; returns pid -> VmRSS (KiB) at that moment."""
    before: dict[int, int] = {}
    for root in roots:
        for pid in process_tree(root, proc):
            try:
                (proc / str(pid) / "clear_refs").write_text("5")
                before[pid] = _status_kib(pid, "VmRSS", proc)
            except OSError:
                continue  # exited meanwhile
    return before


def peak_growth_kib(before: dict[int, int], proc: Path = PROC) -> int:
    """The summed growth of each process's peak resident set since `reset_peaks`."""
    growth = 0
    for pid, rss in before.items():
        try:
            growth += max(0, _status_kib(pid, "VmHWM", proc) - rss)
        except OSError:
            continue
    return growth


def run_stream_1mib(ctx: LoadContext) -> LoadOutcome:
    if not ctx.pids:
        raise LoadError("stream1m watches a proxy's memory, and this path adds no process")
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    argv += ["--limit-rate", RATE_LIMIT, "-m", str(max(5, round(ctx.seconds) + 5))]
    if ctx.http_host is not None:
        argv += ["-H", f"Host: {ctx.http_host}"]
    argv.append(f"http://{ctx.host}:{ctx.port}/1m")
    before = reset_peaks(ctx.pids)
    if not before:
        raise LoadError("none of the path's processes is running")
    status, _, size = run_client(ctx, argv, "curl").strip().partition(" ")
    growth = peak_growth_kib(before)
    if status != "200" or size != str(BODY_BYTES):
        raise LoadError(f"curl got HTTP {status} with {size} bytes, expected 200 with {BODY_BYTES}")
    return LoadOutcome(values={GROWTH.key: float(growth)})


STREAM_1MIB = Load(
    "stream1m",
    "one 1 MiB response read at 4 MB/s: growth of the proxy's peak memory (curl)",
    "http",
    (GROWTH,),
    run_stream_1mib,
    max_count=1,
)
