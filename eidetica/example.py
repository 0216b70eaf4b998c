"""The README's main job until the daemon exists: open a node on SQLite, write, reopen, read.

Run as ``python -m eidetica.example DIRECTORY``. Each run adds one visit to a tree
named "example" in that directory's node, so running it twice shows the data and the
device key surviving a restart.
"""

from __future__ import annotations

import sys

import trio

import eidetica


async def visit(directory: str) -> None:
    """Commit one visit to the example tree, then reopen the node and print what it holds."""
    async with eidetica.open_instance(directory) as inst:
        trees = [t for t in await inst.trees() if (await t.settings()).get("name") == "example"]
        tree = trees[0] if trees else await inst.create_tree(name="example")
        visits = (await tree.doc("visits")).get("count", 0) + 1
        async with tree.transaction() as op:
            op.doc("visits").set("count", visits)
            op.doc("visits").set(("log", str(visits)), {"visit": visits})
        root_id, key = tree.root_id, inst.public_key

    async with eidetica.open_instance(directory) as inst:
        reopened = await inst.open_tree(root_id)
        doc = await reopened.doc("visits")
        print(f"node key   {inst.public_key} (unchanged: {inst.public_key == key})")
        print(f"tree       {root_id}")
        print(f"tips       {await reopened.tips()}")
        print(f"visits     {doc.get('count')}")
        print(f"last visit {doc.get(('log', str(visits)))}")


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "node-data"
    trio.run(visit, directory)


if __name__ == "__main__":
    main()
