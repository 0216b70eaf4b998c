"""A node pulling a large tree is killed (SIGKILL) part-way through the pull; once
restarted it must finish the pull by itself, within its timers, from an intact file."""

from __future__ import annotations

import random
import time
from pathlib import Path

import trio

import eidetica
from tests.builders import build_entries
from tests.crash.nodes import (
    CONVERGE_SECONDS,
    QUICK_TIMERS,
    Serve,
    cli,
    entries_in,
    integrity,
    kills,
    read,
    summary,
    tips,
    wait_until,
)

ENTRIES = 3000
"""Three of the 1,024-entry pages a sync sends: a pull long enough to cut."""


async def build(data: Path) -> str:
    """A tree of :data:`ENTRIES` entries at ``data``, which anyone may read."""
    async with eidetica.open_instance(data) as inst:
        entries = build_entries(ENTRIES, inst.device_key)
        await inst.import_entries(entries)
        tree = await inst.open_tree(entries[0].id)
        await tree.grant("*", "read")
        return tree.root_id


def test_a_node_killed_mid_pull_finishes_it_by_itself(tmp_path: Path, rng: random.Random) -> None:
    a_data = tmp_path / "a"
    tree = trio.run(build, a_data)
    a = Serve(a_data)
    pulls: list[float] = []
    converged: list[float] = []
    cut_at: list[int] = []
    try:
        address = a.start("--listen", "ws://127.0.0.1:0")["listening"]
        a_tips, a_doc = tips(a_data, tree), read(a_data, tree, "d")
        assert a_tips is not None and len(a_doc) == ENTRIES - 1

        def puller(name: str) -> Serve:
            data = tmp_path / name
            cli(data, "init")
            return Serve(data, *QUICK_TIMERS, "--peer", address, "--sync", tree)

        # One pull left alone says how long a pull takes here, where kills should land.
        first = puller("b")
        try:
            first.start()
            pulls.append(
                wait_until(lambda: tips(first.data, tree) == a_tips, CONVERGE_SECONDS, "a pull")
            )
            first.stop()
            assert integrity(first.data, tmp_path / "copy") == ["ok"]
            whole = entries_in(tmp_path / "copy")
        finally:
            first.close()
        for kill in range(kills(0.15)):
            b = puller(f"b{kill}")
            try:
                b.start()
                time.sleep(rng.uniform(0, 0.75 * pulls[0]))  # a random moment of a pull
                b.kill()
                assert integrity(b.data, tmp_path / "copy") == ["ok"]
                cut_at.append(entries_in(tmp_path / "copy"))
                restarted = time.monotonic()
                b.start()
                wait_until(
                    lambda: tips(b.data, tree) == a_tips,  # noqa: B023 (used at once)
                    CONVERGE_SECONDS,
                    f"b{kill} finished the pull it was killed in",
                )
                converged.append(time.monotonic() - restarted)
                assert read(b.data, tree, "d") == a_doc
                b.stop()
                assert integrity(b.data, tmp_path / "copy") == ["ok"]
            finally:
                b.close()
        a.stop()
    finally:
        a.close()
    own = whole - ENTRIES - 1  # what a node holds of its own before it pulls (the grant is 1)
    unfinished = [count for count in cut_at if count < whole]
    assert unfinished, f"no kill landed before the pull ended (entries held: {cut_at})"
    print(
        f"\n{kills(0.15)} kills while pulling {ENTRIES} entries (a whole pull took "
        f"{pulls[0]:.2f} s): {sum(own < count < whole for count in cut_at)} part-way, "
        f"{sum(count <= own for count in cut_at)} before the first page; "
        f"finished in {summary(converged)}"
    )
