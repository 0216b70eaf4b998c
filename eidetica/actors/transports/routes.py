"""Which transport an address goes to, and what a node can do with its links."""

from __future__ import annotations

from eidetica.actors.transports.admission import Admission
from eidetica.actors.transports.base import Transport, TwoWay
from eidetica.errors import SyncError


class Routes:
    """A node's transports by scheme; a two-way transport also serves its reply
    scheme (``ws-in://N`` reaches a link a peer opened to us)."""

    def __init__(self, transports: dict[str, Transport]) -> None:
        self._by_scheme = dict(transports)
        self.two_way = [t for t in transports.values() if isinstance(t, TwoWay)]
        for two_way in self.two_way:
            self._by_scheme.setdefault(two_way.reply_scheme, two_way)

    @property
    def families(self) -> dict[str, str]:
        """Scheme -> the scheme of the transport serving it."""
        return {scheme: transport.scheme for scheme, transport in self._by_scheme.items()}

    @property
    def reply_schemes(self) -> set[str]:
        return {two_way.reply_scheme for two_way in self.two_way}

    def admissions(self) -> list[Admission]:
        """The connection admissions of the transports that have one, each once."""
        found: dict[int, Admission] = {}
        for transport in self._by_scheme.values():
            admission = getattr(transport, "admission", None)
            if isinstance(admission, Admission):
                found[id(admission)] = admission
        return list(found.values())

    def transport(self, address: str) -> Transport:
        scheme = address.split("://", 1)[0]
        transport = self._by_scheme.get(scheme)
        if transport is None:
            raise SyncError(f"no transport for {address!r}; known: {sorted(self._by_scheme)}")
        return transport

    def is_open(self, address: str) -> bool:
        """Whether the link at ``address`` is open (always, for one-shot transports)."""
        two_way = self._two_way_of(address)
        return two_way is None or two_way.is_open(address)

    def close(self, address: str) -> None:
        """Close the two-way link at ``address``, if there is one."""
        if (two_way := self._two_way_of(address)) is not None:
            two_way.close(address)

    def _two_way_of(self, address: str) -> TwoWay | None:
        transport = self._by_scheme.get(address.split("://", 1)[0])
        return transport if isinstance(transport, TwoWay) else None
