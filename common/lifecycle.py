"""One lifecycle for every process: signals set an event, the service drains, then exits.

The first SIGTERM/SIGINT sets `stop`; the service flushes and returns within the shutdown
timeout, or is cancelled. A second signal exits at once. A task that dies takes the process down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from common.gcpolicy import collect_when_quiet, quiet_offset_ms

log = logging.getLogger(__name__)

ServiceMain = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def run_service(
    main: ServiceMain, shutdown_timeout_s: float, *, quiet_ms: int = quiet_offset_ms(80)
) -> int:
    """Run `main(stop)` on uvloop (where available) and return the process exit code. Full
    garbage collections happen `quiet_ms` past whole seconds (common.gcpolicy; the default suits
    the default waiter latency, 80 ms)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        return asyncio.run(_supervise(main, shutdown_timeout_s, quiet_ms))
    return uvloop.run(_supervise(main, shutdown_timeout_s, quiet_ms))


async def _supervise(main: ServiceMain, shutdown_timeout_s: float, quiet_ms: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    collector = asyncio.create_task(collect_when_quiet(stop, quiet_ms), name="gc")
    try:

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: exiting at once", signal.Signals(signum).name)
                os._exit(1)
            log.info("%s received: draining", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        task = asyncio.create_task(main(stop), name="service")
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=shutdown_timeout_s)
            if not done:
                log.error("drain took longer than %.1fs: cancelling", shutdown_timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return 1
        stop_wait.cancel()
        if task.cancelled():
            return 1
        exc = task.exception()
        if exc is not None:
            log.critical("service failed: %r", exc, exc_info=exc)
            return 1
        log.info("stopped")
        return 0
    finally:
        collector.cancel()


class TaskSet:
    """Keeps a reference to every task; the first task that fails is re-raised by `wait_failed`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._failed.done():
            log.error("task %s died: %r", task.get_name(), exc)
            self._failed.set_result(exc)

    async def wait_failed(self) -> None:
        """Return never, unless a task died: then raise its exception."""
        raise await self._failed

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


async def sleep_or_stop(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep `delay_s`, less if `stop` is set meanwhile; True when stopped (a retry loop's
    pause, a periodic task's period: a stop signal never waits for the rest of it)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    return stop.is_set()


async def until_stopped(stop: asyncio.Event, tasks: TaskSet) -> None:
    """Wait for a stop signal; raise at once if one of `tasks` dies first."""
    stop_task = asyncio.ensure_future(stop.wait())
    fail_task = asyncio.ensure_future(tasks.wait_failed())
    done, pending = await asyncio.wait({stop_task, fail_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if fail_task in done:
        fail_task.result()


def exit_with_config_error(message: str) -> None:
    """Print one line per problem to stderr and exit 2 (bad settings are not retried)."""
    for line in message.splitlines():
        print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2)
