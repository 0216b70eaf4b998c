"""eidetica for plain threads: the trio API as ordinary calls.

``with eidetica.blocking.open_instance(path) as inst:`` starts the node in a trio
thread of its own (:mod:`eidetica.node_thread`) and stops and joins it on leaving the
block. Every method of :class:`Instance`, :class:`Tree` and :class:`Sync` runs its
trio namesake in that thread and blocks the caller until it is done; any number of
threads may call at once (commits on one tree are serialized there, as under trio).
An error raised in the node thread reaches the caller with its own type; a call after
the block has ended raises :class:`~eidetica.errors.InstanceClosed`.

The mirror is name for name: ``tests/test_blocking.py`` fails when an async method of
the trio classes has no counterpart here, unless it is listed in :data:`NOT_MIRRORED`
with the reason. Contexts (``tree.transaction()``, ``inst.sync()``) are ``with``
blocks; async iterators become plain iterators (:func:`_iterator`, for methods such
as ``Sync.events`` or ``Tree.changes``, which are plain ``for`` loops here).

A transaction stages its writes in the caller's thread (staging is plain Python);
the committed state it reads and the commit itself run in the node thread. Document
snapshots (``tree.doc(name)``) are never changed after they are read, so they are
read in the caller's thread. ``sim://`` addresses reach only nodes in the same trio
run: blocking nodes, each in a thread of its own, talk over ``ws://`` or ``http://``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from functools import partial, wraps
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from eidetica import node
from eidetica.actors import sync as trio_sync
from eidetica.errors import InstanceClosed, first_leaf
from eidetica.node_thread import Face, NodeThread
from eidetica.protocol.entry import Entry
from eidetica.protocol.randomness import Randomness
from eidetica.storage import instance as trio_instance
from eidetica.storage import transaction as trio_transaction
from eidetica.storage import tree as trio_tree
from eidetica.storage.crdt import Root
from eidetica.storage.docstore import DocStore
from eidetica.storage.transaction import Commit

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

NOT_MIRRORED = {
    "Instance.commit": "a transaction's own step: commit with tree.transaction()",
    "Instance.lock_for": "the trio.Lock that serializes commits in the node thread",
    "Instance.tree_changed": "the step under tree.changes(), which is mirrored",
}
"""Async methods of the trio API that have no counterpart here, with the reason."""


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Face, P], R]:
    """The blocking counterpart of an async method whose result needs no face."""

    @wraps(method)
    def call(self: Face, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._node.call(partial(method, self._target, *args, **kwargs))

    return call


class _AsyncSource(Protocol[T_co]):
    def __anext__(self) -> Awaitable[T_co]: ...


class Iterating(Generic[T]):
    """A trio async iterator, stepped from a plain thread: use it in a ``for`` loop, and
    ``with`` it (or :meth:`close` it) to stop listening before it ends by itself."""

    def __init__(self, node_thread: NodeThread[Any], source: _AsyncSource[T]) -> None:
        self._node = node_thread
        self._source = source

    def __iter__(self) -> Iterating[T]:
        return self

    def __next__(self) -> T:
        more, item = self._node.call(self._step)
        if not more:
            raise StopIteration
        return item  # type: ignore[return-value]  # None only with more=False

    async def _step(self) -> tuple[bool, T | None]:
        try:
            return True, await self._source.__anext__()
        except StopAsyncIteration:
            return False, None

    def close(self) -> None:
        """Close the source (its ``aclose`` or ``close``, if it has one); a node that
        is closing or closed has closed it already."""
        with contextlib.suppress(InstanceClosed):
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                self._node.call(aclose)
                return
            close = getattr(self._source, "close", None)
            if close is not None:
                self._node.call_sync(close)

    def __enter__(self) -> Iterating[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _iterator(
    method: Callable[Concatenate[Any, P], _AsyncSource[R]],
) -> Callable[Concatenate[Face, P], Iterating[R]]:
    """The blocking counterpart of a method that returns an async iterator: the
    iterator is made in the node thread and stepped from the caller's. Adding
    ``events = _iterator(trio_sync.Sync.events)`` to :class:`Sync` is all a new one
    needs."""

    @wraps(method)
    def iterate(self: Face, /, *args: P.args, **kwargs: P.kwargs) -> Iterating[R]:
        source = self._node.call_sync(partial(method, self._target, *args, **kwargs))
        return Iterating(self._node, source)

    return iterate


@contextmanager
def _held(
    node_thread: NodeThread[Any], opener: Callable[[], AbstractAsyncContextManager[T]]
) -> Iterator[T]:
    """An async context of the trio API, held open in the node thread for a ``with``
    block of the caller's; an error in the block is thrown into it, and goes on as
    itself unless the context suppresses it."""
    held = node_thread.call(partial(node_thread.enter, opener))
    try:
        yield held.value
    except BaseException as error:
        try:
            suppressed = node_thread.call(partial(node_thread.leave, held, error))
        except Exception as failure:
            if first_leaf(failure) is not error:
                raise
            suppressed = False  # closing re-raised the block's error, maybe in a group
        if not suppressed:
            raise
    else:
        node_thread.call(partial(node_thread.leave, held, None))


class AtomicOp(Face):
    """A transaction (``with tree.transaction() as op:``): ``op.doc(name)`` and
    ``op.settings()`` stage writes as in the trio API; :meth:`commit` runs in the node
    thread."""

    _target: trio_transaction.AtomicOp

    def doc(self, name: str) -> DocStore:
        """Document store ``name``, for staging writes and reading them back."""
        return self._target.doc(name)

    def settings(self) -> DocStore:
        """The tree's settings document; committing a change to it needs admin."""
        return self._target.settings()

    @property
    def is_open(self) -> bool:
        """Whether writes may still be staged (not yet committed or discarded)."""
        return self._target.is_open

    @property
    def entry(self) -> Entry | None:
        """The committed entry, once committed (``None`` if nothing was written)."""
        return self._target.entry

    def discard(self) -> None:
        """Drop everything staged; the transaction can no longer be used."""
        self._target.discard()

    commit = _blocking(trio_transaction.AtomicOp.commit)


class Tree(Face):
    """A tree this node holds; see :class:`eidetica.Tree`."""

    _target: trio_tree.Tree

    def __init__(self, instance: Instance, tree: trio_tree.Tree) -> None:
        super().__init__(instance._node, tree)
        self.instance = instance

    @property
    def root_id(self) -> str:
        return self._target.root_id

    tips = _blocking(trio_tree.Tree.tips)
    doc = _blocking(trio_tree.Tree.doc)
    settings = _blocking(trio_tree.Tree.settings)
    permission = _blocking(trio_tree.Tree.permission)
    entry = _blocking(trio_tree.Tree.entry)
    voided = _blocking(trio_tree.Tree.voided)
    entries = _blocking(trio_tree.Tree.entries)
    grant = _blocking(trio_tree.Tree.grant)
    revoke = _blocking(trio_tree.Tree.revoke)
    changes = _iterator(trio_tree.Tree.changes)

    @contextmanager
    def transaction(self) -> Iterator[AtomicOp]:
        """Stage writes; a clean exit commits them as one signed entry, an error discards
        them. The entry's parents are the tips at commit time."""
        tree, node_thread = self._target, self._node
        states = tree.instance.doc_states

        def load(name: str) -> Root:
            return node_thread.call_sync(partial(states.view, tree.root_id, name))

        commit: Commit = partial(tree.instance.commit, tree)
        op = AtomicOp(node_thread, trio_transaction.AtomicOp(load, commit))
        try:
            yield op
        except BaseException:
            op.discard()
            raise
        if op.is_open:  # the block may have committed or discarded it itself
            op.commit()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and other._target == self._target

    def __hash__(self) -> int:
        return hash(self._target)

    def __repr__(self) -> str:
        return f"blocking.{self._target!r}"


class Sync(Face):
    """Commands to the node's sync engine; see :class:`eidetica.Sync`."""

    _target: trio_sync.Sync

    start_server = _blocking(trio_sync.Sync.start_server)
    stop_server = _blocking(trio_sync.Sync.stop_server)
    connect = _blocking(trio_sync.Sync.connect)
    add_peer = _blocking(trio_sync.Sync.add_peer)
    shutdown = _blocking(trio_sync.Sync.shutdown)
    add_tree_sync = _blocking(trio_sync.Sync.add_tree_sync)
    remove_tree_sync = _blocking(trio_sync.Sync.remove_tree_sync)
    remove_peer = _blocking(trio_sync.Sync.remove_peer)
    send_entries = _blocking(trio_sync.Sync.send_entries)
    sync_with_peer = _blocking(trio_sync.Sync.sync_with_peer)
    status = _blocking(trio_sync.Sync.status)
    peers = _blocking(trio_sync.Sync.peers)
    wait_synced = _blocking(trio_sync.Sync.wait_synced)
    events = _iterator(trio_sync.Sync.events)


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

    def create_tree(self, name: str, settings: dict[str, Any] | None = None) -> Tree:
        """A new tree named ``name`` whose only admin is this node's key."""
        return Tree(self, self._node.call(partial(self._target.create_tree, name, settings)))

    def open_tree(self, root_id: str) -> Tree:
        """A tree this node holds, or :class:`~eidetica.errors.TreeNotFound`."""
        return Tree(self, self._node.call(partial(self._target.open_tree, root_id)))

    def trees(self) -> list[Tree]:
        """Every tree this node holds, by root id."""
        return [Tree(self, tree) for tree in self._node.call(self._target.trees)]

    def import_entries(self, items: Iterable[bytes | Entry]) -> list[str]:
        """Verify entries from elsewhere and store them in one batch; return new ids."""
        return self._node.call(partial(self._target.import_entries, list(items)))

    receive = _blocking(trio_instance.Instance.receive)
    changed = _blocking(trio_instance.Instance.changed)

    @contextmanager
    def sync(self, **options: Any) -> Iterator[Sync]:
        """The node's sync engine for a ``with`` block, running in the node thread;
        the options are ``eidetica.open_sync``'s."""
        with _held(self._node, partial(self._target.sync, **options)) as engine:
            yield Sync(self._node, engine)


@contextmanager
def open_instance(
    path: str | os.PathLike[str] | None, *, randomness: Randomness | None = None
) -> Iterator[Instance]:
    """Open the node stored in directory ``path`` (SQLite), or an in-memory one for
    None, in a trio thread of its own for the ``with`` block; leaving it closes the
    node and joins the thread. ``randomness``: as for :func:`eidetica.open_instance`."""
    node_thread = NodeThread(
        partial(node.open_instance, path, randomness=randomness), name=f"eidetica node {path}"
    )
    try:
        opened = node_thread.start().result()
    except BaseException:
        node_thread.join()
        raise
    try:
        yield Instance(node_thread, opened)
    finally:
        stopped = node_thread.request_stop()
        node_thread.join()
        stopped.result()
