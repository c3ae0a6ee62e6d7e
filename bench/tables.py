"""The Markdown table every bench prints its figures as (paste-able into a closing note or the README)."""
from __future__ import annotations

from typing import Sequence


def print_table(header: Sequence, rows: Sequence[Sequence]) -> None:
    """Columns as wide as their widest cell, a rule under the header."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |")
