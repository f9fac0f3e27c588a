"""bench.procstats: CPU seconds and peak memory of process trees, from the real /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.procstats import measure, parse_stat_cpu_ticks, parse_status_hwm_bytes, process_tree


def test_stat_parsing_counts_fields_after_a_command_name_with_spaces_and_parens() -> None:
    stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 1 0 5 0 0"
    assert parse_stat_cpu_ticks(stat) == 100


def test_status_parsing_reads_vmhwm_in_bytes() -> None:
    assert parse_status_hwm_bytes("Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n") == 2048 * 1024
    assert parse_status_hwm_bytes("Name:\tkthreadd\n") == 0


def test_measure_sees_cpu_burnt_by_a_child_process() -> None:
    # The child spins until it has used 1 s of CPU (or 20 s passed); a loaded machine only
    # makes this test wait longer, never fail.
    spin = (
        "import time\n"
        "end = time.monotonic() + 20\n"
        "while time.process_time() < 1.0 and time.monotonic() < end: pass"
    )
    burner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        assert burner.pid in process_tree(os.getpid())
        deadline = time.monotonic() + 20
        usage = measure([burner.pid])
        while usage.cpu_seconds < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
            usage = measure([burner.pid])
        assert usage.cpu_seconds >= 0.2
        assert usage.peak_rss_bytes > 1_000_000
    finally:
        burner.kill()
        burner.wait(timeout=10)


def test_measure_counts_a_missing_process_as_zero() -> None:
    usage = measure([2**22 + 12345])  # above pid_max's default: no such process
    assert usage.cpu_seconds == 0.0
    assert usage.peak_rss_bytes == 0
