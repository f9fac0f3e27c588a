"""`weft agent attach | enroll | maps | detach` against a throwaway cgroup and pin root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_sandbox import CgroupTree

from agent.bpf.links import cgroup_id
from agent.bpf.programs import NODE
from weft.cli import main
from weft.errors import ExitCode


def test_attach_enroll_dump_and_purge_through_the_cli(
    cgroups: CgroupTree, pin_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scope = ["--scope", "cli", "--pin-root", str(pin_root)]
    web = cgroups.make("workloads/web")

    assert main(["agent", "attach", *scope, "--workloads-cgroup", str(cgroups.workloads)]) == 0
    assert main(["agent", "attach", *scope, "--workloads-cgroup", str(cgroups.workloads)]) == 0
    out = capsys.readouterr().out
    assert out.count("attached ") == len(NODE)  # first run
    assert out.count("reused ") == len(NODE)  # second run: no second attachment

    enroll = ["--cgroup", str(web), "--agent-addr", "10.88.1.1", "--inbound", "strict"]
    assert main(["agent", "enroll", *scope, *enroll]) == 0
    capsys.readouterr()
    assert main(["agent", "maps", *scope, "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(link["function"] for link in report["links"]) == sorted(s.function for s in NODE)
    assert report["workloads"] == [
        {
            "cgroup_id": cgroup_id(web),
            "mode": "ambient",
            "inbound": "strict",
            "agent_addr": "10.88.1.1",
            "counters": {"captured": 0, "passed": 0, "inbound_dropped": 0, "spliced_bytes": 0},
        }
    ]

    assert report["splice"] == {"mode": "sk_msg", "pairs": []}  # this kernel attaches sk_msg
    assert main(["agent", "maps", *scope]) == 0
    assert "same-node splice: sk_msg" in capsys.readouterr().out

    assert main(["agent", "detach", *scope, "--purge"]) == 0
    assert not (pin_root / "cli").exists()
    assert main(["agent", "maps", *scope]) == ExitCode.UNAVAILABLE
    assert "weft agent attach" in capsys.readouterr().err


def test_enroll_rejects_a_path_that_is_not_a_cgroup(
    tmp_path: Path, pin_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "agent",
            "enroll",
            "--scope",
            "cli",
            "--pin-root",
            str(pin_root),
            "--cgroup",
            str(tmp_path),
            "--agent-addr",
            "10.88.1.1",
        ]
    )
    assert code == ExitCode.USAGE
    assert "not a cgroup v2 directory" in capsys.readouterr().err
