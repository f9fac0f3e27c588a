"""Where a client's connect() spends its time off the CPU: an eBPF trace of every conn_client call.

A connect() over veth or loopback normally completes inside the system call (the handshake runs
in softirq on the caller's CPU). If it is longer with capture, the question is whether the caller
was *sleeping* (waiting for the handshake) or *runnable but not running* (a woken task, such as
the node agent accepting the new connection, preempted it on its CPU). The trace answers that per
call: total time, time asleep, time runnable-but-waiting, the number of switches, and the command
that took the CPU when the caller was preempted. Diagnostic only (root, bcc); it adds a few
hundred nanoseconds to every context switch and connect() on the machine while attached.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import percentile

COMM = "conn_client"
TRACEFS = Path("/sys/kernel/tracing")

# Tracepoints only. prev_state's low byte is 0 for a task switched out while runnable (newer
# kernels report a preemption as TASK_REPORT_MAX, 0x100 or so: also 0 in the low byte).
_PROGRAM = r"""
#include <linux/sched.h>

/* Phase 0: from socket() to connect() (conn_client sets its options there); phase 1: inside
 * connect(); phase 2: from connect()'s return to the next write() (conn_client writes right
 * after connect() returns, so a preemption on the way back to user space, which delays
 * connect()'s return as the client sees it, falls in phase 2). */
struct call {
    u64 socket;        /* when socket() was entered */
    u64 start;         /* when connect() was entered */
    u64 exit;          /* when connect() returned (phase 1 from then on) */
    u64 off_start;     /* when it last left the CPU, or was woken (0: on the CPU) */
    u64 runnable_ns[3];  /* preempted or woken, waiting for a CPU */
    u64 sleep_ns[3];     /* blocked, waiting for an event */
    u32 switches[3];
    u32 preempts[3];
    u32 cpu0;
    u32 cpu1;
    u32 waiting;       /* 1: runnable while off the CPU, 0: asleep */
    u32 phase;
    u32 ipis;          /* inter-processor interrupts sent from inside connect() */
    u32 wakings;       /* tasks woken from inside connect() (the server or the agent) */
    char by[16];       /* what took the CPU at its first preemption */
};
struct event {
    u64 setup_ns;
    u64 connect_ns;
    u64 after_ns;
    u64 runnable_ns[3];
    u64 sleep_ns[3];
    u32 switches[3];
    u32 preempts[3];
    u32 cpu0;
    u32 cpu1;
    u32 ipis;
    u32 wakings;
    char by[16];
};
BPF_HASH(calls, u32, struct call, 4096);
BPF_PERF_OUTPUT(events);

static __always_inline int is_client(void) {
    char comm[16];
    bpf_get_current_comm(&comm, sizeof(comm));
    char want[] = "COMM";
    #pragma unroll
    for (int i = 0; i < sizeof(want) - 1; i++) {  /* a prefix: the binary is conn_client-<hash> */
        if (comm[i] != want[i])
            return 0;
    }
    return 1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket) {
    if (!is_client())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {};
    c.socket = bpf_ktime_get_ns();
    calls.update(&tid, &c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c || c->phase != 0)
        return 0;
    c->start = bpf_ktime_get_ns();
    c->cpu0 = bpf_get_smp_processor_id();
    c->phase = 1;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c)
        return 0;
    c->exit = bpf_ktime_get_ns();
    c->cpu1 = bpf_get_smp_processor_id();
    c->phase = 2;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c || !c->exit)
        return 0;
    struct event e = {};
    e.setup_ns = c->start - c->socket;
    e.connect_ns = c->exit - c->start;
    e.after_ns = bpf_ktime_get_ns() - c->exit;
    #pragma unroll
    for (int i = 0; i < 3; i++) {
        e.runnable_ns[i] = c->runnable_ns[i];
        e.sleep_ns[i] = c->sleep_ns[i];
        e.switches[i] = c->switches[i];
        e.preempts[i] = c->preempts[i];
    }
    e.cpu0 = c->cpu0;
    e.cpu1 = c->cpu1;
    e.ipis = c->ipis;
    e.wakings = c->wakings;
    __builtin_memcpy(e.by, c->by, sizeof(e.by));
    events.perf_submit(args, &e, sizeof(e));
    calls.delete(&tid);
    return 0;
}

static __always_inline void count_in_connect(int ipi) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c || c->phase != 1)
        return;
    if (ipi)
        c->ipis++;
    else
        c->wakings++;
}

TRACEPOINT_PROBE(ipi, ipi_send_cpu) {
    count_in_connect(1);
    return 0;
}

TRACEPOINT_PROBE(ipi, ipi_send_cpumask) {
    count_in_connect(1);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_waking) {
    count_in_connect(0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 tid = args->pid;
    struct call *c = calls.lookup(&tid);
    if (!c || !c->off_start || c->waiting)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u32 phase = c->phase > 2 ? 2 : c->phase;
    c->sleep_ns[phase] += now - c->off_start;
    c->off_start = now;
    c->waiting = 1;
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid;
    struct call *c = calls.lookup(&prev);
    if (c) {
        u32 phase = c->phase > 2 ? 2 : c->phase;
        c->off_start = now;
        c->switches[phase]++;
        if ((args->prev_state & 0xff) == 0) {
            c->waiting = 1;
            if (c->preempts[0] == 0 && c->preempts[1] == 0 && c->preempts[2] == 0)
                __builtin_memcpy(c->by, args->next_comm, sizeof(c->by));
            c->preempts[phase]++;
        } else {
            c->waiting = 0;
        }
    }
    u32 next = args->next_pid;
    struct call *n = calls.lookup(&next);
    if (n && n->off_start) {
        u32 phase = n->phase > 2 ? 2 : n->phase;
        u64 off = now - n->off_start;
        if (n->waiting)
            n->runnable_ns[phase] += off;
        else
            n->sleep_ns[phase] += off;
        n->off_start = 0;
    }
    return 0;
}
""".replace("COMM", COMM)


class _Event(ctypes.Structure):
    _fields_ = [
        ("setup_ns", ctypes.c_uint64),
        ("connect_ns", ctypes.c_uint64),
        ("after_ns", ctypes.c_uint64),
        ("runnable_ns", ctypes.c_uint64 * 3),
        ("sleep_ns", ctypes.c_uint64 * 3),
        ("switches", ctypes.c_uint32 * 3),
        ("preempts", ctypes.c_uint32 * 3),
        ("cpu0", ctypes.c_uint32),
        ("cpu1", ctypes.c_uint32),
        ("ipis", ctypes.c_uint32),
        ("wakings", ctypes.c_uint32),
        ("by", ctypes.c_char * 16),
    ]


# socket() to connect(); inside connect(); from its return to the next write()
PHASES = ("before_connect", "in_connect", "after_connect")


@dataclass
class ConnectCalls:
    """The traced connect() calls of one run."""

    setup_ns: list[int] = field(default_factory=list)
    connect_ns: list[int] = field(default_factory=list)
    after_ns: list[int] = field(default_factory=list)
    # by phase (PHASES): off-CPU time of each call, and how many calls left the CPU / were preempted
    runnable_ns: list[list[int]] = field(default_factory=lambda: [[] for _ in PHASES])
    sleep_ns: list[list[int]] = field(default_factory=lambda: [[] for _ in PHASES])
    switched: list[int] = field(default_factory=lambda: [0 for _ in PHASES])
    preempted: list[int] = field(default_factory=lambda: [0 for _ in PHASES])
    migrated: int = 0  # calls that returned on another CPU than they began on
    wakings: int = 0  # tasks woken from inside connect(), all calls
    # connect()'s own time, by whether it sent an inter-processor interrupt (woke a task on,
    # or kicked, another CPU) or not
    with_ipi_ns: list[int] = field(default_factory=list)
    without_ipi_ns: list[int] = field(default_factory=list)
    preempted_by: Counter[str] = field(default_factory=Counter)

    def add(self, event: _Event) -> None:
        self.setup_ns.append(event.setup_ns)
        self.connect_ns.append(event.connect_ns)
        self.after_ns.append(event.after_ns)
        for phase in range(len(PHASES)):
            self.runnable_ns[phase].append(event.runnable_ns[phase])
            self.sleep_ns[phase].append(event.sleep_ns[phase])
            self.switched[phase] += event.switches[phase] > 0
            self.preempted[phase] += event.preempts[phase] > 0
        self.migrated += event.cpu0 != event.cpu1
        self.wakings += event.wakings
        (self.with_ipi_ns if event.ipis else self.without_ipi_ns).append(event.connect_ns)
        if any(event.preempts):
            self.preempted_by[event.by.decode(errors="replace")] += 1

    def summary(self) -> dict[str, Any]:
        """What the calls of the run say, in microseconds and fractions of calls."""
        count = len(self.connect_ns)
        if not count:
            return {"calls": 0}
        summary: dict[str, Any] = {
            "calls": count,
            "socket_to_connect_p50_us": percentile(self.setup_ns, 0.5) / 1000,
            "connect_p50_us": percentile(self.connect_ns, 0.5) / 1000,
            "return_to_write_p50_us": percentile(self.after_ns, 0.5) / 1000,
            "migrated": self.migrated / count,
            "wakings_per_call": self.wakings / count,
            "with_ipi": len(self.with_ipi_ns) / count,
            "connect_p50_us_with_ipi": _p50_us(self.with_ipi_ns),
            "connect_p50_us_without_ipi": _p50_us(self.without_ipi_ns),
            "preempted_by": dict(self.preempted_by.most_common(5)),
        }
        for phase, name in enumerate(PHASES):
            summary[name] = {
                "switched": self.switched[phase] / count,
                "preempted": self.preempted[phase] / count,
                "mean_runnable_us": sum(self.runnable_ns[phase]) / count / 1000,
                "mean_sleep_us": sum(self.sleep_ns[phase]) / count / 1000,
            }
        return summary


def _p50_us(samples: list[int]) -> float | None:
    return percentile(samples, 0.5) / 1000 if samples else None


def _mount_tracefs() -> None:
    """bcc reads the tracepoints' formats from tracefs, which this machine does not mount."""
    if not TRACEFS.joinpath("events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True, timeout=10)


class ConnectTracer:
    """Attached for its lifetime; `take()` returns the calls completed since the last take()."""

    def __init__(self) -> None:
        from bcc import BPF  # root and the system's bcc; imported here so the module loads anywhere

        _mount_tracefs()
        self._bpf = BPF(text=_PROGRAM)
        self._calls = ConnectCalls()
        self._bpf["events"].open_perf_buffer(self._on_event, page_cnt=256)

    def _on_event(self, _cpu: int, data: Any, _size: int) -> None:
        self._calls.add(ctypes.cast(data, ctypes.POINTER(_Event)).contents)

    def take(self) -> ConnectCalls:
        while self._drain():
            pass
        calls, self._calls = self._calls, ConnectCalls()
        return calls

    def _drain(self) -> bool:
        before = len(self._calls.connect_ns)
        self._bpf.perf_buffer_poll(timeout=10)
        return len(self._calls.connect_ns) != before

    def close(self) -> None:
        self._bpf.cleanup()


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h) up to run_cnt."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
    ]


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


class ProgramTimes:
    """How long Weft's eBPF programs run (the kernel's own accounting, kernel.bpf_stats_enabled,
    switched on while this exists): `snapshot()` gives name -> (runs, ns) summed over every
    loaded program of that name (one per agent)."""

    PREFIX = b"weft_"

    def __init__(self) -> None:
        self._was = BPF_STATS.read_text().strip()
        BPF_STATS.write_text("1")
        self._lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        for name in ("bpf_prog_get_next_id", "bpf_obj_get_info_by_fd", "bpf_prog_get_fd_by_id"):
            getattr(self._lib, name).restype = ctypes.c_int

    def snapshot(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        prog_id = ctypes.c_uint32(0)
        while self._lib.bpf_prog_get_next_id(prog_id, ctypes.byref(prog_id)) == 0:
            fd = self._lib.bpf_prog_get_fd_by_id(prog_id)
            if fd < 0:
                continue
            try:
                info = _ProgInfo()
                size = ctypes.c_uint32(ctypes.sizeof(info))
                if self._lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)):
                    continue
            finally:
                os.close(fd)
            if info.name.startswith(self.PREFIX):
                name = info.name.decode()
                runs, ns = totals.get(name, (0, 0))
                totals[name] = (runs + info.run_cnt, ns + info.run_time_ns)
        return totals

    def close(self) -> None:
        BPF_STATS.write_text(self._was)


def program_costs(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], connections: int
) -> dict[str, dict[str, float]]:
    """Per program: runs per connection and ns per run between two snapshots."""
    costs: dict[str, dict[str, float]] = {}
    for name, (runs, ns) in after.items():
        runs0, ns0 = before.get(name, (0, 0))
        if runs > runs0:
            costs[name] = {
                "runs_per_connection": (runs - runs0) / max(connections, 1),
                "ns_per_run": (ns - ns0) / (runs - runs0),
            }
    return costs
