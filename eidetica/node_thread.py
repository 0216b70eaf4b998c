"""A node's trio thread: one ``trio.run`` in a worker thread of its own, and the ways
other threads call into it. :mod:`eidetica.blocking` and :mod:`eidetica.aio` are thin
faces over it.

The thread opens the node (an async context such as ``eidetica.open_instance(path)``)
and a nursery, says it is ready, and waits to be told to stop; then it cancels what is
still held in the nursery, closes the node and ends. It is not a daemon: whoever
started it stops and joins it (leaving the ``with`` block does).

Calls come in three ways, each safe from any number of threads at once:

- :meth:`NodeThread.call` and :meth:`~NodeThread.call_sync` block the calling thread
  (``trio.from_thread``); an error raised in the node thread reaches the caller with
  its own type.
- :meth:`NodeThread.call_soon` starts a call in a task of the node thread and returns
  a future of its outcome at once, blocking no one: asyncio code awaits that future.
- :meth:`NodeThread.enter` opens an async context manager in a task of its own in the
  node's nursery and keeps it open until :meth:`~NodeThread.leave`: trio requires a
  context holding a nursery (a sync engine) to be left by the task that entered it.

Once the node has stopped, every call fails with :class:`~eidetica.errors.InstanceClosed`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import trio

from eidetica.errors import InstanceClosed

T = TypeVar("T")
R = TypeVar("R")

CLOSED = "the instance is closed: its node thread runs no more calls"


class _Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(eq=False)
class Held(Generic[T]):
    """One async context held open in the node thread, from :meth:`NodeThread.enter`
    to :meth:`NodeThread.leave`."""

    value: T
    leave: trio.Event = field(default_factory=trio.Event)
    left: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    """The error that ended the caller's block, thrown into the context on leaving."""
    suppressed: bool = False
    failure: Exception | None = None
    """What leaving the context raised."""


class NodeThread(Generic[T]):
    """The trio thread of one node, whose opened value (the instance) is :attr:`value`."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[T]], name: str) -> None:
        self._opener = opener
        self._thread = threading.Thread(target=self._run, name=name, daemon=False)
        self._ready: Future[T] = Future()
        self._finished: Future[None] = Future()
        self._phase = _Phase.STARTING
        self._phase_lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None

    def start(self) -> Future[T]:
        """Start the thread; the future holds the opened value, or the error opening
        raised (then the thread has ended)."""
        self._thread.start()
        return self._ready

    def request_stop(self) -> Future[None]:
        """Tell the node to stop, from any thread (the node's own too) and without
        waiting; one still opening stops once open. The future is done when it has
        closed, with the error closing raised if any. Asking again changes nothing."""
        with self._phase_lock:
            if self._phase is _Phase.STARTING:  # it stops as soon as it is open
                self._phase = _Phase.STOPPING
            elif self._phase is _Phase.RUNNING:
                self._phase = _Phase.STOPPING
                assert self._token is not None and self._stop is not None
                with suppress(trio.RunFinishedError):  # it ended by itself: see _finished
                    self._token.run_sync_soon(self._stop.set)
        return self._finished

    def join(self) -> None:
        """Wait for the thread to end (it ends just after it sets the stop future)."""
        self._thread.join()

    @property
    def value(self) -> T:
        return self._ready.result()

    def _run(self) -> None:
        failure: BaseException | None = None
        try:
            trio.run(self._main)
        except BaseException as exc:
            failure = exc
        with self._phase_lock:
            self._phase = _Phase.STOPPED
        if not self._ready.done():
            self._ready.set_exception(failure or InstanceClosed(CLOSED))
        if failure is None:
            self._finished.set_result(None)
        else:
            self._finished.set_exception(failure)

    async def _main(self) -> None:
        async with self._opener() as value, trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            with self._phase_lock:
                stopping = self._phase is _Phase.STOPPING
                self._phase = _Phase.STOPPING if stopping else _Phase.RUNNING
            self._ready.set_result(value)
            if not stopping:
                await self._stop.wait()
            nursery.cancel_scope.cancel()  # contexts the callers left open close now

    def _running_token(self) -> trio.lowlevel.TrioToken:
        if self._phase is not _Phase.RUNNING or self._token is None:
            raise InstanceClosed(CLOSED)
        return self._token

    def call(self, function: Callable[[], Awaitable[R]]) -> R:
        """Await ``function()`` in the node thread and return what it returns."""
        try:
            return trio.from_thread.run(function, trio_token=self._running_token())
        except (trio.RunFinishedError, trio.Cancelled):  # the node stopped meanwhile
            raise InstanceClosed(CLOSED) from None

    def call_sync(self, function: Callable[[], R]) -> R:
        """Run ``function()`` in the node thread (between its tasks) and return what it
        returns: for reading state that only the node thread may touch."""
        try:
            return trio.from_thread.run_sync(function, trio_token=self._running_token())
        except trio.RunFinishedError:
            raise InstanceClosed(CLOSED) from None

    def call_soon(self, function: Callable[[], Awaitable[R]]) -> Future[R]:
        """Start ``function()`` in a task of the node thread and return at once: the
        future gets its outcome (:class:`InstanceClosed` if the node stops first), and
        cancelling the future, from any thread, cancels the call."""
        token = self._running_token()
        future: Future[R] = Future()
        scope = trio.CancelScope()

        def settle(settle_future: Callable[[], None]) -> None:
            with suppress(InvalidStateError):  # the caller cancelled meanwhile
                settle_future()

        async def run() -> None:
            with scope:
                try:
                    value = await function()
                except Exception as exc:
                    settle(partial(future.set_exception, exc))
                except BaseException:  # cancelled: by the caller, or the node stopping
                    settle(partial(future.set_exception, InstanceClosed(CLOSED)))
                    raise
                else:
                    settle(partial(future.set_result, value))

        def cancel_on_cancel(done: Future[R]) -> None:
            if done.cancelled():
                with suppress(trio.RunFinishedError):  # the call ended with the node
                    token.run_sync_soon(scope.cancel)

        future.add_done_callback(cancel_on_cancel)
        try:
            token.run_sync_soon(partial(trio.lowlevel.spawn_system_task, run))
        except trio.RunFinishedError:
            raise InstanceClosed(CLOSED) from None
        return future

    async def enter(self, opener: Callable[[], AbstractAsyncContextManager[Any]]) -> Held[Any]:
        """In the node thread: open ``opener()`` in a task of the node's nursery that
        holds it open until :meth:`leave`; the error opening raises is raised here."""
        assert self._nursery is not None
        held: Held[Any] = await self._nursery.start(self._hold, opener)
        return held

    @staticmethod
    async def _hold(
        opener: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        task_status: trio.TaskStatus[Held[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        context = opener()
        held = Held(await context.__aenter__())
        task_status.started(held)
        try:
            try:
                await held.leave.wait()
            except BaseException as exc:  # the node is stopping with the context open
                await context.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            error = held.error
            try:
                if error is None:
                    held.suppressed = bool(await context.__aexit__(None, None, None))
                else:
                    held.suppressed = bool(
                        await context.__aexit__(type(error), error, error.__traceback__)
                    )
            except Exception as exc:
                held.failure = exc
        finally:
            held.left.set()

    @staticmethod
    async def leave(held: Held[Any], error: BaseException | None) -> bool:
        """In the node thread: close a context :meth:`enter` opened, throwing in
        ``error`` (the one that ended the caller's block, if any); return whether the
        context suppressed it, or raise what closing raised."""
        held.error = error
        held.leave.set()
        await held.left.wait()
        if held.failure is not None:
            raise held.failure
        return held.suppressed


class Face:
    """What a face of :mod:`eidetica.blocking` or :mod:`eidetica.aio` holds: the node
    thread, and the trio object there (``_target``) it speaks for."""

    __slots__ = ("_node", "_target")

    def __init__(self, node_thread: NodeThread[Any], target: Any) -> None:
        self._node = node_thread
        self._target = target
