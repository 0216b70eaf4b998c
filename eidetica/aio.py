"""eidetica for asyncio: the trio API, awaited from asyncio code.

``async with eidetica.aio.open_instance(path) as inst:`` starts the node in a trio
thread of its own (:mod:`eidetica.node_thread`, as :mod:`eidetica.blocking` does) and
stops and joins it on leaving the block. Each method of :class:`Instance`,
:class:`Tree` and :class:`Sync` starts its trio namesake in a task of that thread and
awaits a future of its outcome: no thread is parked per call, any number of asyncio
tasks (and loops in other threads) may call at once, an error raised in the node
thread reaches the caller with its own type, and cancelling the awaiting asyncio task
cancels the trio task.

Why a thread and not trio's guest mode on the asyncio loop: a thread can hold only
one trio run, guest or not, so guest mode would allow one node per asyncio thread and
would clash with any other trio guest there; the node's storage calls are blocking
SQLite calls, which in guest mode would stall the asyncio loop itself; and the thread
is the one already built for :mod:`eidetica.blocking`, so both faces share its
tested lifecycle. The cost is a hop between threads per call.

The mirror is name for name (``tests/test_aio.py`` walks the trio classes; exclusions
are in :data:`NOT_MIRRORED`). ``tree.transaction()`` yields the trio API's own
:class:`~eidetica.AtomicOp`: staging is plain Python, ``await op.commit()`` commits in
the node thread; the first read of a document's committed state inside a transaction
is fetched from the node thread while the loop waits. Async iterators stay async
iterators (:func:`_async_iterator`, for ``Sync.events`` or ``Tree.changes``).
``sim://`` addresses reach only nodes in the same trio run: nodes opened here talk
over ``ws://`` or ``http://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial, wraps
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from eidetica import node
from eidetica.actors import sync as trio_sync
from eidetica.errors import InstanceClosed, first_leaf
from eidetica.node_thread import Face, NodeThread
from eidetica.protocol.entry import Entry
from eidetica.protocol.randomness import Randomness
from eidetica.storage import instance as trio_instance
from eidetica.storage import tree as trio_tree
from eidetica.storage.crdt import Op, Root
from eidetica.storage.transaction import AtomicOp

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

NOT_MIRRORED = {
    "Instance.commit": "a transaction's own step: commit with tree.transaction()",
    "Instance.lock_for": "the trio.Lock that serializes commits in the node thread",
    "Instance.tree_changed": "the step under tree.changes(), which is mirrored",
}
"""Async methods of the trio API that have no counterpart here, with the reason."""


async def _run(node_thread: NodeThread[Any], function: Callable[[], Awaitable[R]]) -> R:
    """Await ``function()``, run in the node thread, from asyncio."""
    return await asyncio.wrap_future(node_thread.call_soon(function))


def _awaitable(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Face, P], Coroutine[Any, Any, R]]:
    """The asyncio counterpart of an async method whose result needs no face."""

    @wraps(method)
    async def call(self: Face, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _run(self._node, partial(method, self._target, *args, **kwargs))

    return call


class AsyncIterating(Generic[T]):
    """A trio async iterator, stepped from asyncio: use it in ``async for``, and
    ``async with`` it (or :meth:`aclose` it) to stop listening before it ends."""

    def __init__(self, node_thread: NodeThread[Any], source: AsyncIterator[T]) -> None:
        self._node = node_thread
        self._source = source

    def __aiter__(self) -> AsyncIterating[T]:
        return self

    async def __anext__(self) -> T:
        more, item = await _run(self._node, self._step)
        if not more:
            raise StopAsyncIteration
        return item  # type: ignore[return-value]  # None only with more=False

    async def _step(self) -> tuple[bool, T | None]:
        try:
            return True, await self._source.__anext__()
        except StopAsyncIteration:
            return False, None

    async def aclose(self) -> None:
        """Close the source (its ``aclose`` or ``close``, if it has one); a node that
        is closing or closed has closed it already."""
        with contextlib.suppress(InstanceClosed):
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await _run(self._node, aclose)
                return
            close = getattr(self._source, "close", None)
            if close is not None:
                self._node.call_sync(close)

    async def __aenter__(self) -> AsyncIterating[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _async_iterator(
    method: Callable[Concatenate[Any, P], AsyncIterator[R]],
) -> Callable[Concatenate[Face, P], AsyncIterating[R]]:
    """The asyncio counterpart of a method that returns an async iterator, made in the
    node thread: ``events = _async_iterator(trio_sync.Sync.events)`` in :class:`Sync`
    is all a new one needs."""

    @wraps(method)
    def iterate(self: Face, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterating[R]:
        source = self._node.call_sync(partial(method, self._target, *args, **kwargs))
        return AsyncIterating(self._node, source)

    return iterate


@asynccontextmanager
async def _held(
    node_thread: NodeThread[Any], opener: Callable[[], AbstractAsyncContextManager[T]]
) -> AsyncIterator[T]:
    """An async context of the trio API, held open in the node thread for an ``async
    with`` block of the caller's; an error in the block is thrown into it, and goes on
    as itself unless the context suppresses it."""
    held = await _run(node_thread, partial(node_thread.enter, opener))
    try:
        yield held.value
    except BaseException as error:
        try:
            suppressed = await _run(node_thread, partial(node_thread.leave, held, error))
        except Exception as failure:
            if first_leaf(failure) is not error:
                raise
            suppressed = False  # closing re-raised the block's error, maybe in a group
        if not suppressed:
            raise
    else:
        await _run(node_thread, partial(node_thread.leave, held, None))


class Tree(Face):
    """A tree this node holds; see :class:`eidetica.Tree`."""

    _target: trio_tree.Tree

    def __init__(self, instance: Instance, tree: trio_tree.Tree) -> None:
        super().__init__(instance._node, tree)
        self.instance = instance

    @property
    def root_id(self) -> str:
        return self._target.root_id

    tips = _awaitable(trio_tree.Tree.tips)
    doc = _awaitable(trio_tree.Tree.doc)
    settings = _awaitable(trio_tree.Tree.settings)
    permission = _awaitable(trio_tree.Tree.permission)
    entry = _awaitable(trio_tree.Tree.entry)
    voided = _awaitable(trio_tree.Tree.voided)
    entries = _awaitable(trio_tree.Tree.entries)
    grant = _awaitable(trio_tree.Tree.grant)
    revoke = _awaitable(trio_tree.Tree.revoke)
    changes = _async_iterator(trio_tree.Tree.changes)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AtomicOp]:
        """Stage writes; a clean exit commits them as one signed entry, an error discards
        them. The entry's parents are the tips at commit time."""
        tree, node_thread = self._target, self._node
        states = tree.instance.doc_states

        def load(name: str) -> Root:
            return node_thread.call_sync(partial(states.view, tree.root_id, name))

        async def commit(staged: Mapping[str, Sequence[Op]]) -> Entry | None:
            return await _run(node_thread, partial(tree.instance.commit, tree, staged))

        op = AtomicOp(load, commit)
        try:
            yield op
        except BaseException:
            op.discard()
            raise
        if op.is_open:  # the block may have committed or discarded it itself
            await op.commit()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and other._target == self._target

    def __hash__(self) -> int:
        return hash(self._target)

    def __repr__(self) -> str:
        return f"aio.{self._target!r}"


class Sync(Face):
    """Commands to the node's sync engine; see :class:`eidetica.Sync`."""

    _target: trio_sync.Sync

    start_server = _awaitable(trio_sync.Sync.start_server)
    stop_server = _awaitable(trio_sync.Sync.stop_server)
    connect = _awaitable(trio_sync.Sync.connect)
    add_peer = _awaitable(trio_sync.Sync.add_peer)
    shutdown = _awaitable(trio_sync.Sync.shutdown)
    add_tree_sync = _awaitable(trio_sync.Sync.add_tree_sync)
    remove_tree_sync = _awaitable(trio_sync.Sync.remove_tree_sync)
    remove_peer = _awaitable(trio_sync.Sync.remove_peer)
    send_entries = _awaitable(trio_sync.Sync.send_entries)
    sync_with_peer = _awaitable(trio_sync.Sync.sync_with_peer)
    status = _awaitable(trio_sync.Sync.status)
    peers = _awaitable(trio_sync.Sync.peers)
    wait_synced = _awaitable(trio_sync.Sync.wait_synced)
    events = _async_iterator(trio_sync.Sync.events)


class Instance(Face):
    """A node's store of trees, run in its own trio thread; open one with
    :func:`open_instance`. See :class:`eidetica.Instance`."""

    _target: trio_instance.Instance

    @property
    def public_key(self) -> str:
        """This node's device key, as ``ed25519:<base64>``."""
        return self._target.public_key

    @property
    def version(self) -> int:
        """Counts the batches this node has stored; pass it to :meth:`changed` to wait
        for the next without missing one that came after it was read."""
        return self._target.version

    async def create_tree(self, name: str, settings: dict[str, Any] | None = None) -> Tree:
        """A new tree named ``name`` whose only admin is this node's key."""
        made = await _run(self._node, partial(self._target.create_tree, name, settings))
        return Tree(self, made)

    async def open_tree(self, root_id: str) -> Tree:
        """A tree this node holds, or :class:`~eidetica.errors.TreeNotFound`."""
        return Tree(self, await _run(self._node, partial(self._target.open_tree, root_id)))

    async def trees(self) -> list[Tree]:
        """Every tree this node holds, by root id."""
        return [Tree(self, tree) for tree in await _run(self._node, self._target.trees)]

    async def import_entries(self, items: Iterable[bytes | Entry]) -> list[str]:
        """Verify entries from elsewhere and store them in one batch; return new ids."""
        return await _run(self._node, partial(self._target.import_entries, list(items)))

    receive = _awaitable(trio_instance.Instance.receive)
    changed = _awaitable(trio_instance.Instance.changed)

    @asynccontextmanager
    async def sync(self, **options: Any) -> AsyncIterator[Sync]:
        """The node's sync engine for an ``async with`` block, running in the node
        thread; the options are ``eidetica.open_sync``'s."""
        async with _held(self._node, partial(self._target.sync, **options)) as engine:
            yield Sync(self._node, engine)


@asynccontextmanager
async def open_instance(
    path: str | os.PathLike[str] | None, *, randomness: Randomness | None = None
) -> AsyncIterator[Instance]:
    """Open the node stored in directory ``path`` (SQLite), or an in-memory one for
    None, in a trio thread of its own for the ``async with`` block; leaving it closes
    the node and joins the thread. ``randomness``: as for :func:`eidetica.open_instance`."""
    node_thread = NodeThread(
        partial(node.open_instance, path, randomness=randomness), name=f"eidetica node {path}"
    )
    try:
        opened = await asyncio.wrap_future(node_thread.start())
    except BaseException:  # it failed to open (the thread has ended), or we were cancelled
        node_thread.request_stop()
        node_thread.join()
        raise
    try:
        yield Instance(node_thread, opened)
    finally:
        stopped = node_thread.request_stop()
        try:
            await asyncio.wrap_future(stopped)
        finally:
            node_thread.join()
