"""Real nodes for integration tests: a SQLite instance, its own WebSocket transport
(so a test can watch its links) and its sync engine, for one ``async with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple

import eidetica
from eidetica.actors.engine.policy import AcceptTrees
from eidetica.actors.supervisor import SyncConfig
from eidetica.actors.sync import Sync, open_sync
from eidetica.actors.transports.ws import WebSocketTransport


class WsNode(NamedTuple):
    inst: eidetica.Instance
    sync: Sync
    ws: WebSocketTransport


@asynccontextmanager
async def ws_node(
    path: Path, config: SyncConfig | None = None, *, accept_trees: AcceptTrees | None = None
) -> AsyncIterator[WsNode]:
    async with (
        eidetica.open_instance(path) as inst,
        WebSocketTransport() as ws,
        open_sync(inst, transports={"ws": ws}, config=config, accept_trees=accept_trees) as sync,
    ):
        yield WsNode(inst, sync, ws)
