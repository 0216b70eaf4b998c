"""What a simulated run may draw: the kinds of fault, and the kinds of work beyond
commits and syncs. Each is a set of switches, all on by default, named on the
runner's command line (``--faults partitions,crashes``, ``--workload none``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self


@dataclass(frozen=True)
class _Switches:
    @classmethod
    def kinds(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, text: str) -> Self:
        """``all``, ``none``, or a comma-separated list of kinds (``partitions,crashes``)."""
        names = cls.kinds()
        if text == "all":
            return cls()
        chosen = set() if text == "none" else {part.strip() for part in text.split(",")}
        unknown = chosen - set(names)
        if unknown:
            what = cls.__name__.lower()
            raise ValueError(f"unknown {what} {sorted(unknown)}: choose from {', '.join(names)}")
        return cls(**{name: name in chosen for name in names})


@dataclass(frozen=True)
class Faults(_Switches):
    """Which kinds of fault a run may draw."""

    partitions: bool = True
    drops: bool = True
    delays: bool = True
    duplicates: bool = True
    slow_nodes: bool = True
    """One node's links get slower than the rest (or fast again)."""
    crashes: bool = True
    clock_jumps: bool = True
    departures: bool = True
    """One node may go away for good (never restarted; the others keep it as a peer)."""


@dataclass(frozen=True)
class Workload(_Switches):
    """Which kinds of work a run may draw besides commits and asked-for syncs."""

    permissions: bool = True
    """An admin grants write or admin, or takes a grant away (anyone may still read)."""
    relationships: bool = True
    """A node relates the tree with a peer, or stops, as long as all stay connected."""
    hub: bool = True
    """Half the seeds make the last node a hub that relates no tree itself and takes
    trees in: from anyone (``"any"``), or, under a callable policy, from the run's
    nodes only (needs three nodes)."""
