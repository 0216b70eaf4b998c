"""A node killed (SIGKILL) at random moments while clients commit through it keeps
every commit it acknowledged, opens cleanly, and reads the same after a restart."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.crash.nodes import Serve, Writer, cli, integrity, kept, kills, lost, read

WRITERS = 2
"""Clients committing at once, so kills land while commits queue in the node too."""


def test_every_acknowledged_commit_survives_sigkill(tmp_path: Path, rng: random.Random) -> None:
    data = tmp_path / "node"
    cli(data, "init")
    tree = cli(data, "tree", "create", "crash")
    node = Serve(data)
    acknowledged: dict[str, int] = {}
    unanswered = 0
    try:
        node.start()
        seen = read(data, tree, "d")
        for kill in range(kills(0.5)):
            writers = [Writer(data, tree, "d", f"w{kill}_{n}") for n in range(WRITERS)]
            for writer in writers:
                writer.start()
            # A random moment: the kill is the one thing here not waiting on a condition.
            writers[0].join(rng.uniform(0.05, 0.8))
            node.kill()
            for writer in writers:
                writer.finish()
                acknowledged |= writer.acknowledged
                assert writer.refused == [], writer.refused
            assert integrity(data, tmp_path / "copy") == ["ok"]
            node.start()
            after = read(data, tree, "d")
            assert lost(acknowledged, after) == {}, f"kill {kill} lost acknowledged commits"
            assert kept(seen, after), f"kill {kill} lost commits read before it"
            unanswered += len(after) - len(acknowledged)
            seen = after
        node.stop()
        assert integrity(data, tmp_path / "copy") == ["ok"]
        # Reopened by the command itself, with no node: the same document.
        reopened = json.loads(cli(data, "get", tree, "d"))
        assert reopened == seen
    finally:
        node.close()
    assert len(acknowledged) > 10 * kills(0.5), "too few commits to tell anything"
    print(
        f"\n{kills(0.5)} kills, {len(acknowledged)} commits acknowledged, 0 lost, "
        f"{unanswered} cut off by a kill yet stored"
    )
