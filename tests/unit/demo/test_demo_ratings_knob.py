"""demo.ratings' failure knob: exactly the asked fraction of the calls carrying it fail, evenly."""

from __future__ import annotations

from typing import Any

import pytest

from demo.ratings import UNAVAILABLE_KNOB, FailureKnob


class Context:
    """Stands in for grpc.aio's ServicerContext: only the call's metadata is read."""

    def __init__(self, value: str | None) -> None:
        self.value = value

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.value is None else ((UNAVAILABLE_KNOB, self.value),)


def outcomes(knob: FailureKnob, value: str | None, count: int) -> list[bool]:
    context: Any = Context(value)
    return [knob.should_fail(context) for _ in range(count)]


@pytest.mark.parametrize(("value", "failures"), [("0.5", 50), ("0.3", 30), ("1", 100), ("0", 0)])
def test_the_fraction_of_calls_carrying_the_knob_fail(value: str, failures: int) -> None:
    assert sum(outcomes(FailureKnob(), value, 100)) == failures


def test_half_alternates_starting_with_a_success() -> None:
    assert outcomes(FailureKnob(), "0.5", 6) == [False, True] * 3


def test_each_fraction_counts_its_own_calls() -> None:
    knob = FailureKnob()
    assert outcomes(knob, "0.5", 1) == [False]
    assert outcomes(knob, "1", 1) == [True]
    assert outcomes(knob, "0.5", 1) == [True]  # the second call at 0.5, whatever came between


def test_calls_without_the_knob_or_with_garbage_are_served_and_not_counted() -> None:
    knob = FailureKnob()
    assert outcomes(knob, None, 5) == [False] * 5
    assert outcomes(knob, "often", 5) == [False] * 5
    assert knob.calls == {}
