"""A node stopped in the middle of a sync finishes the job once it runs again, by
itself: its relationship and cursor are in its SQLite file, and a resumed peer is
synced at once. Real SQLite files, real servers on 127.0.0.1:0."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import eidetica
from eidetica.actors.config import SyncConfig
from eidetica.actors.sync import open_sync
from tests.builders import build_entries
from tests.waiting import settle, stored

ENTRIES = 3000
"""Three pages of 1,024: the first lands, the rest are cut off by the stop."""


@pytest.mark.parametrize("scheme", ["http", "ws"])
async def test_a_node_restarted_mid_sync_finishes_after_it_returns(
    scheme: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with (
            eidetica.open_instance(tmp_path / "a") as a,
            open_sync(a) as a_sync,
        ):
            entries = build_entries(ENTRIES, a.device_key)
            await a.import_entries(entries)
            tree = await a.open_tree(entries[0].id)
            async with eidetica.open_instance(tmp_path / "b") as b:
                await tree.grant(b.public_key, "read")
            at = await a_sync.start_server(f"{scheme}://127.0.0.1:0")

            abrupt = SyncConfig(shutdown_grace=0)  # no grace: the sync at hand is cut off
            async with (
                eidetica.open_instance(tmp_path / "b") as b,
                open_sync(b, config=abrupt) as b_sync,
            ):
                peer = await b_sync.connect(at)
                await b_sync.add_tree_sync(peer, tree.root_id)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(b_sync.sync_with_peer, peer)
                    await stored(b, entries[0].id)  # the first page is in ...
                    nursery.cancel_scope.cancel()  # ... and b stops, mid-sync
            async with eidetica.open_instance(tmp_path / "b") as b:
                assert b.backend.get(entries[-1].id) is None, "the stop came too late"

            async with eidetica.open_instance(tmp_path / "b") as b, open_sync(b):
                theirs = await b.open_tree(tree.root_id)
                await settle(tree, theirs)  # no call: the engine resumes by itself
                assert all(b.backend.get(entry.id) is not None for entry in entries)
                assert (await theirs.doc("d")).to_dict() == (await tree.doc("d")).to_dict()
