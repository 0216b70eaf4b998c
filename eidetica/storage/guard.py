"""The one check that eidetica's async API is awaited under trio.

Under asyncio a coroutine of ours runs until its first trio call, and anything it did
before (a tree created and stored, say) stays done while the call after it fails with
trio's own message. So every public async method starts with :func:`require_trio`,
which fails at once, before anything is written, and names the modules to use instead.
It costs one thread-local read.
"""

from __future__ import annotations

import trio

from eidetica.errors import NotInTrio

MESSAGE = (
    "eidetica's API runs under trio; from asyncio use eidetica.aio,"
    " from plain threads eidetica.blocking"
)


def require_trio() -> None:
    """Raise :class:`NotInTrio` unless called inside a trio task."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise NotInTrio(MESSAGE) from None
