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

/* Phase 0: inside connect(); phase 1: from connect()'s return to the next write() (conn_client
 * writes right after connect() returns, so a preemption on the way back to user space, which
 * delays connect()'s return as the client sees it, falls in phase 1). */
struct call {
    u64 start;
    u64 exit;          /* when connect() returned (phase 1 from then on) */
    u64 off_start;     /* when it last left the CPU, or was woken (0: on the CPU) */
    u64 runnable_ns[2];  /* preempted or woken, waiting for a CPU */
    u64 sleep_ns[2];     /* blocked, waiting for an event */
    u32 switches[2];
    u32 preempts[2];
    u32 cpu0;
    u32 cpu1;
    u32 waiting;       /* 1: runnable while off the CPU, 0: asleep */
    u32 phase;
    char by[16];       /* what took the CPU at its first preemption */
};
struct event {
    u64 connect_ns;
    u64 after_ns;
    u64 runnable_ns[2];
    u64 sleep_ns[2];
    u32 switches[2];
    u32 preempts[2];
    u32 cpu0;
    u32 cpu1;
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

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    if (!is_client())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {};
    c.start = bpf_ktime_get_ns();
    c.cpu0 = bpf_get_smp_processor_id();
    calls.update(&tid, &c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c)
        return 0;
    c->exit = bpf_ktime_get_ns();
    c->cpu1 = bpf_get_smp_processor_id();
    c->phase = 1;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call *c = calls.lookup(&tid);
    if (!c || !c->exit)
        return 0;
    struct event e = {};
    e.connect_ns = c->exit - c->start;
    e.after_ns = bpf_ktime_get_ns() - c->exit;
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        e.runnable_ns[i] = c->runnable_ns[i];
        e.sleep_ns[i] = c->sleep_ns[i];
        e.switches[i] = c->switches[i];
        e.preempts[i] = c->preempts[i];
    }
    e.cpu0 = c->cpu0;
    e.cpu1 = c->cpu1;
    __builtin_memcpy(e.by, c->by, sizeof(e.by));
    events.perf_submit(args, &e, sizeof(e));
    calls.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 tid = args->pid;
    struct call *c = calls.lookup(&tid);
    if (!c || !c->off_start || c->waiting)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u32 phase = c->phase & 1;
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
        u32 phase = c->phase & 1;
        c->off_start = now;
        c->switches[phase]++;
        if ((args->prev_state & 0xff) == 0) {
            c->waiting = 1;
            if (c->preempts[0] == 0 && c->preempts[1] == 0)
                __builtin_memcpy(c->by, args->next_comm, sizeof(c->by));
            c->preempts[phase]++;
        } else {
            c->waiting = 0;
        }
    }
    u32 next = args->next_pid;
    struct call *n = calls.lookup(&next);
    if (n && n->off_start) {
        u32 phase = n->phase & 1;
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
        ("connect_ns", ctypes.c_uint64),
        ("after_ns", ctypes.c_uint64),
        ("runnable_ns", ctypes.c_uint64 * 2),
        ("sleep_ns", ctypes.c_uint64 * 2),
        ("switches", ctypes.c_uint32 * 2),
        ("preempts", ctypes.c_uint32 * 2),
        ("cpu0", ctypes.c_uint32),
        ("cpu1", ctypes.c_uint32),
        ("by", ctypes.c_char * 16),
    ]


PHASES = ("in_connect", "after_connect")  # inside the system call; from its return to write()


@dataclass
class ConnectCalls:
    """The traced connect() calls of one run."""

    connect_ns: list[int] = field(default_factory=list)
    after_ns: list[int] = field(default_factory=list)
    runnable_ns: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    sleep_ns: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    switched: list[int] = field(default_factory=lambda: [0, 0])  # calls leaving the CPU, by phase
    preempted: list[int] = field(default_factory=lambda: [0, 0])  # calls preempted, by phase
    migrated: int = 0  # calls that returned on another CPU than they began on
    preempted_by: Counter[str] = field(default_factory=Counter)

    def add(self, event: _Event) -> None:
        self.connect_ns.append(event.connect_ns)
        self.after_ns.append(event.after_ns)
        for phase in (0, 1):
            self.runnable_ns[phase].append(event.runnable_ns[phase])
            self.sleep_ns[phase].append(event.sleep_ns[phase])
            self.switched[phase] += event.switches[phase] > 0
            self.preempted[phase] += event.preempts[phase] > 0
        self.migrated += event.cpu0 != event.cpu1
        if event.preempts[0] or event.preempts[1]:
            self.preempted_by[event.by.decode(errors="replace")] += 1

    def summary(self) -> dict[str, Any]:
        """What the calls of the run say, in microseconds and fractions of calls."""
        count = len(self.connect_ns)
        if not count:
            return {"calls": 0}
        summary: dict[str, Any] = {
            "calls": count,
            "connect_p50_us": percentile(self.connect_ns, 0.5) / 1000,
            "return_to_write_p50_us": percentile(self.after_ns, 0.5) / 1000,
            "migrated": self.migrated / count,
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
