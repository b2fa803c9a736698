"""Bounded waits for the stop, reload and rollback paths: nothing there may wait for ever.

``asyncio.timeout`` cannot bound an ``await`` on a task that swallows its cancellation (the
timeout works by cancelling; ``asyncio.wait_for`` on Python 3.11 swallows a cancellation when
its result arrives at the same moment, and pymodbus wraps every request in it). So the stop
paths wait with ``asyncio.wait``, which returns when its time is up whatever the task does:
cancel, wait, cancel again, wait, and then leave the task behind with one log line that says
where it is stuck.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

log = logging.getLogger("sensegate.stop")
CANCEL_GRACE = 1.0  # a task cancelled because its time ran out gets this long to unwind


async def stop_task(task: asyncio.Future[Any], waits: Iterable[float]) -> bool:
    """Cancel ``task`` and wait up to each of ``waits`` in turn, cancelling again before each
    one; True once it is done, False if it still runs after the last wait.

    If the caller itself is cancelled meanwhile, the task is cancelled once more and the
    caller's cancellation goes on (the task is then not waited for)."""
    for wait in waits:
        if task.done():
            break
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            task.cancel()
            raise
    if task.done():
        consume(task)
        return True
    return False


async def settle(aw: Awaitable[Any], within: float, what: str) -> bool:
    """Await ``aw`` for at most ``within`` seconds (then cancel it, and give up on it if it
    will not stop); True if it finished in time. Its exceptions are logged, never raised."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task}, timeout=max(within, 0.0))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        consume(task, what)
        return True
    if await stop_task(task, (CANCEL_GRACE,)):
        log.warning("%s did not finish within %.3g s; cancelled", what, within)
    else:
        abandon(task, f"{what} did not finish within {within:.3g} s and would not stop when cancelled")
    return False


def abandon(task: asyncio.Future[Any], why: str, logger: logging.Logger = log) -> None:
    """Leave a task that will not stop behind: say once where it is stuck; should it end
    later, its outcome is collected (never a 'Task exception was never retrieved')."""
    logger.error("%s; left behind, stuck at:\n%s", why, where(task))
    task.add_done_callback(consume)


def consume(task: asyncio.Future[Any], what: str = "") -> None:
    """Collect a finished task's outcome; an exception is logged (the stop path never raises)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        name = what or (task.get_name() if isinstance(task, asyncio.Task) else "a task")
        log.warning("%s ended with %s: %s", name, type(exc).__name__, exc)


def where(task: asyncio.Future[Any]) -> str:
    """The chain of awaits a task is suspended in, outermost first, one frame per line.

    ``Task.get_stack()`` shows only the task's own coroutine frame, not what it awaits."""
    lines: list[str] = []
    obj: Any = task.get_coro() if isinstance(task, asyncio.Task) else task
    for _ in range(100):  # a chain is short; the bound guards against a cycle
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is None:
            lines.append(f"  awaiting {_short(obj)}")
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
        if nxt is None:
            break
        obj = nxt
    return "\n".join(lines)


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 200 else text[:197] + "..."
