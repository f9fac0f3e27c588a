"""The `weft` dispatcher: help, unknown commands, exit codes, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from weft.cli import COMMAND_FAMILIES, main
from weft.errors import ConfigError, ExitCode


def test_help_lists_every_command_family(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for family in COMMAND_FAMILIES:
        assert f"  {family.name} " in out
    assert "examples:" in out


def test_unknown_command_exits_with_usage_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == ExitCode.USAGE
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_family_modules_are_not_imported_by_the_dispatcher() -> None:
    code = (
        "import sys, weft.cli; "
        "mods = ('bcc', 'grpc', 'controller', 'agent', 'vm.lab'); "
        "heavy = [m for m in mods if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_config_error_names_file_field_and_expectation() -> None:
    err = ConfigError("vm/topology.yaml", "nodes[1].podCIDR", "an IPv4 CIDR like 10.88.1.0/24", "x")
    text = str(err)
    assert "vm/topology.yaml" in text
    assert "nodes[1].podCIDR" in text
    assert "10.88.1.0/24" in text
    assert err.exit_code == ExitCode.USAGE
