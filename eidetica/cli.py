"""The ``eidetica`` command: a node as a supervised process, and tools around it.

``eidetica serve`` runs a node until SIGTERM or SIGINT, then shuts down gracefully and
exits 0. Configuration comes from flags, then ``EIDETICA_*`` environment variables,
then an optional TOML file (``--config``), in that order of precedence. Logs go to
stderr, as plain lines or JSON lines. A bad flag, an unusable data directory or a
taken port ends the process with one clear line and a non-zero exit code; so does any
mistake, saying what to do instead.

The other commands work on the data directory, or, while ``serve`` runs on it (and
so holds it), on the running node through its control socket
(:mod:`eidetica.actors.control`): the same command, run by the node. Only ``init``
and ``serve`` make a node where there is none.

A command is a short process, and most of its time would go to imports: this module
imports the storage, trio and the sync engine only in the functions that use them,
and the HTTP and WebSocket stacks only come with the engine's transports. A command
a running node runs for it imports none of them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import resource
import shutil
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from eidetica.actors import control_client
from eidetica.errors import EideticaError, SyncError, first_leaf

if TYPE_CHECKING:
    import trio

    from eidetica.actors.control import ControlHandler
    from eidetica.actors.engine.policy import AcceptTrees
    from eidetica.actors.engine.status import SyncingStatus, SyncStatus
    from eidetica.actors.sync import Sync
    from eidetica.actors.transports.admission import ServerLimits
    from eidetica.storage.instance import Instance
    from eidetica.storage.tree import Tree

log = logging.getLogger("eidetica.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PIPE_CLOSED = 141
"""What a shell reports for a process that SIGPIPE ended: output into ``head``."""
EXIT_INTERRUPTED = 130
"""What a shell reports for a process that SIGINT (Ctrl-C) ended."""


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def _setup_logging(level: str, style: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines()
        if style == "json"
        else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("httpx", "httpcore"):  # a line per request is noise in a node's log
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def _global_flags(*, default: Any) -> argparse.ArgumentParser:
    """The flags that say how to run any command, for the top parser (``default``
    None) and for each command's (``SUPPRESS``: given after the command, a flag
    overrides the one before it; left out, it leaves that one be)."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--data", default=default, help="the node's data directory (env EIDETICA_DATA)"
    )
    group.add_argument(
        "--config", default=default, help="a TOML file of serve settings (env EIDETICA_CONFIG)"
    )
    group.add_argument(
        "--log-level", default=default, choices=["debug", "info", "warning", "error"]
    )
    group.add_argument("--log-format", default=default, choices=["plain", "json"])
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eidetica",
        description=__doc__.splitlines()[0],
        parents=[_global_flags(default=None)],
    )
    common = [_global_flags(default=argparse.SUPPRESS)]

    def command(group: Any, name: str, what: str) -> argparse.ArgumentParser:
        added: argparse.ArgumentParser = group.add_parser(name, help=what, parents=common)
        return added

    commands = parser.add_subparsers(dest="command", required=True)
    command(commands, "init", "create the data directory and device key")
    command(commands, "id", "print this node's public key")
    tree = command(commands, "tree", "create, list, show, grant or revoke trees")
    tree_commands = tree.add_subparsers(dest="tree_command", required=True)
    command(tree_commands, "create", "create a tree; print its id").add_argument("name")
    command(tree_commands, "list", "list trees: id and name")
    command(
        tree_commands, "show", "show a tree's settings, tips, and entries a revocation voided"
    ).add_argument("tree", help=_TREE_HELP)
    grant = command(tree_commands, "grant", "give a key read, write or admin")
    grant.add_argument("tree", help=_TREE_HELP)
    grant.add_argument("key", help="a public key, or '*' for anyone")
    grant.add_argument("permission", choices=["read", "write", "admin"])
    revoke = command(tree_commands, "revoke", "take away what a key was granted")
    revoke.add_argument("tree", help=_TREE_HELP)
    revoke.add_argument("key", help="a public key, or '*'")
    put = command(commands, "put", "set a value (JSON) in a tree's document")
    put.add_argument("tree", help=_TREE_HELP)
    put.add_argument("store")
    put.add_argument("path", help="a dotted path")
    put.add_argument("value", help="a JSON value: quote a string, as '\"milk\"'")
    get = command(commands, "get", "print a value (JSON) from a tree's document")
    get.add_argument("tree", help=_TREE_HELP)
    get.add_argument("store")
    get.add_argument("path", nargs="?", help="a dotted path (default: the whole document)")
    delete = command(commands, "delete", "delete a key from a tree's document")
    delete.add_argument("tree", help=_TREE_HELP)
    delete.add_argument("store")
    delete.add_argument("path", help="a dotted path")
    _serve_flags(command(commands, "serve", "run the node until SIGTERM or SIGINT"))
    peer = command(commands, "peer", "list, add or remove the peers serve dials")
    peer_commands = peer.add_subparsers(dest="peer_command", required=True)
    command(
        peer_commands, "list", "the peers: their state on a running node, else those remembered"
    )
    peer_add = command(peer_commands, "add", "handshake with a node and remember it")
    peer_add.add_argument("address", help="http://HOST:PORT or ws://HOST:PORT")
    peer_add.add_argument("--sync", action="append", help="a tree id to sync with it")
    command(peer_commands, "remove", "forget a peer and what is synced with it").add_argument("key")
    status = command(
        commands, "status", "show a running node's key, servers, peers and retry queue"
    )
    status.add_argument("--json", action="store_true", help="print it as one JSON object")
    health = command(
        commands, "health", "ask the running node whether it is ready (exit 0) or not (exit 1)"
    )
    health.add_argument("--json", action="store_true", help="print the details as JSON")
    health.add_argument("--metrics", action="store_true", help="print its Prometheus metrics")
    sync = command(commands, "sync", "sync a tree with a peer once, then exit")
    sync.add_argument("tree", help=_TREE_HELP)
    sync.add_argument("--peer", required=True, help="the peer's address (http:// or ws://)")
    backup = command(commands, "backup", "copy the node, safely even while it serves")
    backup.add_argument("dest", help="a new directory: a data directory for the copy")
    return parser


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--listen", action="append", help="an address to serve, http:// or ws:// (repeatable)"
    )
    serve.add_argument(
        "--peer",
        action="append",
        help="a peer address to dial, again and again until it answers (repeatable)",
    )
    serve.add_argument("--sync", action="append", help="a tree id to sync with every peer")
    serve.add_argument(
        "--accept-trees",
        action="append",
        metavar="any|chosen|KEY",
        help="take in trees peers bring: from any peer, only those chosen (the default), "
        "or from this peer key (repeatable)",
    )
    for name, what in _INTERVALS.items():
        serve.add_argument(f"--{name.replace('_', '-')}", help=f"seconds {what}")
    for name, (_, what) in _LIMITS.items():
        serve.add_argument(f"--{name.replace('_', '-')}", help=what)


_TREE_HELP = "a tree's id, or its name if one tree has it"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over environment over the TOML file over defaults."""
    config_file = args.config or os.environ.get("EIDETICA_CONFIG")
    settings: dict[str, Any] = {}
    if config_file:
        try:
            settings = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise _Usage(f"cannot read config file {config_file}: {exc}") from exc
        _check_file_settings(config_file, settings)
    env = {
        "data": os.environ.get("EIDETICA_DATA"),
        "log_level": os.environ.get("EIDETICA_LOG_LEVEL"),
        "log_format": os.environ.get("EIDETICA_LOG_FORMAT"),
        "listen": _split(os.environ.get("EIDETICA_LISTEN")),
        "peer": _split(os.environ.get("EIDETICA_PEERS")),
        "sync": _split(os.environ.get("EIDETICA_SYNC")),
        "accept_trees": _split(os.environ.get("EIDETICA_ACCEPT_TREES")),
        **{name: os.environ.get(f"EIDETICA_{name.upper()}") for name in (*_INTERVALS, *_LIMITS)},
    }
    settings.update({key: value for key, value in env.items() if value})
    flags = {key: getattr(args, key, None) for key in env}
    settings.update({key: value for key, value in flags.items() if value is not None})
    settings.setdefault("data", "node-data")
    settings.setdefault("log_level", "info")
    settings.setdefault("log_format", "plain")
    for name in _INTERVALS:
        if settings.get(name) is not None:
            settings[name] = _seconds(name, settings[name])
    for name, (kind, _) in _LIMITS.items():
        if settings.get(name) is not None:
            settings[name] = _limit(name, kind, settings[name])
    return settings


_INTERVALS = {
    "periodic_sync": "between syncs of every peer's trees",
    "connection_check": "between checks that each peer still answers",
    "retry_sweep": "between looks at the retry queue",
}
"""The timer intervals ``serve`` takes (flag, ``EIDETICA_*`` variable, TOML key)."""


_LIMITS: dict[str, tuple[type[int] | type[float], str]] = {
    "max_connections": (int, "connections the node holds open at once (default 1024)"),
    "max_connections_per_source": (int, "connections from one IP address (default 64)"),
    "handshake_timeout": (float, "seconds a new link has to prove its key (default 10)"),
    "message_timeout": (float, "seconds one whole request or message may take (default 30)"),
    "max_buffered_bytes": (int, "bytes of messages held at once (default 67108864: 64 MiB)"),
    "max_buffered_bytes_per_source": (int, "one IP's share of those (default 20971520)"),
    "handshake_rate": (float, "handshakes a second from one source or link (default 10)"),
    "max_sessions": (int, "proven sessions the node keeps (default 4096)"),
    "max_sessions_per_source": (int, "proven sessions from one IP address (default 64)"),
    "session_idle": (float, "seconds an unused session lives (default 3600)"),
    "session_lifetime": (float, "seconds any session lives, used or not (default 86400)"),
    "max_held_per_peer": (int, "entries one peer may have waiting for parents (default 1000)"),
    "watch_hold": (float, "seconds a client's watch for new entries is held (default 20)"),
    "max_watches": (int, "watches the node holds at once (default 256)"),
    "max_watches_per_session": (int, "watches held at once for one session (default 4)"),
}
"""What ``serve`` lets its clients hold (:class:`ServerLimits`): flag, ``EIDETICA_*``
variable or TOML key, each a whole number (``int``) or any positive number."""

MIN_INTERVAL = 0.1
"""Shorter timer intervals would keep a core busy for nothing."""

_TEXT_SETTINGS = ("data", "log_level", "log_format")
_LIST_SETTINGS = ("listen", "peer", "sync", "accept_trees")
SETTINGS = (*_TEXT_SETTINGS, *_LIST_SETTINGS, *_INTERVALS, *_LIMITS)
"""Every setting ``serve`` takes: ``docs/operations.md`` lists each (a test checks)."""


def _check_file_settings(config_file: str, settings: dict[str, Any]) -> None:
    """The TOML file's keys are known ones, of the right types: a typo is an error,
    not a setting silently ignored (or a string read one letter at a time)."""
    for key, value in settings.items():
        if key in _TEXT_SETTINGS:
            right = isinstance(value, str)
        elif key in _LIST_SETTINGS:
            right = isinstance(value, list) and all(isinstance(item, str) for item in value)
        elif key in _INTERVALS or key in _LIMITS:
            right = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            known = ", ".join((*_TEXT_SETTINGS, *_LIST_SETTINGS, *_INTERVALS, *_LIMITS))
            raise _Usage(f"{config_file}: unknown setting {key!r} (known: {known})")
        if not right:
            kind = "a list of strings" if key in _LIST_SETTINGS else "a string"
            kind = "a number of seconds" if key in _INTERVALS else kind
            kind = "a positive number" if key in _LIMITS else kind
            raise _Usage(f"{config_file}: {key} must be {kind}, not {value!r}")


def _seconds(name: str, value: object) -> float:
    """An interval setting as seconds, or a one-line usage error."""
    try:
        seconds = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < MIN_INTERVAL:
        flag = name.replace("_", "-")
        raise _Usage(f"{flag} must be a number of seconds, at least {MIN_INTERVAL}, not {value!r}")
    return seconds


def _limit(name: str, kind: type[int] | type[float], value: object) -> int | float:
    """A limit setting as a positive number of its kind, or a one-line usage error."""
    try:
        number = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    whole = kind is float or number.is_integer()
    if not math.isfinite(number) or number <= 0 or not whole:
        what = "a whole number" if kind is int else "a number"
        raise _Usage(f"{name.replace('_', '-')} must be {what} above 0, not {value!r}")
    return kind(number)


def _split(value: str | None) -> list[str] | None:
    return [part for part in value.split(",") if part] if value else None


class _Usage(Exception):
    """A configuration mistake, reported in one line with exit code 2."""


class _Failure(Exception):
    """A command that cannot be done as asked, reported in one line with exit code 1."""


_GLOBAL_FLAGS = ("data", "config", "log_level", "log_format")
"""Arguments that say how to run a command, not what it is: not sent to a node."""

_SCHEMES = ("http", "ws")
"""What an address given on the command line may start with (``sim://``, the
in-process network of tests, works too, unlisted)."""

Engine = Callable[[], AbstractAsyncContextManager["Sync"]]
"""The sync engine a command uses: its own, or the running node's."""


@dataclass(frozen=True)
class _Node:
    """Where a command runs: the data directory, and the engine to use. A running
    node gives ``keep_dialling``, which dials a peer in the background until it
    answers, so that ``peer add`` of a peer that is down is not lost."""

    data: Path
    engine: Engine
    keep_dialling: Callable[[str, Sequence[str]], None] | None = None

    @property
    def running(self) -> bool:
        return self.keep_dialling is not None


def _address(value: str, what: str) -> str:
    """A peer or listening address, or a one-line usage error saying how to write one."""
    scheme, separator, rest = value.partition("://")
    if separator and rest and scheme in (*_SCHEMES, "sim"):
        return value
    raise _Usage(f"{what} {value!r} is not an address: write http://HOST:PORT or ws://HOST:PORT")


def _run(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    data = Path(settings["data"])
    if args.command == "serve":
        for address in settings.get("listen") or []:
            _address(address, "--listen")
        for address in settings.get("peer") or []:
            _address(address, "--peer")
        return _in_trio(_serve, data, settings)
    if args.command == "sync":
        _address(args.peer, "--peer")
    if args.command == "peer" and args.peer_command == "add":
        _address(args.address, "peer")
    if args.command == "backup":  # the node runs in another folder
        args.dest = os.path.abspath(args.dest)
    command = {key: value for key, value in vars(args).items() if key not in _GLOBAL_FLAGS}
    answer = control_client.ask(control_client.socket_path(data), command)
    if answer is not None:  # a node runs on this directory: it ran the command
        sys.stdout.write(answer.out)
        sys.stdout.flush()
        sys.stderr.write(answer.err)
        return answer.code
    if args.command in ("status", "health"):
        raise _Failure(f"no node runs on {data}: start one with 'eidetica serve'")
    if args.command != "init":
        _check_node(data)
    if args.command == "id":  # the key file says it all: no database, no trio
        from eidetica.storage.device import load_or_create_device_key

        print(load_or_create_device_key(data).public_key)
        return EXIT_OK
    return _in_trio(_run_locally, data, args)


def _check_node(data: Path) -> None:
    """Raise unless ``data`` holds a node: every command but ``init`` and ``serve``
    needs one, and making one where a mistyped ``--data`` points is a trap (a new key,
    an empty node that seems to have lost every tree)."""
    create = f"create one with 'eidetica --data {data} init'"
    if data.exists() and not data.is_dir():
        raise _Failure(f"{data} is a file, not a node's data directory: {create} elsewhere")
    if not (data / _KEY_FILE).is_file():
        raise _Failure(f"no node in {data}: {create}, or name another with --data")


_KEY_FILE = "device.key"
"""What makes a directory a node's (``eidetica.storage.device.KEY_FILE``, which this
module does not import until it opens a node)."""
_SYNC_TREE_KEY = "sync_tree"
"""The node-local key naming the node's own sync tree
(``eidetica.actors.state.SYNC_TREE_KEY``: importing the engine's state for it would
cost ``tree list`` a sixth of its time)."""


def _in_trio(function: Callable[..., Any], *args: Any) -> int:
    """``trio.run(function, *args)``; importing trio only here."""
    import trio

    code: int = trio.run(function, *args)
    return code


async def _run_locally(data: Path, args: argparse.Namespace) -> int:
    from eidetica.storage.instance import open_instance

    async with open_instance(data, sync_opener=_open_sync) as inst:
        return await _command(inst, args, sys.stdout, _Node(data, inst.sync), sys.stderr)


def _open_sync(instance: Instance, **options: Any) -> AbstractAsyncContextManager[Sync]:
    """The engine's opener, imported when a command first runs the engine."""
    from eidetica.actors.sync import open_sync

    return open_sync(instance, **options)


async def _command(
    inst: Instance, args: argparse.Namespace, out: TextIO, node: _Node, err: TextIO
) -> int:
    """Run one command other than ``serve`` on ``inst``, printing to ``out`` (and
    notes for the person, never the answer, to ``err``)."""
    match args.command:
        case "init" | "id":
            print(inst.public_key, file=out)
        case "tree":
            await _tree(inst, args, out)
        case "put":
            await _put(await _open_tree(inst, args.tree), args.store, args.path, args.value)
        case "get":
            tree = await _open_tree(inst, args.tree)
            doc = (await tree.doc(args.store)).to_dict()
            value = doc if args.path is None else _at(doc, args.store, args.path)
            print(json.dumps(value), file=out)
            if node.running:
                async with node.engine() as sync:
                    for note in _partial(await sync.status(), tree.root_id):
                        print(note, file=err)
        case "delete":
            await _delete(await _open_tree(inst, args.tree), args.store, args.path)
        case "peer":
            await _peer(inst, args, out, node)
        case "status":
            async with node.engine() as sync:
                print(_status(inst.public_key, await sync.status(), as_json=args.json), file=out)
        case "health":
            async with node.engine() as sync:
                _health(sync, args, out)
        case "sync":
            tree_id = (
                args.tree if _is_id(args.tree) else (await _open_tree(inst, args.tree)).root_id
            )
            async with node.engine() as sync:
                from eidetica.progress import showing_progress

                shown = None if node.running else sys.stderr  # a node's answer comes whole
                async with showing_progress(sync, tree_id, shown):
                    peer = await sync.connect(args.peer)
                    await sync.add_tree_sync(peer, tree_id)
                    await sync.sync_with_peer(peer)
                print(f"synced {tree_id} with {peer}", file=out)
        case "backup":
            _backup(inst, node.data, Path(args.dest))
            print(f"backed up {node.data} to {args.dest}", file=out)
        case other:
            raise _Usage(f"{other!r} is not a command a node runs for others")
    return EXIT_OK


async def _tree(inst: Instance, args: argparse.Namespace, out: TextIO) -> None:
    match args.tree_command:
        case "create":
            print((await inst.create_tree(name=args.name)).root_id, file=out)
        case "list":
            for tree in await _user_trees(inst):
                print(tree.root_id, (await tree.settings()).get("name", ""), file=out)
        case "grant":
            await (await _open_tree(inst, args.tree)).grant(args.key, args.permission)
        case "revoke":
            tree = await _open_tree(inst, args.tree)
            if args.key not in (await tree.settings()).get("auth", {}):
                raise _Failure(
                    f"{args.key} was granted nothing in tree {tree.root_id}:"
                    f" 'eidetica tree show {tree.root_id}' lists the grants under auth"
                )
            await tree.revoke(args.key)
        case "show":
            tree = await _open_tree(inst, args.tree)
            shown = {
                "root": tree.root_id,
                "tips": await tree.tips(),
                "settings": await tree.settings(),
                "voided": await tree.voided(),
            }
            print(json.dumps(shown, indent=2), file=out)
        case other:
            raise _Usage(f"no tree command {other!r}")


def _is_id(text: str) -> bool:
    from eidetica.protocol.entry import is_entry_id

    return is_entry_id(text)


async def _user_trees(inst: Instance) -> list[Tree]:
    """The trees of the node's users: all but the node's own sync tree, which holds
    its peers and is written by the engine alone."""
    internal = inst.backend.get_local(_SYNC_TREE_KEY)
    return [tree for tree in await inst.trees() if tree.root_id != internal]


async def _open_tree(inst: Instance, ref: str) -> Tree:
    """The tree with id ``ref``, or else the one tree named ``ref``."""
    if _is_id(ref):
        return await inst.open_tree(ref)
    named = [tree for tree in await _user_trees(inst) if (await tree.settings()).get("name") == ref]
    if len(named) == 1:
        return named[0]
    if not named:
        raise _Failure(
            f"no tree here is named {ref!r}, and it is no tree id:"
            " 'eidetica tree list' shows each tree's id and name"
        )
    raise _Failure(
        f"{len(named)} trees are named {ref!r}: give one's id ('eidetica tree list' shows them)"
    )


def _segments(path: str) -> tuple[str, ...]:
    from eidetica.storage.crdt import parse_path

    return parse_path(path)


def _kind(value: object) -> str:
    """What a JSON value is, for a person: ``a list``, ``a number``..."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return "a number"


def _missing(document: dict[str, Any], segments: Sequence[str]) -> str | None:
    """Why ``segments`` name no value in ``document`` (None when they do): the first
    part that is not there, or the value that has no keys to go into."""
    node: Any = document
    for depth, segment in enumerate(segments):
        where = ".".join(segments[:depth])
        if not isinstance(node, dict):
            return f"{where!r} holds {_kind(node)}, not keys"
        if segment not in node:
            holder = repr(where) if where else "the store"
            return f"{holder} has no key {segment!r}"
        node = node[segment]
    return None


def _at(document: dict[str, Any], store: str, path: str) -> Any:
    """The value at ``path``, or a one-line failure naming the part that is missing."""
    segments = _segments(path)
    reason = _missing(document, segments)
    if reason is not None:
        raise _Failure(f"nothing at {path!r} in {store}: {reason}")
    node: Any = document
    for segment in segments:
        node = node[segment]
    return node


async def _put(tree: Tree, store: str, path: str, text: str) -> None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _Usage(
            f"the value must be JSON (a string needs quotes: '\"{text[:20]}\"'): {exc}"
        ) from exc
    segments = _segments(path)
    node: Any = (await tree.doc(store)).to_dict()
    for depth, segment in enumerate(segments[:-1]):
        node = node.get(segment)
        if node is None:
            break
        if not isinstance(node, dict):
            # A write would replace the value with keys of its own, losing it.
            where = ".".join(segments[: depth + 1])
            raise _Failure(
                f"cannot write {path!r}: {where!r} holds {_kind(node)}, not keys;"
                f" put the whole new value at {where!r} instead"
            )
    async with tree.transaction() as op:
        op.doc(store).set(segments, value)


async def _delete(tree: Tree, store: str, path: str) -> None:
    segments = _segments(path)
    reason = _missing((await tree.doc(store)).to_dict(), segments)
    if reason is not None:
        raise _Failure(f"nothing to delete at {path!r} in {store}: {reason}")
    async with tree.transaction() as op:
        op.doc(store).delete(segments)


async def _peer(inst: Instance, args: argparse.Namespace, out: TextIO, node: _Node) -> None:
    match args.peer_command:
        case "list" if node.running:
            async with node.engine() as sync:
                peers = (await sync.status()).peers
            for shown in peers.values():
                link = shown.address or shown.dial or "-"
                print(shown.key, shown.state, link, "trees", len(shown.trees), file=out)
        case "list":
            for key, record in (await _remembered(inst)).items():
                link = ",".join(record.addresses) or "-"
                print(key, "remembered", link, "trees", len(record.trees), file=out)
        case "add":
            async with node.engine() as sync:  # the sync tree remembers what we add
                try:
                    peer = await sync.connect(args.address)
                except EideticaError as exc:
                    if node.keep_dialling is None:
                        raise SyncError(
                            f"cannot reach {args.address} now ({exc}): run 'eidetica serve"
                            f" --peer {args.address}' to keep dialling it"
                        ) from exc
                    node.keep_dialling(args.address, args.sync or [])
                    print(f"dialling {args.address} until it answers", file=out)
                    return
                for tree_id in args.sync or []:
                    await sync.add_tree_sync(peer, tree_id)
                print(peer, file=out)
        case "remove" if node.running:
            async with node.engine() as sync:
                if args.key not in (await sync.status()).peers:
                    raise _no_peer(args.key)
                await sync.remove_peer(args.key)
        case "remove":
            await _forget(inst, args.key)
        case other:
            raise _Usage(f"no peer command {other!r}")


def _no_peer(key: str) -> _Failure:
    return _Failure(f"no peer {key} here: 'eidetica peer list' shows the peers")


async def _remembered(inst: Instance) -> dict[str, Any]:
    """The peers the sync tree holds, read without running the engine (or making a
    sync tree where there is none)."""
    from eidetica.actors.state import SyncState

    root_id = inst.backend.get_local(_SYNC_TREE_KEY)
    if root_id is None:
        return {}
    return dict(await SyncState(await inst.open_tree(root_id)).peers())


async def _forget(inst: Instance, key: str) -> None:
    """What the engine does to remove a peer, done to the sync state of a node that
    is not running: forget it, and remember it was removed."""
    from eidetica.actors.state import SyncState

    if key not in await _remembered(inst):
        raise _no_peer(key)
    state = await SyncState.open(inst)
    await state.remove_peer(key)
    state.set_removed(key, True)


def _backup(inst: Instance, data: Path, dest: Path) -> None:
    """Copy the node to a new directory ``dest``: its database, through SQLite's
    online backup API (consistent while the node writes), and its device key, so the
    copy is a data directory to run as the same node."""
    from eidetica.storage.instance import DATABASE_FILE
    from eidetica.storage.sqlite import SqliteBackend

    if not isinstance(inst.backend, SqliteBackend):
        raise _Failure("only a node stored in SQLite can be backed up")
    try:
        dest.mkdir(mode=0o700, parents=True)
    except FileExistsError as exc:
        raise _Failure(f"{dest} exists: name a new directory for the backup") from exc
    partial = dest / f"{DATABASE_FILE}.partial"  # no node in dest until the copy is whole
    try:
        inst.backend.backup(partial)
        key = (data / _KEY_FILE).read_bytes()
        with os.fdopen(
            os.open(dest / _KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
        ) as f:
            f.write(key)
        partial.rename(dest / DATABASE_FILE)
    except BaseException:  # the directory is ours: leave none half made to trip a retry
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _commands_for(inst: Instance, sync: Sync, nursery: trio.Nursery, data: Path) -> ControlHandler:
    """What the control socket runs: a command, on this node's instance and engine."""
    from eidetica.actors import control

    def keep_dialling(address: str, trees: Sequence[str]) -> None:
        nursery.start_soon(_keep_dialling, sync, address, trees)

    @asynccontextmanager
    async def running() -> AsyncIterator[Sync]:
        yield sync

    node = _Node(data, running, keep_dialling)

    async def run(fields: dict[str, Any]) -> control.ControlAnswer:
        out, err = io.StringIO(), io.StringIO()
        try:
            args = argparse.Namespace(**fields)
            log.info("control: %s", args.command)
            code = await _command(inst, args, out, node, err)
        except _Usage as exc:
            return control.ControlAnswer(EXIT_USAGE, out.getvalue(), f"eidetica: {exc}\n")
        except (AttributeError, TypeError) as exc:
            log.warning("refused a control request: %s", exc)
            return control.ControlAnswer(EXIT_USAGE, "", f"eidetica: bad control request: {exc}\n")
        except Exception as exc:  # a command never takes the node down
            first = first_leaf(exc)
            if not isinstance(first, EideticaError | _Failure):
                log.exception("control: %s failed", fields.get("command"))
            return control.ControlAnswer(EXIT_FAILURE, out.getvalue(), f"eidetica: {first}\n")
        return control.ControlAnswer(code, out.getvalue(), err.getvalue())

    return run


_SPARE_DESCRIPTORS = 128
"""Descriptors kept for what is not a client's connection: the database, peers we
dial, the control socket, logs."""


def _make_room_for(limits: ServerLimits) -> None:
    """Raise the process's descriptor limit so ``max_connections`` can be reached:
    a node that runs out of descriptors first refuses honest peers along with the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limits.max_connections + _SPARE_DESCRIPTORS
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY:
        needed = min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    if needed < limits.max_connections + _SPARE_DESCRIPTORS:
        log.warning(
            "max-connections %d is more than the %d descriptors this process may open: "
            "lower it, or raise the hard limit (ulimit -Hn)",
            limits.max_connections,
            hard,
        )


async def _serve(data: Path, settings: dict[str, Any]) -> int:
    import trio

    from eidetica.actors import control
    from eidetica.actors.config import SyncConfig
    from eidetica.actors.transports.admission import ServerLimits
    from eidetica.node import open_instance

    limits = ServerLimits(
        **{name: settings[name] for name in _LIMITS if settings.get(name) is not None}
    )
    _make_room_for(limits)
    config = SyncConfig(
        limits=limits,
        accept_trees=_accept_trees(settings.get("accept_trees") or ["chosen"]),
        **{name: settings[name] for name in _INTERVALS if settings.get(name) is not None},
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            open_instance(data) as inst,
            inst.sync(config=config) as sync,
            trio.open_nursery() as nursery,
        ):
            path = control.socket_path(data)
            await nursery.start(control.serve, path, _commands_for(inst, sync, nursery, data))
            for address in settings.get("listen") or []:
                print(f"listening {await sync.start_server(address)}", flush=True)
            print(f"key {inst.public_key}", flush=True)
            for address in settings.get("peer") or []:
                nursery.start_soon(_keep_dialling, sync, address, settings.get("sync") or [])
            print("ready", flush=True)
            async for signum in signals:
                log.info("got %s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    return EXIT_OK


def _status(key: str, status: SyncStatus, *, as_json: bool) -> str:
    """A running node's status: one JSON object, or lines for a person."""
    if as_json:
        return msgspec.json.encode({"key": key, **msgspec.to_builtins(status)}).decode()
    lines = [f"key {key}"]
    lines += [f"server {s.address} (restarts {s.restarts})" for s in status.servers]
    for peer in status.peers.values():
        link = peer.address or peer.dial or "-"
        lines.append(
            f"peer {peer.key} {peer.state} {link} trees {len(peer.trees)} syncs {peer.syncs}"
            f" failures {peer.failures} breaker {peer.breaker}"
        )
    for tree in status.trees.values():
        lags = ", ".join(
            f"peer {peer} "
            + (
                "not synced yet"
                if lag.behind is None
                else "in step"
                if lag.in_step
                else f"{'>=' if lag.capped else ''}{lag.behind} new since synced"
            )
            for peer, lag in tree.peers.items()
        )
        lines.append(f"tree {tree.root} entries {tree.entries} tips {len(tree.tips)} {lags}")
    lines += [f"syncing {_progress(syncing)}" for syncing in status.syncing]
    lines.append(f"retries {len(status.retries)} queued, {status.retries_dropped} dropped")
    lines += [f"crashed {name}" for name in status.crashed]
    return "\n".join(lines)


def _progress(syncing: SyncingStatus) -> str:
    of = f" of {syncing.expected:,}" if syncing.expected is not None else ""
    return f"{syncing.tree} with {syncing.peer}: {syncing.entries:,}{of} entries so far"


def _partial(status: SyncStatus, tree: str) -> list[str]:
    """Notes that what ``get`` printed of ``tree`` may be partial: a sync of it runs."""
    return [
        f"eidetica: note: syncing {_progress(syncing)}; this may be partial"
        for syncing in status.syncing
        if syncing.tree == tree
    ]


def _health(sync: Sync, args: argparse.Namespace, out: TextIO) -> None:
    """Print the running node's readiness (or metrics); a node that is not ready is an
    error whose one line says what is wrong and what to do."""
    if args.metrics:
        out.write(sync.admin.metrics.exposition().decode())
        return
    ready = sync.admin.ready()
    if args.json:
        print(msgspec.json.encode(ready).decode(), file=out)
    elif not ready.problems:
        listening = ", ".join(ready.servers) or "nowhere"
        print(f"ready: engine {ready.engine}, storage ok, listening {listening}", file=out)
    if ready.problems:
        raise SyncError("not ready: " + "; ".join(ready.problems))


def _accept_trees(values: Sequence[str]) -> AcceptTrees:
    """``--accept-trees`` as a policy: ``any``, ``chosen``, or peer keys."""
    from eidetica.actors.engine.policy import TreePolicy

    if len(values) == 1 and values[0] in ("any", "chosen"):
        return values[0]
    if {"any", "chosen"} & set(values):
        raise _Usage("accept-trees takes 'any', 'chosen', or peer keys, not a mix of them")
    TreePolicy.of(values)  # each must be a key: a one-line error here, not at the first peer
    return values


FIRST_REDIAL = 1.0
LAST_REDIAL = 60.0


async def _keep_dialling(sync: Sync, address: str, trees: Sequence[str]) -> None:
    """Dial a peer given to ``serve`` until it answers, waiting 1 s, then twice as
    long each time up to a minute, so nodes started in any order link; then relate
    ``trees`` with it and fetch them at once rather than at the first periodic sync."""
    import trio

    delay = FIRST_REDIAL
    while True:
        try:
            peer = await sync.connect(address)
            break
        except EideticaError as exc:
            log.warning("could not reach %s yet (%s); trying again in %.0f s", address, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, LAST_REDIAL)
    log.info("peer %s at %s", peer, address)
    if not trees:
        return
    try:
        for tree in trees:
            await sync.add_tree_sync(peer, tree)
        await sync.sync_with_peer(peer)
    except EideticaError as exc:
        log.warning("first sync with %s failed (%s); the periodic sync will retry", peer, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (and is the console script).

    Whatever goes wrong ends in one line on stderr and a non-zero code, never a
    traceback: a mistake (2), a command that cannot be done (1), Ctrl-C (130, and what
    was stored stays stored: every commit is one SQLite transaction), or a reader of
    our output that went away, as ``head`` does (141, quietly)."""
    try:
        args = _parser().parse_args(argv)
        settings = _settings(args)
        _setup_logging(settings["log_level"], settings["log_format"])
        code = _run(args, settings)
        sys.stdout.flush()  # here, where a reader that went away is still ours to handle
        return code
    except BaseException as exc:  # each kind is sorted out in _exit_for
        return _exit_for(exc)


def _exit_for(exc: BaseException) -> int:
    """The exit code for what ended a command, after saying so in one line; re-raises
    what is no failure of a command's (a bug, ``SystemExit``)."""
    group = exc if isinstance(exc, BaseExceptionGroup) else BaseExceptionGroup("", [exc])
    if group.subgroup(KeyboardInterrupt) is not None:
        print("eidetica: interrupted; what was stored before stays stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    if group.subgroup(BrokenPipeError) is not None:
        # Nothing more can reach the reader, nor should a flush at exit try.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    first = first_leaf(exc)
    if not isinstance(first, _Usage | _Failure | EideticaError | OSError):
        raise exc
    print(f"eidetica: {first}", file=sys.stderr)
    return EXIT_USAGE if isinstance(first, _Usage) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
