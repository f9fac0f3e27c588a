"""The capture's connect() figure alone: many short interleaved rounds, direct vs captured.

`weft bench ... connrate` measures connect() p50 in 7 rounds, beside the connection-rate runs;
this asks only that question, with more rounds (the order of the arms rotates each round) and
with *variants* of how the client's node agent is scheduled, applied to the running agent
between runs (no restart, so every arm shares the same lab, agent and state):

    sudo .venv/bin/python -m bench.connect_ab --rounds 16 --interval-us 2000 --variant nice-5

Each arm's figure per round is conn_client's connect() p50 over SECONDS of one-at-a-time
connections (paced with --interval-us, as the connrate load paces it); the result is the median
of the per-round differences to `direct-same-node`, with a distribution-free 95% interval of that
median. Variants that pin the client or keep the CPUs busy get a direct arm run the same way.
`--trace` attaches bench.connect_trace: per arm, the system call's own p50, how often the client
left the CPU around connect() and why, the wakeups and IPIs sent from inside it, and the time
Weft's eBPF programs took. Results go to bench/results/<UTC time>-connect-ab[-LABEL].json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.connect_trace import ConnectTracer, ProgramTimes, program_costs
from bench.loads.catalog import SERVICE_PORTS
from bench.loads.connrate import MESSAGE_BYTES, parse_conn_output
from bench.native import NativeTools, build_tools
from bench.paths import make_path
from bench.priority import NICE, prioritized
from bench.result import describe_commit, describe_machine
from bench.servers import start_servers
from bench.session import open_testbed
from bench.stats import median, median_interval, percentile, spread
from bench.testbed import Testbed, prepare_layout

RESULTS_DIR = Path(__file__).parent / "results"
DIRECT = "direct"  # the arm every other is compared with: direct-same-node


@dataclass(frozen=True)
class Scheduling:
    """How the client's node agent (every thread) and, as a diagnostic, the client are run."""

    nice: int = NICE
    policy: int = os.SCHED_OTHER
    agent_cpus: frozenset[int] | None = None  # None: every CPU
    client_cpu: int | None = None
    # Keep every CPU out of idle with a SCHED_IDLE busy loop per CPU during the run (it yields
    # to any other task at once): tells apart a cost of the path from one of waking idle CPUs.
    spin: bool = False

    @property
    def changes_client(self) -> bool:
        """Whether it changes how the client runs too (then direct needs the same)."""
        return self.client_cpu is not None or self.spin


VARIANTS: dict[str, Scheduling] = {
    "nice-5": Scheduling(),  # what `weft bench` runs the agents at (bench.priority)
    "nice0": Scheduling(nice=0),  # what the agents run at outside the bench
    "batch": Scheduling(policy=os.SCHED_BATCH),  # no wakeup preemption of the client
    "batch-nice0": Scheduling(nice=0, policy=os.SCHED_BATCH),
    # Diagnostics, not fixes: the agent never / always on the client's CPU.
    "pinned": Scheduling(agent_cpus=frozenset({1}), client_cpu=0),
    "same-cpu": Scheduling(agent_cpus=frozenset({0}), client_cpu=0),
    "spin": Scheduling(spin=True),
    "spin-batch": Scheduling(policy=os.SCHED_BATCH, spin=True),
}


def _threads(pid: int) -> Iterator[int]:
    """Every thread of `pid` and of its children."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            yield int(task.name)
            for child in (task / "children").read_text().split():
                yield from _threads(int(child))


def apply_scheduling(pid: int, scheduling: Scheduling) -> None:
    everywhere = frozenset(range(os.cpu_count() or 1))
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(tid, scheduling.policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, scheduling.nice)
            os.sched_setaffinity(tid, scheduling.agent_cpus or everywhere)


@dataclass(frozen=True)
class Arm:
    name: str
    client: str
    host: str
    scheduling: Scheduling
    captured: bool  # False: direct-same-node (no agent involved; only client_cpu applies)
    reference: str = ""  # the direct arm a captured arm is compared with


def make_arms(
    variants: Sequence[str], direct: tuple[str, str], captured: tuple[str, str]
) -> list[Arm]:
    """`direct` first, a captured arm per variant; a variant that pins the client gets a direct
    arm pinned the same way as its reference, so pinning alone does not count as the capture."""
    arms = [Arm(DIRECT, *direct, Scheduling(), captured=False)]
    for name in variants:
        scheduling = VARIANTS[name]
        reference = DIRECT
        if scheduling.changes_client:
            reference = f"{DIRECT}:{name}"
            arms.append(Arm(reference, *direct, scheduling, captured=False))
        arms.append(Arm(f"weft:{name}", *captured, scheduling, captured=True, reference=reference))
    return arms


@dataclass
class ArmRounds:
    p50_us: list[float]
    p90_us: list[float]
    conn_s: list[float]
    at: list[float]  # seconds since the start, per round
    idle: list[float]  # the machine's idle fraction during the run (both CPUs, all tasks)
    trace: list[dict[str, Any]]
    bpf: list[dict[str, dict[str, float]]]  # traced: Weft's programs' runs and ns per run


def run_once(  # noqa: PLR0917
    testbed: Testbed,
    arm: Arm,
    agent_pid: int,
    tools: NativeTools,
    seconds: float,
    interval_us: int = 0,
) -> tuple[float, float, float, int]:
    """One conn_client run on `arm`: connect() p50 and p90 (us), connections per second, and
    connections made."""
    if arm.captured:
        apply_scheduling(agent_pid, arm.scheduling)
    client_cpu = arm.scheduling.client_cpu
    pin = ["taskset", "-c", str(client_cpu)] if client_cpu is not None else []
    argv = [str(tools.conn_client), arm.host, str(SERVICE_PORTS["echo"]), str(MESSAGE_BYTES)]
    argv += [f"{seconds:g}", "500000", "1", str(interval_us)]
    with _spinning(arm.scheduling.spin):
        proc = testbed.exec(arm.client, prioritized([*pin, *argv]), timeout=seconds + 20)
    run = parse_conn_output(proc.stdout)
    if run.connections == 0 or run.failures > run.connections // 100:
        raise RuntimeError(f"{arm.name}: {run.failures} failed, {run.connections} completed")
    connect_us = [ns / 1000 for ns in run.connect_ns]
    return percentile(connect_us, 0.5), percentile(connect_us, 0.9), run.rate, run.connections


_SPIN = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"


@contextlib.contextmanager
def _spinning(enabled: bool) -> Iterator[None]:
    """A SCHED_IDLE busy loop on each CPU while the block runs (none if not `enabled`)."""
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        if enabled:
            for cpu in range(os.cpu_count() or 1):
                argv = ["taskset", "-c", str(cpu), sys.executable, "-c", _SPIN]
                spinners.append(subprocess.Popen(argv))
            time.sleep(0.2)  # started and in their loops
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=10)


def measure(
    testbed: Testbed,
    arms: Sequence[Arm],
    agent_pid: int,
    *,
    tools: NativeTools,
    rounds: int,
    seconds: float,
    interval_us: int = 0,
    tracer: ConnectTracer | None,
) -> dict[str, ArmRounds]:
    collected = {arm.name: ArmRounds([], [], [], [], [], [], []) for arm in arms}
    programs = ProgramTimes() if tracer is not None else None
    try:
        _rounds(
            testbed, arms, agent_pid, tools, rounds, (seconds, interval_us), tracer, programs,
            collected,
        )  # fmt: skip
    finally:
        if programs is not None:
            programs.close()
    apply_scheduling(agent_pid, VARIANTS["nice-5"])  # as the bench leaves it
    return collected


def _rounds(  # noqa: PLR0917 - the internals of measure()
    testbed: Testbed,
    arms: Sequence[Arm],
    agent_pid: int,
    tools: NativeTools,
    rounds: int,
    pacing: tuple[float, int],  # seconds per run, microseconds between connection starts
    tracer: ConnectTracer | None,
    programs: ProgramTimes | None,
    collected: dict[str, ArmRounds],
) -> None:
    start = time.monotonic()
    for index in range(rounds):
        shift = index % len(arms)
        for arm in [*arms[shift:], *arms[:shift]]:
            if tracer is not None:
                tracer.take()  # drop what came before this run
            before, prog_before = _cpu_times(), programs.snapshot() if programs else {}
            p50, p90, rate, count = run_once(testbed, arm, agent_pid, tools, *pacing)
            after = _cpu_times()
            figures = collected[arm.name]
            if programs is not None:
                figures.bpf.append(program_costs(prog_before, programs.snapshot(), count))
            figures.p50_us.append(p50)
            figures.p90_us.append(p90)
            figures.conn_s.append(rate)
            figures.at.append(round(time.monotonic() - start, 1))
            busy, idle = (b - a for a, b in zip(before, after, strict=True))
            figures.idle.append(round(idle / max(busy + idle, 1), 3))
            kernel = ""
            if tracer is not None:
                traced = tracer.take().summary()
                figures.trace.append(traced)
                kernel = f"  in the kernel {traced.get('connect_p50_us', 0.0):6.1f} us"
            if figures.bpf:
                ns = sum(
                    c["runs_per_connection"] * c["ns_per_run"] for c in figures.bpf[-1].values()
                )
                kernel += f"  eBPF {ns / 1000:5.2f} us/conn"
            print(f"round {index + 1}/{rounds} {arm.name:<14} connect() p50 {p50:6.1f} us  "
                  f"p90 {p90:6.1f} us  {rate:8,.0f} conn/s{kernel}", flush=True)  # fmt: skip


def summarize(arms: Sequence[Arm], collected: dict[str, ArmRounds]) -> dict[str, Any]:
    """Per arm: its p50 median and spread; per captured arm: the per-round added p50."""
    summary: dict[str, Any] = {}
    for arm in arms:
        name, figures = arm.name, collected[arm.name]
        entry: dict[str, Any] = {
            "p50_us_median": median(figures.p50_us),
            "p50_spread": spread(figures.p50_us),
            "p90_us_median": median(figures.p90_us),
            "conn_s_median": median(figures.conn_s),
            "idle_median": median(figures.idle),
        }
        kernel = _syscall_p50s(figures)
        if kernel:  # traced: connect()'s own p50 inside the system call
            entry["syscall_p50_us_median"] = median(kernel)
        if arm.captured:
            direct = collected[arm.reference].p50_us
            added = [mine - base for mine, base in zip(figures.p50_us, direct, strict=True)]
            entry["reference"] = arm.reference
            low, high = median_interval(added)
            entry.update(added_us=added, added_us_median=median(added), added_us_ci95=[low, high])
            ours, theirs = _syscall_p50s(figures), _syscall_p50s(collected[arm.reference])
            if ours and len(ours) == len(theirs):
                inside = [mine - base for mine, base in zip(ours, theirs, strict=True)]
                entry.update(syscall_added_us_median=median(inside),
                             syscall_added_us_ci95=list(median_interval(inside)))  # fmt: skip
        summary[name] = entry
    return summary


def _cpu_times() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, idle


def _syscall_p50s(figures: ArmRounds) -> list[float]:
    return [float(t["connect_p50_us"]) for t in figures.trace if t.get("calls")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_ab", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="per conn_client run")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="agent scheduling variants to compare (default: nice-5)")  # fmt: skip
    parser.add_argument("--trace", action="store_true", help="attach bench.connect_trace")
    parser.add_argument("--interval-us", type=int, default=0,
                        help="pace: a connection at most every N us, on every path")  # fmt: skip
    parser.add_argument("--testbed", choices=("lab", "running"), default="lab")
    parser.add_argument("--label", help="results file suffix")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.rounds < 3 or not 0.1 <= args.seconds <= 10:
        parser.error("--rounds must be >= 3 and --seconds within 0.1..10")
    variants = args.variant or ["nice-5"]
    tools = build_tools()
    started = datetime.datetime.now(datetime.UTC)
    machine = describe_machine()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    tracer = ConnectTracer() if args.trace else None  # before the lab: fails fast
    with open_testbed(args.testbed, progress) as (testbed, client_node, server_node):
        layout = prepare_layout(testbed, client_node, server_node)
        server_pids = start_servers(testbed, layout, tools)
        direct, weft = make_path("direct-same-node"), make_path("weft-same-node")
        try:
            workdir = Path(tempfile.mkdtemp(prefix="weft-connect-ab-"))  # the paths write none
            base = direct.setup(testbed, layout, workdir)
            meshed = weft.setup(testbed, layout, workdir)
            agent_pid = weft.mesh_pids()[0]
            arms = make_arms(
                variants,
                (base.client, base.addresses["echo"][0]),
                (meshed.client, meshed.addresses["echo"][0]),
            )
            collected = measure(
                testbed, arms, agent_pid, tools=tools, rounds=args.rounds, seconds=args.seconds,
                interval_us=args.interval_us,
                tracer=tracer,
            )  # fmt: skip
        finally:
            if tracer is not None:
                tracer.close()
            weft.teardown()
            direct.teardown()
            for pid in server_pids:
                testbed.stop(pid)
    machine["loadavg_at_end"] = list(os.getloadavg())
    summary = summarize(arms, collected)
    record = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "commit": describe_commit(),
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "variants": {name: _describe(VARIANTS[name]) for name in variants},
            "trace": args.trace,
            "interval_us": args.interval_us,
            "order": "each round runs every arm once; the order rotates round to round",
        },
        "arms": {name: vars(figures) for name, figures in collected.items()},
        "summary": summary,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.results_dir / f"{stamp}-connect-ab{'-' + args.label if args.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    for name, entry in summary.items():
        line = f"{name:<14} p50 {entry['p50_us_median']:6.1f} us (spread {entry['p50_spread']:.0%})"
        line += f" idle {entry['idle_median']:.0%}"
        if "syscall_p50_us_median" in entry:
            line += f"  in the kernel {entry['syscall_p50_us_median']:5.1f} us"
        if "added_us_median" in entry:
            low, high = entry["added_us_ci95"]
            line += f"  added {entry['added_us_median']:+.1f} us (95% CI {low:+.1f} .. {high:+.1f})"
        if "syscall_added_us_median" in entry:
            low, high = entry["syscall_added_us_ci95"]
            inside = entry["syscall_added_us_median"]
            line += f", in the kernel {inside:+.1f} ({low:+.1f} .. {high:+.1f})"
        print(line)
    print(f"load average at the end {machine['loadavg_at_end']}; result: {out}")
    return 0


def _describe(scheduling: Scheduling) -> dict[str, Any]:
    return {
        "nice": scheduling.nice,
        "policy": {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_BATCH: "SCHED_BATCH"}.get(
            scheduling.policy, str(scheduling.policy)
        ),
        "agent_cpus": sorted(scheduling.agent_cpus) if scheduling.agent_cpus else "all",
        "client_cpu": scheduling.client_cpu,
        "spin": scheduling.spin,
    }


if __name__ == "__main__":
    sys.exit(main())
