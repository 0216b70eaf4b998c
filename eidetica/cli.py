"""The ``eidetica`` command: a node as a supervised process, and tools around it.

``eidetica serve`` runs a node until SIGTERM or SIGINT, then shuts down gracefully and
exits 0. Configuration comes from flags, then ``EIDETICA_*`` environment variables,
then an optional TOML file (``--config``), in that order of precedence. Logs go to
stderr, as plain lines or JSON lines. A bad flag, an unusable data directory or a
taken port ends the process with one clear line and a non-zero exit code.

The other commands work on the data directory, or, while ``serve`` runs on it (and
so holds it), on the running node through its control socket
(:mod:`eidetica.actors.control`): the same command, run by the node.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import resource
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import msgspec
import trio

import eidetica
from eidetica.actors import control
from eidetica.actors.config import SyncConfig
from eidetica.actors.engine.policy import AcceptTrees, TreePolicy
from eidetica.actors.engine.status import SyncStatus
from eidetica.actors.sync import Sync
from eidetica.actors.transports.admission import ServerLimits
from eidetica.errors import EideticaError, SyncError, first_leaf

log = logging.getLogger("eidetica.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eidetica", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the node's data directory (env EIDETICA_DATA)")
    parser.add_argument("--config", help="a TOML file of serve settings (env EIDETICA_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["plain", "json"])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create the data directory and device key")
    commands.add_parser("id", help="print this node's public key")
    tree = commands.add_parser("tree", help="create, list or show trees")
    tree_commands = tree.add_subparsers(dest="tree_command", required=True)
    tree_commands.add_parser("create", help="create a tree").add_argument("name")
    tree_commands.add_parser("list", help="list trees")
    tree_commands.add_parser(
        "show", help="show a tree's settings, tips, and entries a revocation voided"
    ).add_argument("tree")
    grant = tree_commands.add_parser("grant", help="give a key read, write or admin")
    grant.add_argument("tree")
    grant.add_argument("key", help="a public key, or '*' for anyone")
    grant.add_argument("permission", choices=["read", "write", "admin"])
    put = commands.add_parser("put", help="set a value (JSON) in a tree's document")
    put.add_argument("tree")
    put.add_argument("store")
    put.add_argument("path")
    put.add_argument("value", help="a JSON value")
    get = commands.add_parser("get", help="print a value (JSON) from a tree's document")
    get.add_argument("tree")
    get.add_argument("store")
    get.add_argument("path", nargs="?", help="a dotted path (default: the whole document)")
    serve = commands.add_parser("serve", help="run the node until SIGTERM or SIGINT")
    serve.add_argument("--listen", action="append", help="an address to serve (repeatable)")
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
    peer = commands.add_parser("peer", help="remember peers for serve to dial")
    peer_commands = peer.add_subparsers(dest="peer_command", required=True)
    peer_add = peer_commands.add_parser("add", help="handshake with a node and remember it")
    peer_add.add_argument("address")
    peer_add.add_argument("--sync", action="append", help="a tree id to sync with it")
    status = commands.add_parser(
        "status", help="show a running node's key, servers, peers and retry queue"
    )
    status.add_argument("--json", action="store_true", help="print it as one JSON object")
    health = commands.add_parser(
        "health", help="ask the running node whether it is ready (exit 0) or not (exit 1)"
    )
    health.add_argument("--json", action="store_true", help="print the details as JSON")
    health.add_argument("--metrics", action="store_true", help="print its Prometheus metrics")
    sync = commands.add_parser("sync", help="sync a tree with a peer once, then exit")
    sync.add_argument("tree")
    sync.add_argument("--peer", required=True, help="the peer's address")
    return parser


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


_GLOBAL_FLAGS = ("data", "config", "log_level", "log_format")
"""Arguments that say how to run a command, not what it is: not sent to a node."""

Engine = Callable[[], AbstractAsyncContextManager[Sync]]
"""The sync engine a command uses: its own, or the running node's."""


async def _run(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    data = settings["data"]
    if args.command != "serve":
        command = {key: value for key, value in vars(args).items() if key not in _GLOBAL_FLAGS}
        answer = await control.ask(control.socket_path(data), command)
        if answer is not None:  # a node runs on this directory: it ran the command
            sys.stdout.write(answer.out)
            sys.stderr.write(answer.err)
            return answer.code
        if args.command in ("status", "health"):
            print(
                f"eidetica: no node runs on {data}: start one with 'eidetica serve'",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    async with eidetica.open_instance(data) as inst:
        if args.command == "serve":
            await _serve(inst, settings)
            return EXIT_OK
        return await _command(inst, args, sys.stdout, inst.sync)


async def _command(
    inst: eidetica.Instance,
    args: argparse.Namespace,
    out: TextIO,
    engine: Engine,
    keep_dialling: Callable[[str, Sequence[str]], None] | None = None,
) -> int:
    """Run one command other than ``serve`` on ``inst``, printing to ``out``.
    ``keep_dialling``, given by a running node, dials a peer in the background until
    it answers, so that ``peer add`` of a peer that is down is not lost."""
    match args.command:
        case "init" | "id":
            print(inst.public_key, file=out)
        case "tree":
            return await _tree(inst, args, out)
        case "put":
            tree = await inst.open_tree(args.tree)
            try:
                value = json.loads(args.value)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _Usage(f"value is not JSON (or nests too deep): {exc}") from exc
            async with tree.transaction() as op:
                op.doc(args.store).set(args.path, value)
        case "get":
            tree = await inst.open_tree(args.tree)
            doc = await tree.doc(args.store)
            print(json.dumps(doc.get(args.path) if args.path else doc.to_dict()), file=out)
        case "peer":
            async with engine() as sync:  # the sync tree remembers what we add
                try:
                    peer = await sync.connect(args.address)
                except EideticaError as exc:
                    if keep_dialling is None:
                        raise SyncError(
                            f"cannot reach {args.address} now ({exc}): run 'eidetica serve"
                            f" --peer {args.address}' to keep dialling it"
                        ) from exc
                    keep_dialling(args.address, args.sync or [])
                    print(f"dialling {args.address} until it answers", file=out)
                    return EXIT_OK
                for tree_id in args.sync or []:
                    await sync.add_tree_sync(peer, tree_id)
                print(peer, file=out)
        case "status":
            async with engine() as sync:
                print(_status(inst.public_key, await sync.status(), as_json=args.json), file=out)
        case "health":
            async with engine() as sync:
                _health(sync, args, out)
        case "sync":
            async with engine() as sync:
                peer = await sync.connect(args.peer)
                await sync.add_tree_sync(peer, args.tree)
                await sync.sync_with_peer(peer)
                print(f"synced {args.tree} with {peer}", file=out)
        case other:
            raise _Usage(f"{other!r} is not a command a node runs for others")
    return EXIT_OK


async def _tree(inst: eidetica.Instance, args: argparse.Namespace, out: TextIO) -> int:
    match args.tree_command:
        case "create":
            print((await inst.create_tree(name=args.name)).root_id, file=out)
        case "list":
            for tree in await inst.trees():
                print(tree.root_id, (await tree.settings()).get("name", ""), file=out)
        case "grant":
            await (await inst.open_tree(args.tree)).grant(args.key, args.permission)
        case "show":
            tree = await inst.open_tree(args.tree)
            shown = {
                "root": tree.root_id,
                "tips": await tree.tips(),
                "settings": await tree.settings(),
                "voided": await tree.voided(),
            }
            print(json.dumps(shown, indent=2), file=out)
        case other:
            raise _Usage(f"no tree command {other!r}")
    return EXIT_OK


def _commands_for(
    inst: eidetica.Instance, sync: Sync, nursery: trio.Nursery
) -> control.ControlHandler:
    """What the control socket runs: a command, on this node's instance and engine."""

    def keep_dialling(address: str, trees: Sequence[str]) -> None:
        nursery.start_soon(_keep_dialling, sync, address, trees)

    @asynccontextmanager
    async def running() -> AsyncIterator[Sync]:
        yield sync

    async def run(fields: dict[str, Any]) -> control.ControlAnswer:
        out = io.StringIO()
        try:
            args = argparse.Namespace(**fields)
            log.info("control: %s", args.command)
            code = await _command(inst, args, out, running, keep_dialling)
        except _Usage as exc:
            return control.ControlAnswer(EXIT_USAGE, out.getvalue(), f"eidetica: {exc}\n")
        except (AttributeError, TypeError) as exc:
            log.warning("refused a control request: %s", exc)
            return control.ControlAnswer(EXIT_USAGE, "", f"eidetica: bad control request: {exc}\n")
        except Exception as exc:  # a command never takes the node down
            first = first_leaf(exc)
            if not isinstance(first, EideticaError):
                log.exception("control: %s failed", fields.get("command"))
            return control.ControlAnswer(EXIT_FAILURE, out.getvalue(), f"eidetica: {first}\n")
        return control.ControlAnswer(code, out.getvalue())

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


async def _serve(inst: eidetica.Instance, settings: dict[str, Any]) -> None:
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
            inst.sync(config=config) as sync,
            trio.open_nursery() as nursery,
        ):
            path = control.socket_path(settings["data"])
            await nursery.start(control.serve, path, _commands_for(inst, sync, nursery))
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
    lines.append(f"retries {len(status.retries)} queued, {status.retries_dropped} dropped")
    lines += [f"crashed {name}" for name in status.crashed]
    return "\n".join(lines)


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
    """Run the command line; returns the exit code (and is the console script)."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        _setup_logging(settings["log_level"], settings["log_format"])
        return trio.run(_run, args, settings)
    except (_Usage, EideticaError, OSError, BaseExceptionGroup) as exc:
        first = first_leaf(exc)
        if not isinstance(first, _Usage | EideticaError | OSError):
            raise
        print(f"eidetica: {first}", file=sys.stderr)
        return EXIT_USAGE if isinstance(first, _Usage) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
