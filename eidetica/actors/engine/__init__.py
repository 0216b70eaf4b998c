"""The sync engine's pure parts: plain state and rules, no trio, no I/O (h11's style).

Time comes in as ``now``; nothing here reads a clock, a socket or storage, so every
rule is tested without an event loop. The actors in ``eidetica.actors`` are the shell
that feeds these parts what happened and carries out what they decide. So far the
engine holds a peer's circuit breaker; the peer table and its lifecycle are to follow
(issue 11).
"""
