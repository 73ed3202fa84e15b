"""Numbers as text, one way for every table and summary (CLI, reports, benchmark, experiments)."""

from __future__ import annotations

import math


def fmt(v: float | None, spec: str = ".4f", missing: str = "-") -> str:
    """`v` formatted with `spec`; `missing` where there is no value (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return format(v, spec)


def shorten(value: object, n: int = 80) -> str:
    """`value` as text for an error message, cut to `n` characters (a pasted file or a huge list stays readable)."""
    text = " ".join(str(value).split()) if isinstance(value, str) else repr(value)
    return text if len(text) <= n else f"{text[: n - 12]}... ({len(text)} chars)"
