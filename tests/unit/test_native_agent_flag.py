"""`weft agent run --data-path`: native by default where weft._native is built, else python."""

from __future__ import annotations

import argparse

import pytest

from agent.main import config_from_args, register_run
from weft.hbone import HbonePool, native_available
from weft.hbone.errors import HboneError

REQUIRED = ["--node", "node1", "--controller", "10.0.0.1:15012"]


def parse(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_run(parser)
    return parser.parse_args([*REQUIRED, *extra])


def test_the_default_is_native_where_it_is_built() -> None:
    expected = "native" if native_available() else "python"
    assert config_from_args(parse()).data_path == expected


@pytest.mark.parametrize("path", ["native", "python"])
def test_the_flag_picks_the_data_path(path: str) -> None:
    assert config_from_args(parse("--data-path", path)).data_path == path


def test_an_unknown_data_path_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--data-path", "kernel")
    assert "invalid choice: 'kernel'" in capsys.readouterr().err


def test_the_pool_refuses_an_unknown_data_path_with_a_hint() -> None:
    with pytest.raises(HboneError) as raised:
        HbonePool(lambda source: None, data_path="fast")  # type: ignore[arg-type,return-value]
    assert "use one of python, native" in str(raised.value.hint)
