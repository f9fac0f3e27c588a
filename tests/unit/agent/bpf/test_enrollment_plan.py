"""Enrollment planning: the diff between the map's entries and the agent's desired state."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from agent.bpf.maps import Enrollment, Inbound, Mode
from agent.capture.enrollment import plan_enrollment

AGENT = IPv4Address("10.88.1.1")
AMBIENT = Enrollment(Mode.AMBIENT, Inbound.PERMISSIVE, AGENT)
STRICT = Enrollment(Mode.AMBIENT, Inbound.STRICT, AGENT)
OPTED_OUT = Enrollment(Mode.NONE, Inbound.PERMISSIVE, AGENT)


def test_unchanged_entries_are_not_rewritten() -> None:
    assert plan_enrollment({1: AMBIENT}, {1: AMBIENT}).empty


def test_new_changed_and_vanished_workloads_are_each_handled() -> None:
    plan = plan_enrollment(
        {1: AMBIENT, 2: AMBIENT, 3: AMBIENT}, {1: AMBIENT, 2: STRICT, 4: OPTED_OUT}
    )
    assert plan.upserts == ((2, STRICT), (4, OPTED_OUT))
    assert plan.removals == (3,)


def test_an_opted_out_workload_keeps_an_entry_saying_so() -> None:
    plan = plan_enrollment({5: AMBIENT}, {5: OPTED_OUT})
    assert plan.upserts == ((5, OPTED_OUT),)
    assert plan.removals == ()


entries = st.sampled_from([AMBIENT, STRICT, OPTED_OUT])
tables = st.dictionaries(st.integers(min_value=1, max_value=50), entries, max_size=20)


@given(current=tables, desired=tables)
def test_applying_the_plan_yields_exactly_the_desired_table(
    current: dict[int, Enrollment], desired: dict[int, Enrollment]
) -> None:
    plan = plan_enrollment(current, desired)
    result = dict(current)
    for cg_id, entry in plan.upserts:
        result[cg_id] = entry
    for cg_id in plan.removals:
        del result[cg_id]
    assert result == desired
    assert plan_enrollment(result, desired).empty
