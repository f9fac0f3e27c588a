"""The Vagrant lab on real VMs (vm/vagrant/): qemu-emulated controller + 2 nodes, meshed by Weft.

Builds the Debian box when absent (cached after), starts libvirtd in the lab's netns, boots and
provisions the VMs from what the host ships (the waypoint shop/waypoint as a unit on node2,
joined with its own token), and proves on the same VMs a meshed call from node1 to node2 on the
VMs' private network and an HTTP call from node1 through the waypoint. Prints each phase's
duration. Slow by nature (software emulation): the whole file stays under 20 minutes on a fresh
machine of the CI kind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm.vagrant import lab, libvirt, waypoint, waypointcall
from vm.vagrant.meshcall import meshed_call
from vm.vagrant.steps import StepError
from vm.vagrant.waypoint import LabWaypoint
from vm.vagrant.waypointcall import BACKENDS, FRONTEND, WaypointCallResult

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
    with timings.measure("waypoint demo workloads started", _progress):
        # Started now, so that their servers start while the meshed call runs.
        waypointcall.start()
    with timings.measure("meshed call node1 -> node2", _progress):
        result = meshed_call("node1", "node2")
    with timings.measure("call through the waypoint", _progress):
        through = waypointcall.call_through_waypoint()
        _check_waypoint(through)
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

    with timings.measure("a waypoint that cannot start", _progress):
        _check_a_waypoint_that_cannot_start_fails_its_step(through.waypoint)

    _progress("phases:\n" + timings.report())
    _progress(f"whole test so far: {time.monotonic() - started:.0f} s")
    assert result.reply.startswith(b"WEFT-VM-MARKER-")
    assert result.hbone_segments > 0, f"no HBONE (:15008) traffic on the fabric ({result.pcap})"
    assert result.tls_records > 0, f"the :15008 traffic is not TLS ({result.pcap})"
    assert result.plaintext_hits == 0, f"the marker crossed the fabric in clear ({result.pcap})"
    assert result.direct_segments == 0, f"the echo port was reached directly ({result.pcap})"
    assert os.path.getsize(result.pcap) > 0


def _check_waypoint(result: WaypointCallResult) -> None:
    """The waypoint's unit, state dir and journal on its VM, and what it did with the calls."""
    wp = result.waypoint
    assert lab.guest(wp.node, f"systemctl is-active {wp.unit}").stdout.strip() == "active"
    modes = lab.guest(
        wp.node, f"stat -c '%a %U' /var/lib/weft/waypoints/{wp.instance} "
        f"/var/lib/weft/waypoints/{wp.instance}/svid.pem /etc/weft/waypoint-{wp.instance}.token",
    ).stdout.split("\n")  # fmt: skip
    assert modes[:3] == ["700 root", "600 root", "600 root"], modes
    reply = result.reply
    version = reply.headers.get("x-demo-version")
    assert (reply.status, version in ("v1", "v2")) == (200, True), reply
    document = json.loads(reply.body)
    product = int(result.path.split("/")[-1])
    assert (document["product_id"], document["version"]) == (product, version)
    # The demo's AuthorizationPolicy, enforced by the waypoint: the frontend may only GET.
    assert result.denied.status == 403, result.denied
    assert "RBAC: access denied" in result.denied.body
    assert result.requests_after >= result.requests_before + 1, result
    line = result.access_log
    backend = next(b for b in BACKENDS if b.labels["version"] == version)
    assert (line["response_code"], line["upstream_host"]) == (200, f"{backend.ip}:8080"), line
    assert line["source_principal"] == f"spiffe://cluster.local/ns/shop/sa/{FRONTEND.name}", line
    assert line["connection_security_policy"] == "mutual_tls", line


def _check_a_waypoint_that_cannot_start_fails_its_step(wp: LabWaypoint) -> None:
    """Last, on the same VMs: the readiness step of `up` fails naming itself, the unit's
    journal, and the lab log that has its last lines."""
    lab.guest(
        wp.node, f"sed -i 's/^WEFT_WAYPOINT_ADDRESS=.*/WEFT_WAYPOINT_ADDRESS=not-an-ip/' "
        f"/etc/weft/waypoint-{wp.instance}.env && systemctl restart {wp.unit}",
    )  # fmt: skip
    with pytest.raises(StepError) as failure:
        waypoint.wait_ready(_progress, timeout=120)
    error = failure.value
    assert error.step == f"waypoint {wp.reference} on {wp.node}"
    assert f"journalctl -u {wp.unit}` on {wp.node}" in error.message
    assert "restarts" in error.message, error.message
    assert error.log == lab.log_file()
    assert "'not-an-ip' is not an IPv4 address" in lab.log_file().read_text()
