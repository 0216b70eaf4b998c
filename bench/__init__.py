"""Benchmarks for eidetica: commit rate, document reads, bulk storage and hash choice.

Run them all with ``python -m bench``, or one with ``python -m bench NAME``. Each
module measures one thing with ``time.perf_counter`` and prints its figures as a table.
"""
