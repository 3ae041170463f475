"""Numbers as text in tables, logs and CSV files: one formatter, so every output agrees.

Kept free of heavy imports: the CLI scripts and the exploration logs use it.
"""

from __future__ import annotations

import math
from typing import Any


def number(x: Any, fmt: str = ".4g", *, nonfinite: str | None = None) -> str:
    """x in `fmt`; 'n/a' when x is not a number (None, text); NaN/inf as str(float) ('nan',
    'inf') unless `nonfinite` names the text to show instead."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if math.isfinite(v):
        return format(v, fmt)
    return str(v) if nonfinite is None else nonfinite


def cell(v: Any) -> str:
    """A table or CSV cell: a float to 3 significant digits, anything else as str()."""
    return number(v, ".3g") if isinstance(v, float) else str(v)
