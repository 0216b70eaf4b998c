"""The sync engine's pure parts: plain state and rules, no trio, no I/O (h11's style).

Time comes in as ``now``; nothing here reads a clock, a socket or storage, so every
rule is tested without an event loop. ``core.Engine.handle(event, now)`` returns the
effects the supervisor (the shell, ``eidetica.actors.supervisor``) carries out; the
peer table and its lifecycle, the link rules, the breaker, the retry queue's rules,
the admission policy, the services' view and the typed status live here.
"""
