"""Run a coroutine synchronously as far as it goes without waiting; continue it in a task if not.

The native data path answers most tunnels within the loop callback that heard of them (the
policy decision and a connect to a local workload finish without waiting): a task, its
futures and their callbacks per connection were a measurable part of an agent's CPU. The same
coroutine serves both cases, so the rare one that must wait keeps the code path of the common
one.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """A coroutine that suspended in run_now(): `await pending.resume()` (in a task) goes on."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def resume(self) -> Coroutine[Any, Any, T]:
        return _resume(self._coro, self._yielded)


# True while run_now() drives a coroutine outside any task of its own. in_task() reads this
# rather than asyncio.current_task(): a C callback can run inside some task's call into C, and
# that task is not the one the coroutine will continue in.
_driving = False


def run_now(coro: Coroutine[Any, Any, T]) -> T | Pending[T]:
    """`coro`'s result if it finishes without suspending; else a Pending to finish in a task.
    Its exceptions propagate as they would from `await coro`."""
    global _driving
    outer, _driving = _driving, True
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        _driving = outer
    return Pending(coro, yielded)


class _InTask:
    """What in_task() yields to run_now(): go on in a task from here."""


_IN_TASK = _InTask()


@types.coroutine
def _yield_in_task() -> Generator[Any, Any, None]:
    yield _IN_TASK


async def in_task() -> None:
    """Within run_now(): go on in a task from here (asyncio.timeout() and the like need one).
    Elsewhere (already in a task): nothing."""
    if _driving:
        await _yield_in_task()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Hand what `coro` yielded (a future) to the running task, and feed back what it sends."""
    if yielded is _IN_TASK:  # now in the task: go on at once
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
    while True:
        try:
            value = yield yielded
        except BaseException as error:  # cancellation included: the coroutine sees it
            try:
                yielded = coro.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
