"""One dial: reach an address, prove the peer there, and say how it went.

A dial never takes the engine down: whatever goes wrong comes back as a
``DialFailed`` event carrying the error, for the engine to answer or log.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from eidetica.actors import commands as cmd
from eidetica.actors.engine.effects import Dial
from eidetica.actors.link import Link
from eidetica.actors.transports.base import Transport
from eidetica.protocol.codec import JSON, MSGPACK, Codec
from eidetica.storage.instance import Instance


def codec_for(address: str) -> Codec:
    """HTTP speaks JSON; the binary transports msgpack."""
    return JSON if address.split("://", 1)[0] == "http" else MSGPACK


async def dial(
    instance: Instance,
    transport: Callable[[str], Transport],
    order: Dial,
    is_open: Callable[[str], bool],
) -> cmd.LinkUp | cmd.DialFailed:
    """Wait ``order.after``, then handshake with the node at ``order.address``."""
    await trio.sleep(order.after)
    try:
        link = Link(transport(order.address), order.address, codec_for(order.address))
        key = await link.handshake(instance, expected_key=order.peer)
    except Exception as exc:
        still_open = is_open(order.address)
        return cmd.DialFailed(order.address, order.peer, exc, order.reply, order.chosen, still_open)
    return cmd.LinkUp(order.address, key, order.reply, order.chosen, link)
