"""Several seeds of one experiment, in parallel processes, summarised as median [min, max] and mean ± std.

One seed's energy MSE can move several-fold between equivalent runs, so a claim rests on the spread
over seeds. `run_seeds` runs `experiments.<fn>(..., seed=s, out=OUT/seed-<s>)` for each seed and
writes `summary.json` and `summary.md` to `OUT`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..core.errors import InnergradError

# Metrics kept from each run: (mean, standard error) pairs and plain numbers, per model.
PAIR_KEYS = ("train", "test", "energy_paper", "energy", "energy_rk4", "energy_leapfrog", "state_mse")
SCALAR_KEYS = ("rollout_mse_mean", "energy_mse_mean", "h_spread_rollout_mean", "h_spread_data_mean",
               "train_seconds")


def parse_seeds(spec: str) -> list[int]:
    """`"0-9"` -> 0..9, `"0,3,7"` -> [0, 3, 7], mixtures like `"0-2,5"` too."""
    seeds: list[int] = []
    for part in str(spec).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InnergradError(f"--seeds takes non-negative integers and ranges such as 0-9 or 0,3,7; got {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise InnergradError(f"--seeds {spec!r} names a seed twice")
    return seeds


def _flatten(res: dict) -> dict[str, dict[str, float]]:
    """model -> metric -> number from one run's results."""
    if "models" not in res:  # the force-field experiments report one model's metrics
        return {"field": {k: float(v) for k, v in res["metrics"].items() if isinstance(v, (int, float))}}
    out: dict[str, dict[str, float]] = {}
    for model, r in res["models"].items():
        row = {}
        for k in PAIR_KEYS:
            if k in r:
                row[k] = float(r[k][0])
        for k in SCALAR_KEYS:
            if k in r and r[k] is not None:
                row[k] = float(r[k])
        if row:
            out[model] = row
    return out


def summarise(values: list[float]) -> dict:
    """median [min, max] and mean ± std (sample std) of one metric over seeds; diverged runs are inf."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return {
        "n": int(len(v)),
        "diverged": int(len(v) - len(finite)),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "std": float(np.std(v, ddof=1)) if len(v) > 1 and len(finite) == len(v) else math.nan,
        "values": [float(x) for x in v],
    }


def experiment(fn_name: str):
    """The experiment function by name (a name crosses into the worker processes; a function need not)."""
    from . import hnn, own_data

    return {"run_hnn": hnn.run_hnn, "run_forces": hnn.run_forces, "run_hnn_data": own_data.run_hnn_data,
            "run_forces_data": own_data.run_forces_data}[fn_name]


def _one(fn_name: str, kwargs: dict) -> dict:
    res = experiment(fn_name)(**kwargs)
    return {"seed": kwargs["seed"], "command": res.get("command"), "versions": res.get("versions"),
            "seconds_total": res.get("seconds_total"), "metrics": _flatten(res)}


def run_seeds(fn_name: str, kwargs: dict, seeds: list[int], out: str | Path, jobs: int = 1,
              quiet: bool = False) -> dict:
    """Run `fn_name(**kwargs, seed=s, out=out/seed-<s>)` for every seed, `jobs` processes at a time.

    Each process uses one torch thread (the networks are small; processes scale better than
    threads). Writes `summary.json` (every seed's numbers and the statistics) and `summary.md`.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InnergradError(f"--jobs must be a positive integer, got {jobs!r}")
    from .hnn import _out_dir

    out = _out_dir(out, out)
    t0 = time.perf_counter()
    calls = [dict(kwargs, seed=s, out=str(out / f"seed-{s}"), quiet=True, threads=1) for s in seeds]
    if jobs == 1 or len(seeds) == 1:
        runs = []
        for c in calls:
            runs.append(_one(fn_name, c))
            if not quiet:
                print(f"  seed {c['seed']} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        # spawn: a fresh interpreter per worker, never a fork of a process holding torch's thread pools.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=ctx) as pool:
            futures = [pool.submit(_one, fn_name, c) for c in calls]
            runs = []
            for c, f in zip(calls, futures):
                runs.append(f.result())
                if not quiet:
                    print(f"  seed {c['seed']} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    models = runs[0]["metrics"].keys()
    stats = {m: {k: summarise([r["metrics"][m][k] for r in runs])
                 for k in runs[0]["metrics"][m]} for m in models}
    summary = {"experiment": fn_name, "seeds": list(seeds), "jobs": jobs,
               "command": runs[0]["command"], "versions": runs[0]["versions"],
               "wall_seconds": time.perf_counter() - t0,
               "cpu_seconds": float(sum(r["seconds_total"] or 0.0 for r in runs)),
               "runs": runs, "stats": stats}
    from ..core.files import write_atomic

    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(out / "summary.md", summary_markdown(summary))
    if not quiet:
        print(summary_markdown(summary))
    return summary


def cell(st: dict, kind: str = "median") -> str:
    """`median [min, max]` or `mean ± std` in the reports' number format."""
    from .hnn import _fmt

    if kind == "median":
        return f"{_fmt(st['median'])} [{_fmt(st['min'])}, {_fmt(st['max'])}]"
    if st["diverged"]:
        return f"diverged in {st['diverged']}/{st['n']}"
    return f"{_fmt(st['mean'])} ± {_fmt(st['std'])}"


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"# {summary['experiment']} over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]})", "",
             f"First seed's command: `{summary['command']}`", "",
             f"{summary['versions']}. {summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s of runs "
             f"in {summary['jobs']} process(es).", "",
             "| Model | Metric | median [min, max] | mean ± std |", "|---|---|---|---|"]
    for model, metrics in summary["stats"].items():
        for k, st in metrics.items():
            lines.append(f"| {model} | {k} | {cell(st)} | {cell(st, 'mean')} |")
    return "\n".join(lines) + "\n"
