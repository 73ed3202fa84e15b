"""Reporting benchmark results: the agreement tolerance, Markdown tables, the device's name, JSON.

Used by the harness (`harness.py`), `innergrad bench` and the scripts in benchmarks/.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..core.files import strict_json
from ..core.text import fmt

if TYPE_CHECKING:
    from .harness import Result

AGREEMENT_TOLERANCE = {"float64": 1e-8, "float32": 2e-3}


def agreement_tolerance(dtype: str) -> float:
    return AGREEMENT_TOLERANCE.get(dtype, 5e-2)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


_fmt = functools.partial(fmt, missing="—")


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table of one configuration's results."""
    by = {r.way: r for r in results}
    naive = by.get("naive")
    jax = by.get("jax")
    tol = agreement_tolerance(results[0].config["dtype"]) if results else None
    lines = [
        "| way | ms/step | vs naive | vs JAX | peak MiB | first call s | compile s | agrees (max rel diff "
        f"<= {_fmt(tol, '.0e')}) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.way} | — | | | | | | n/a: {r.skipped} |")
            continue
        vs_naive = naive.ms / r.ms if naive and naive.ms and r.ms else None
        vs_jax = jax.ms / r.ms if jax and jax.ms and r.ms else None
        agree = "—" if r.agrees is None else ("yes" if r.agrees else "**NO**")
        lines.append(
            f"| {r.way} | {_fmt(r.ms, '.2f')} | {_fmt(vs_naive, '.2f')}x | {_fmt(vs_jax, '.2f')}x | "
            f"{_fmt(r.peak_mib, '.1f')} | {_fmt(r.first_s, '.2f')} | {_fmt(r.compile_s, '.2f')} | "
            f"{agree} ({_fmt(r.max_rel_diff, '.1e')}) |"
        )
    notes = [f"- {r.way}: {r.note}" for r in results if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def format_scaling(results: Sequence[Result]) -> str:
    """How ms/step grows with T and with B, per way (from a sweep)."""
    rows = [r for r in results if r.ms is not None]
    out = []
    for axis, other in (("T", ("B", "width")), ("B", ("T", "width"))):
        groups: dict[tuple, dict[str, dict[int, float | None]]] = {}
        for r in rows:
            k = tuple(r.config[o] for o in other)
            groups.setdefault(k, {}).setdefault(r.way, {})[r.config[axis]] = r.ms
        for k, ways in sorted(groups.items()):
            vals = sorted({v for w in ways.values() for v in w})
            if len(vals) < 2:
                continue
            head = f"ms/step vs {axis} ({', '.join(f'{o}={v}' for o, v in zip(other, k))})"
            out.append(f"\n{head}\n\n| way | " + " | ".join(f"{axis}={v}" for v in vals) + " | growth |")
            out.append("|---|" + "---:|" * (len(vals) + 1))
            for way, m in ways.items():
                cells = [_fmt(m.get(v), ".2f") for v in vals]
                lo, hi = m.get(vals[0]), m.get(vals[-1])
                growth = f"{hi / lo:.1f}x for {vals[-1] // vals[0]}x {axis}" if lo and hi else "—"
                out.append(f"| {way} | " + " | ".join(cells) + f" | {growth} |")
    return "\n".join(out)


def save_json(path: str, device: str, results: Sequence[Result], overwrite: bool = False) -> None:
    from ..core.files import write_output

    tol = {r.config["dtype"]: agreement_tolerance(r.config["dtype"]) for r in results}
    text = json.dumps(strict_json({"device": device_name(device), "agreement_tolerance": tol,
                                   "results": [asdict(r) for r in results]}), indent=1, allow_nan=False)
    write_output(path, text + "\n", overwrite=overwrite, option="--json")
