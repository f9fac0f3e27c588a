"""The Vagrant lab on real VMs (vm/vagrant/): qemu-emulated controller + 2 nodes, meshed by Weft.

Builds the Debian box when absent (cached after), starts libvirtd in the lab's netns, boots and
provisions the VMs from what the host ships, and proves a meshed call from node1 to node2 on
the VMs' private network. Prints each phase's duration. Slow by nature (software emulation):
the whole file stays under 20 minutes on a fresh machine of the CI kind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm.vagrant import lab, libvirt
from vm.vagrant.meshcall import meshed_call
from vm.vagrant.steps import StepError

WORKERS = ("node1", "node2")


def _nothing_left() -> list[str]:
    """What of the Vagrant lab still exists: netns, daemons, domains' qemu processes."""
    left = []
    if libvirt.NETNS_PATH.exists():
        left.append(f"netns {libvirt.NETNS}")
    for name in libvirt.DAEMONS:
        pid = libvirt.daemon_pid(name)
        if pid is not None:
            left.append(f"{name} pid {pid}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"/usr/bin/qemu-system") and b"weft-" in cmdline:
                left.append(f"qemu pid {proc.name}")
    return left


@pytest.fixture
def clean_slate(lab_lock: None) -> Iterator[None]:
    lab.down()
    yield
    lab.down()
    assert _nothing_left() == []


def _progress(line: str) -> None:
    print(f"[vagrant-lab {time.strftime('%H:%M:%S')}] {line}", flush=True)


# The first test on a fresh machine builds the box (up to ~10 minutes): hence the timeout.
@pytest.mark.timeout(1500)
def test_a_vm_not_up_in_time_fails_naming_the_step_and_log_and_leaves_nothing(
    clean_slate: None,
) -> None:
    with pytest.raises(StepError) as failure:
        lab.up(progress=_progress, up_timeout=5)
    error = failure.value
    assert error.step == "vagrant up"
    assert "not up and provisioned within 5 s" in error.message
    assert error.log == lab.log_file()
    assert str(lab.log_file()) in str(error)
    assert lab.log_file().is_file()
    assert _nothing_left() == []


@pytest.mark.timeout(1800)
def test_meshed_call_between_vms_crosses_the_private_network_as_tls(clean_slate: None) -> None:
    started = time.monotonic()
    timings = lab.up(progress=_progress)

    with timings.measure("units and eBPF checked", _progress):
        assert lab.guest("control", "systemctl is-active weft-controller").stdout.strip() == (
            "active"
        )
        journal = lab.guest("control", "journalctl -u weft-controller --no-pager -n 50").stdout
        assert journal.strip(), "journalctl shows the controller's log"
    with timings.measure("meshed call node1 -> node2", _progress):
        result = meshed_call("node1", "node2")
    with timings.measure("agents checked", _progress):
        for node in WORKERS:
            assert lab.guest(node, "systemctl is-active weft-agent").stdout.strip() == "active"
            # Capture is attached in the guest's own kernel: Debian 12's backports kernel
            # (sockmap programs attach by bpf_link only since Linux 6.10).
            release = lab.guest(node, "uname -r").stdout.strip()
            assert tuple(int(p) for p in release.split(".")[:2]) >= (6, 10), release
            assert "Debian" in lab.guest(node, "uname -v").stdout
            pins = lab.guest(node, "ls -R /sys/fs/bpf").stdout
            assert "weft" in pins, pins
        metrics = lab.guest("node1", "curl -sS http://127.0.0.1:15020/metrics").stdout
        opened = [
            line
            for line in metrics.splitlines()
            if line.startswith("istio_tcp_connections_opened_total") and not line.endswith(" 0.0")
        ]
        assert opened, "node1's agent counted the client's connection"

    _progress("phases:\n" + timings.report())
    _progress(f"whole test so far: {time.monotonic() - started:.0f} s")
    assert result.reply.startswith(b"WEFT-VM-MARKER-")
    assert result.hbone_segments > 0, f"no HBONE (:15008) traffic on the fabric ({result.pcap})"
    assert result.tls_records > 0, f"the :15008 traffic is not TLS ({result.pcap})"
    assert result.plaintext_hits == 0, f"the marker crossed the fabric in clear ({result.pcap})"
    assert result.direct_segments == 0, f"the echo port was reached directly ({result.pcap})"
    assert os.path.getsize(result.pcap) > 0
