"""Several seeds of one experiment, in parallel processes, summarised as median [min, max] and mean ± std.

One seed's energy MSE can move several-fold between equivalent runs, so a claim rests on the spread
over seeds. `run_seeds` runs the experiment once per seed into `OUT/seed-<s>` (through the runner)
and writes `summary.json` and `summary.md` to `OUT` after every finished seed, so an interrupted
run keeps the seeds that finished.

Worker processes are bounded (`--jobs` at most the CPU cores) and die with their parent: each asks
the kernel for SIGKILL when its parent goes (Linux `PR_SET_PDEATHSIG`) and also watches its parent
id, so a killed or interrupted parent leaves no process behind. Ctrl-C reaches the parent only
(workers ignore SIGINT); the parent then kills its workers, writes the partial summary and stops.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from ..core.errors import InnergradError
from ..core.files import write_atomic
from .common import fmt
from .runner import Experiment, claim, run

# Metrics kept from each run: (mean, standard error) pairs and plain numbers, per model.
PAIR_KEYS = ("train", "test", "energy_paper", "energy", "energy_rk4", "energy_leapfrog", "state_mse")
SCALAR_KEYS = ("rollout_mse_mean", "energy_mse_mean", "h_spread_rollout_mean", "h_spread_data_mean",
               "unseen_rollout_mse_mean", "d_relative_error", "dissipative_field_error", "conservative_field_error",
               "rho_learned", "train_seconds")
MAX_SEEDS = 1000
KILL_WAIT_S = 10.0  # how long the parent waits for a killed worker to be gone


def max_jobs() -> int:
    """The most worker processes a run may start: one per CPU core."""
    return max(1, os.cpu_count() or 1)


def parse_seeds(spec: str) -> list[int]:
    """`"0-9"` -> 0..9, `"0,3,7"` -> [0, 3, 7], mixtures like `"0-2,5"` too."""
    seeds: list[int] = []
    for part in str(spec).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InnergradError(f"--seeds takes non-negative integers and ranges such as 0-9 or 0,3,7; got {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi - lo + 1 + len(seeds) > MAX_SEEDS or hi >= 2**32:
            raise InnergradError(f"--seeds {spec!r}: at most {MAX_SEEDS} seeds, each below 2**32; give a shorter "
                                 "range such as 0-9")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise InnergradError(f"--seeds {spec!r} names a seed twice")
    return seeds


def check_jobs(jobs) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InnergradError(f"--jobs must be a positive integer, got {jobs!r}")
    if jobs > max_jobs():
        raise InnergradError(f"--jobs {jobs} is more than this machine's {max_jobs()} CPU core(s); give --jobs "
                             f"{max_jobs()} or fewer (each job is one process training one seed)")


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


def _one(experiment: Experiment, seed: int, out: Path) -> dict:
    res = run(experiment, out=out, seed=seed, quiet=True, threads=1)
    return {"seed": seed, "command": res.get("command"), "versions": res.get("versions"),
            "seconds_total": res.get("seconds_total"), "metrics": _flatten(res)}


# ---------------------------------------------------------------- worker processes


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` goes: by the kernel where it can (Linux), else by a watcher."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent went before the request above took effect
        os._exit(1)

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="innergrad-parent-watch").start()


def _worker(cls: type, options: dict, seed: int, out: str, parent: int, conn) -> None:
    """One seed in a worker process: the result (or the error) goes back through `conn`."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        conn.send(("ok", _one(cls(**options), seed, Path(out))))
    except BaseException as e:  # noqa: BLE001  (reported to the parent, which decides)
        conn.send(("error", f"{type(e).__name__}: {e}", isinstance(e, InnergradError), traceback.format_exc()))
    finally:
        conn.close()


class _Pool:
    """At most `jobs` worker processes, one seed each; `results()` yields (seed, outcome) as they finish."""

    def __init__(self, experiment: Experiment, seeds: list[int], out: Path, jobs: int):
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, never a fork holding torch's pools
        self.cls, self.options = type(experiment), experiment.options
        self.pending, self.out, self.jobs = list(seeds), out, jobs
        self.running: dict[int, tuple] = {}  # seed -> (process, connection)

    def _start(self, seed: int) -> None:
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker, name=f"innergrad-seed-{seed}", daemon=True,
                             args=(self.cls, self.options, seed, str(self.out / f"seed-{seed}"), os.getpid(), send))
        p.start()
        send.close()
        self.running[seed] = (p, recv)

    def results(self):
        while self.pending or self.running:
            while self.pending and len(self.running) < self.jobs:
                self._start(self.pending.pop(0))
            ready = wait([c for _, c in self.running.values()], timeout=5.0)
            for seed in [s for s, (_, c) in self.running.items() if c in ready]:
                p, conn = self.running.pop(seed)
                try:
                    outcome = conn.recv()
                except EOFError:  # the worker died without a word (killed, out of memory)
                    outcome = ("error", "the worker process ended without a result", False, "")
                conn.close()
                p.join(KILL_WAIT_S)
                if p.exitcode is None:
                    p.kill()
                    p.join(KILL_WAIT_S)
                if outcome[0] == "error" and p.exitcode not in (0, None):
                    outcome = (*outcome[:1], f"{outcome[1]} (exit code {p.exitcode})", *outcome[2:])
                yield seed, outcome

    def kill_all(self) -> None:
        """Kill every running worker and wait (bounded) until each is gone."""
        for p, _ in self.running.values():
            p.kill()
        for p, conn in self.running.values():
            p.join(KILL_WAIT_S)
            conn.close()
        self.running.clear()
        self.pending.clear()


# ---------------------------------------------------------------- the run over seeds


class _Summary:
    """The seeds' results so far; written to OUT after every seed, so nothing finished is lost."""

    def __init__(self, experiment: Experiment, seeds: list[int], out: Path, jobs: int):
        self.name, self.seeds, self.out, self.jobs = experiment.name, list(seeds), out, jobs
        self.runs: list[dict] = []
        self.failed: dict[int, str] = {}
        self.t0 = time.perf_counter()

    def data(self, status: str) -> dict:
        runs = sorted(self.runs, key=lambda r: self.seeds.index(r["seed"]))
        models = runs[0]["metrics"].keys() if runs else ()
        stats = {m: {k: summarise([r["metrics"][m][k] for r in runs]) for k in runs[0]["metrics"][m]}
                 for m in models}
        return {"experiment": self.name, "seeds": [r["seed"] for r in runs], "requested_seeds": self.seeds,
                "status": status, "failed": {str(s): m for s, m in self.failed.items()}, "jobs": self.jobs,
                "command": runs[0]["command"] if runs else None, "versions": runs[0]["versions"] if runs else None,
                "wall_seconds": time.perf_counter() - self.t0,
                "cpu_seconds": float(sum(r["seconds_total"] or 0.0 for r in runs)), "runs": runs, "stats": stats}

    def write(self, status: str) -> dict:
        summary = self.data(status)
        write_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_atomic(self.out / "summary.md", summary_markdown(summary))
        return summary


def _serial(experiment: Experiment, seeds: list[int], out: Path):
    for s in seeds:
        try:
            yield s, ("ok", _one(experiment, s, out / f"seed-{s}"))
        except InnergradError as e:
            yield s, ("error", str(e), True, "")


class _Interrupted(BaseException):
    pass


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def run_seeds(experiment: Experiment, seeds: list[int], out: str | Path | None = None, jobs: int = 1,
              quiet: bool = False) -> dict:
    """Run `experiment` once per seed into `out/seed-<s>`, `jobs` processes at a time; summarise.

    Each run uses one torch thread (the networks are small; processes scale better than threads).
    `summary.json` and `summary.md` are rewritten after every finished seed; an interrupted run
    (Ctrl-C, SIGTERM) kills its workers and leaves the summary of the seeds that finished
    (`status: "interrupted"`). A seed that fails is listed under `failed`; then an error names it.
    """
    check_jobs(jobs)
    if not seeds:
        raise InnergradError("--seeds names no seed; give e.g. 0-4")
    jobs = min(jobs, len(seeds))
    with claim(out, experiment.default_out() + "-seeds") as folder:
        summary = _Summary(experiment, seeds, folder.path, jobs)
        pool = _Pool(experiment, seeds, folder.path, jobs) if jobs > 1 else None
        on_main = threading.current_thread() is threading.main_thread()
        old_term = signal.signal(signal.SIGTERM, _raise_interrupted) if on_main else None
        try:
            for seed, outcome in (pool.results() if pool else _serial(experiment, seeds, folder.path)):
                if outcome[0] == "ok":
                    summary.runs.append(outcome[1])
                else:
                    summary.failed[seed] = outcome[1]
                    if outcome[3] and not quiet:
                        print(outcome[3], file=sys.stderr)
                summary.write("running")
                if not quiet:
                    done = len(summary.runs) + len(summary.failed)
                    print(f"  seed {seed} {'done' if outcome[0] == 'ok' else 'FAILED'} "
                          f"({time.perf_counter() - summary.t0:.0f} s; {done}/{len(seeds)})", flush=True)
        except (KeyboardInterrupt, _Interrupted):
            if pool:
                pool.kill_all()
            summary.write("interrupted")
            print(f"interrupted: the summary of the {len(summary.runs)} seed(s) that finished is in "
                  f"{folder.path / 'summary.md'}", file=sys.stderr)
            raise KeyboardInterrupt from None
        finally:
            if pool:
                pool.kill_all()
            if on_main:
                signal.signal(signal.SIGTERM, old_term)
        result = summary.write("failed" if summary.failed else "completed")
    if summary.failed:
        first = min(summary.failed)
        raise InnergradError(f"seed(s) {', '.join(map(str, sorted(summary.failed)))} failed (seed {first}: "
                             f"{summary.failed[first]}); the {len(summary.runs)} that finished are summarised in "
                             f"{folder.path / 'summary.md'}")
    if not quiet:
        print(summary_markdown(result))
    return result


def cell(st: dict, kind: str = "median") -> str:
    """`median [min, max]` or `mean ± std` in the reports' number format."""
    if kind == "median":
        return f"{fmt(st['median'])} [{fmt(st['min'])}, {fmt(st['max'])}]"
    if st["diverged"]:
        return f"diverged in {st['diverged']}/{st['n']}"
    return f"{fmt(st['mean'])} ± {fmt(st['std'])}"


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    span = f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]})" if seeds else "no finished seed"
    lines = [f"# {summary['experiment']} over {span}", ""]
    if summary.get("status", "completed") != "completed":
        lines += [f"Status: {summary['status']}; {len(seeds)} of {len(summary['requested_seeds'])} seeds finished"
                  + (f"; failed: {', '.join(summary['failed'])}" if summary.get("failed") else "") + ".", ""]
    if not seeds:
        return "\n".join(lines) + "\n"
    lines += [f"First seed's command: `{summary['command']}`", "",
              f"{summary['versions']}. {summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s of runs "
              f"in {summary['jobs']} process(es).", "",
              "| Model | Metric | median [min, max] | mean ± std |", "|---|---|---|---|"]
    for model, metrics in summary["stats"].items():
        for k, st in metrics.items():
            lines.append(f"| {model} | {k} | {cell(st)} | {cell(st, 'mean')} |")
    return "\n".join(lines) + "\n"
