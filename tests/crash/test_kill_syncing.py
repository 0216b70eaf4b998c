"""Two nodes linked over WebSocket, one taking commits that it pushes to the other:
either is killed (SIGKILL) at random moments mid-sync, restarted, and the two must
hold the same again by themselves, within their timers, with nothing lost."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.crash.nodes import (
    CONVERGE_SECONDS,
    QUICK_TIMERS,
    Serve,
    Writer,
    cli,
    integrity,
    kills,
    lost,
    read,
    summary,
    tips,
    wait_until,
)


def test_linked_nodes_killed_mid_sync_reconverge_by_themselves(
    tmp_path: Path, rng: random.Random
) -> None:
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    b_key = cli(b_data, "init")
    cli(a_data, "init")
    tree = cli(a_data, "tree", "create", "crash")
    cli(a_data, "tree", "grant", tree, b_key, "write")
    a = Serve(a_data, *QUICK_TIMERS)
    b = Serve(b_data, *QUICK_TIMERS, "--sync", tree)
    acknowledged: dict[str, int] = {}
    converged: list[float] = []
    killed = {"a": 0, "b": 0}
    nodes = {"a": a, "b": b}
    try:
        address = a.start("--listen", "ws://127.0.0.1:0")["listening"]
        a.flags += ["--listen", address]  # a comes back where b dials
        b.flags += ["--peer", address]
        b.start()
        wait_until(lambda: tips(b_data, tree) is not None, CONVERGE_SECONDS, "b fetched the tree")
        for kill in range(kills(0.35)):
            writer = Writer(a_data, tree, "d", f"w{kill}")
            writer.start()
            victims = rng.choice(["a", "b", "ab"])
            writer.join(rng.uniform(0.05, 0.8))  # a random moment mid-sync
            for name in victims:
                nodes[name].kill()
                killed[name] += 1
            writer.finish()
            acknowledged |= writer.acknowledged
            assert writer.refused == [], writer.refused
            for name in victims:
                assert integrity(nodes[name].data, tmp_path / "copy") == ["ok"]
            restarted = time.monotonic()
            for name in victims:
                nodes[name].start()
            a_doc = read(a_data, tree, "d")
            assert lost(acknowledged, a_doc) == {}, f"kill {kill} ({victims}) lost commits"
            a_tips = tips(a_data, tree)
            wait_until(
                lambda: tips(b_data, tree) == a_tips,  # noqa: B023 (used at once)
                CONVERGE_SECONDS,
                f"b holds a's tips after kill {kill} of {victims}",
            )
            converged.append(time.monotonic() - restarted)
            assert read(b_data, tree, "d") == a_doc
        b.stop()
        a.stop()
        assert integrity(a_data, tmp_path / "copy") == ["ok"]
        assert integrity(b_data, tmp_path / "copy") == ["ok"]
        assert cli(a_data, "get", tree, "d") == cli(b_data, "get", tree, "d")
    finally:
        b.close()
        a.close()
    assert len(acknowledged) > 5 * kills(0.35), "too few commits to tell anything"
    print(
        f"\n{kills(0.35)} kills (a {killed['a']} times, b {killed['b']}, some both at once), "
        f"{len(acknowledged)} commits acknowledged, 0 lost; reconverged in {summary(converged)}"
    )
