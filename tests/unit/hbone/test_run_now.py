"""run_now(): run a coroutine synchronously as far as it can go; on in a task if it waits."""

from __future__ import annotations

import asyncio

import pytest

from weft.hbone.run_now import Pending, in_task, run_now


async def _add(a: int, b: int) -> int:
    return a + b


async def _fail() -> None:
    raise LookupError("no such workload")


def test_a_coroutine_that_never_waits_returns_its_result_at_once() -> None:
    assert run_now(_add(2, 3)) == 5


def test_its_exception_propagates_as_from_await() -> None:
    with pytest.raises(LookupError, match="no such workload"):
        run_now(_fail())


def test_a_coroutine_that_waits_goes_on_in_a_task_with_the_awaited_value() -> None:
    asyncio.run(_test_a_coroutine_that_waits_goes_on_in_a_task_with_the_awaited_value())


async def _test_a_coroutine_that_waits_goes_on_in_a_task_with_the_awaited_value() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[int] = loop.create_future()
    steps: list[str] = []

    async def waits() -> int:
        steps.append("before")
        value = await ready
        steps.append("after")
        return value * 2

    outcome = run_now(waits())
    assert isinstance(outcome, Pending)
    assert steps == ["before"]  # ran synchronously up to the await
    task = loop.create_task(outcome.resume())
    await asyncio.sleep(0)
    assert not task.done()
    ready.set_result(21)
    assert await task == 42
    assert steps == ["before", "after"]


def test_an_exception_after_the_wait_reaches_the_task() -> None:
    asyncio.run(_test_an_exception_after_the_wait_reaches_the_task())


async def _test_an_exception_after_the_wait_reaches_the_task() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    async def waits_then_fails() -> None:
        await ready
        raise ConnectionResetError("workload reset")

    outcome = run_now(waits_then_fails())
    assert isinstance(outcome, Pending)
    task = loop.create_task(outcome.resume())
    ready.set_result(None)
    with pytest.raises(ConnectionResetError):
        await task


def test_cancelling_the_task_reaches_the_coroutine() -> None:
    asyncio.run(_test_cancelling_the_task_reaches_the_coroutine())


async def _test_cancelling_the_task_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def waits_forever() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    outcome = run_now(waits_forever())
    assert isinstance(outcome, Pending)
    task = loop.create_task(outcome.resume())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


def test_in_task_moves_the_rest_into_the_task_where_a_timeout_works() -> None:
    asyncio.run(_test_in_task_moves_the_rest_into_the_task_where_a_timeout_works())


async def _test_in_task_moves_the_rest_into_the_task_where_a_timeout_works() -> None:
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[object] | None] = []

    async def needs_a_task() -> str:
        await in_task()
        tasks.append(asyncio.current_task())
        async with asyncio.timeout(0.01):
            await loop.create_future()
        return "unreachable"

    outcome = run_now(needs_a_task())
    assert isinstance(outcome, Pending)
    assert tasks == []  # nothing after in_task() ran synchronously
    task = loop.create_task(outcome.resume())
    with pytest.raises(TimeoutError):
        await task
    assert tasks == [task]  # the timeout was bound to the task that runs the rest


def test_in_task_within_some_other_task_still_defers_to_a_task_of_its_own() -> None:
    asyncio.run(_test_in_task_within_some_other_task_still_defers_to_a_task_of_its_own())


async def _test_in_task_within_some_other_task_still_defers_to_a_task_of_its_own() -> None:
    # A C callback can call run_now() from inside another task's call into C: in_task() must
    # not take that task for the coroutine's own (a timeout would cancel the wrong task).
    loop = asyncio.get_running_loop()

    async def needs_a_task() -> str:
        await in_task()
        return "in its own task"

    outcome = run_now(needs_a_task())  # this test itself runs in a task
    assert isinstance(outcome, Pending)
    assert await loop.create_task(outcome.resume()) == "in its own task"


def test_in_task_is_a_no_op_inside_a_task() -> None:
    asyncio.run(_test_in_task_is_a_no_op_inside_a_task())


async def _test_in_task_is_a_no_op_inside_a_task() -> None:
    async def already_in_a_task() -> int:
        await in_task()
        return 7

    assert await already_in_a_task() == 7
