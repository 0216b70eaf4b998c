"""Deterministic simulation for eidetica and for users' own tests.

``Simulation`` runs N nodes on the in-process sim network under trio's
``MockClock``, drives a seeded workload and seeded faults, heals everything, lets the
timers run, and checks the engine's promises (:mod:`eidetica.testing.invariants`).
``python -m eidetica.testing.sim`` runs many seeds and prints a replay command for
any that fails.
"""

from eidetica.testing.invariants import InvariantBroken
from eidetica.testing.kinds import Faults, Workload
from eidetica.testing.simulation import Outcome, Simulation, run_seed

__all__ = ["Faults", "InvariantBroken", "Outcome", "Simulation", "Workload", "run_seed"]
