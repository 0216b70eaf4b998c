"""Printing benchmark figures as aligned plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``header``: the first column left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        label, *figures = cells
        aligned = [label.ljust(widths[0])]
        aligned += [cell.rjust(width) for cell, width in zip(figures, widths[1:], strict=True)]
        return "  ".join(aligned)

    print(f"\n{title}")
    print(line(header))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))
