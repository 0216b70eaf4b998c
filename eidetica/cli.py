"""The ``eidetica`` command: a node as a supervised process, and tools around it.

``eidetica serve`` runs a node until SIGTERM or SIGINT, then shuts down gracefully and
exits 0. Configuration comes from flags, then ``EIDETICA_*`` environment variables,
then an optional TOML file (``--config``), in that order of precedence. Logs go to
stderr, as plain lines or JSON lines. A bad flag, an unusable data directory or a
taken port ends the process with one clear line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

import eidetica
from eidetica.actors.supervisor import SyncConfig
from eidetica.errors import EideticaError, first_leaf

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
    tree_commands.add_parser("show", help="show a tree's settings and tips").add_argument("tree")
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
    serve.add_argument("--peer", action="append", help="a peer address to dial (repeatable)")
    serve.add_argument("--sync", action="append", help="a tree id to sync with every peer")
    serve.add_argument("--periodic-sync", type=float, help="seconds between syncs")
    peer = commands.add_parser("peer", help="remember peers for serve to dial")
    peer_commands = peer.add_subparsers(dest="peer_command", required=True)
    peer_add = peer_commands.add_parser("add", help="handshake with a node and remember it")
    peer_add.add_argument("address")
    peer_add.add_argument("--sync", action="append", help="a tree id to sync with it")
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
    env = {
        "data": os.environ.get("EIDETICA_DATA"),
        "log_level": os.environ.get("EIDETICA_LOG_LEVEL"),
        "log_format": os.environ.get("EIDETICA_LOG_FORMAT"),
        "listen": _split(os.environ.get("EIDETICA_LISTEN")),
        "peer": _split(os.environ.get("EIDETICA_PEERS")),
        "sync": _split(os.environ.get("EIDETICA_SYNC")),
        "periodic_sync": os.environ.get("EIDETICA_PERIODIC_SYNC"),
    }
    settings.update({key: value for key, value in env.items() if value})
    flags = {key: getattr(args, key, None) for key in env}
    settings.update({key: value for key, value in flags.items() if value is not None})
    settings.setdefault("data", "node-data")
    settings.setdefault("log_level", "info")
    settings.setdefault("log_format", "plain")
    return settings


def _split(value: str | None) -> list[str] | None:
    return [part for part in value.split(",") if part] if value else None


class _Usage(Exception):
    """A configuration mistake, reported in one line with exit code 2."""


async def _run(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    data = settings["data"]
    async with eidetica.open_instance(data) as inst:
        match args.command:
            case "init":
                print(inst.public_key)
            case "id":
                print(inst.public_key)
            case "tree":
                return await _tree(inst, args)
            case "put":
                tree = await inst.open_tree(args.tree)
                try:
                    value = json.loads(args.value)
                except json.JSONDecodeError as exc:
                    raise _Usage(f"value is not JSON: {exc}") from exc
                async with tree.transaction() as op:
                    op.doc(args.store).set(args.path, value)
            case "get":
                tree = await inst.open_tree(args.tree)
                doc = await tree.doc(args.store)
                print(json.dumps(doc.get(args.path) if args.path else doc.to_dict()))
            case "peer":
                async with inst.sync() as sync:  # the sync tree remembers what we add
                    peer = await sync.connect(args.address)
                    for tree in args.sync or []:
                        await sync.add_tree_sync(peer, tree)
                    print(peer)
            case "sync":
                async with inst.sync() as sync:
                    peer = await sync.connect(args.peer)
                    await sync.add_tree_sync(peer, args.tree)
                    await sync.sync_with_peer(peer)
                    print(f"synced {args.tree} with {peer}")
            case "serve":
                await _serve(inst, settings)
    return EXIT_OK


async def _tree(inst: eidetica.Instance, args: argparse.Namespace) -> int:
    match args.tree_command:
        case "create":
            print((await inst.create_tree(name=args.name)).root_id)
        case "list":
            for tree in await inst.trees():
                print(tree.root_id, (await tree.settings()).get("name", ""))
        case "grant":
            await (await inst.open_tree(args.tree)).grant(args.key, args.permission)
        case "show":
            tree = await inst.open_tree(args.tree)
            shown = {
                "root": tree.root_id,
                "tips": await tree.tips(),
                "settings": await tree.settings(),
            }
            print(json.dumps(shown, indent=2))
    return EXIT_OK


async def _serve(inst: eidetica.Instance, settings: dict[str, Any]) -> None:
    period = float(settings.get("periodic_sync") or SyncConfig.periodic_sync)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with inst.sync(config=SyncConfig(periodic_sync=period)) as sync:
            for address in settings.get("listen") or []:
                print(f"listening {await sync.start_server(address)}", flush=True)
            print(f"key {inst.public_key}", flush=True)
            for address in settings.get("peer") or []:
                try:
                    peer = await sync.connect(address)
                except EideticaError as exc:
                    log.warning("could not reach %s yet: %s", address, exc)
                    continue
                for tree in settings.get("sync") or []:
                    await sync.add_tree_sync(peer, tree)
                log.info("peer %s at %s", peer, address)
            print("ready", flush=True)
            async for signum in signals:
                log.info("got %s: shutting down", signal.Signals(signum).name)
                break


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
