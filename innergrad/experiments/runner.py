"""The one experiment runner: every `innergrad experiment ...` run goes through `run`.

The runner owns what every experiment shares: the output folder (a `RunFolder`, made exclusively
and locked while the run writes; every file in it made by `core/files.write_output`), torch's
thread count (`ig.settings(threads=...)`: set for the run, restored after), the seed, the
`report.md` / `results.json` pair and the printed summary. An experiment is a small
class that supplies data, models, metrics and plots:

    class MyExperiment(Experiment):
        name = "mine"                                  # its row in registry.EXPERIMENTS
        def __init__(self, steps=100): ...             # checks its options (one-line errors)
        def default_out(self): return "runs/mine"      # new folders are runs/mine-<time>-<id>
        def command(self, seed): return f"innergrad experiment mine --seed {seed}"
        def execute(self, ctx): ...; return {"models": ...}   # ctx.out, ctx.seed, ctx.quiet, ctx.add_file
        def report(self, res): return "# Mine\\n..."
        def summary(self, res): return ["  one line per model"]

    res = run(MyExperiment(steps=10), out=None, seed=0)
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..core.files import strict_json, write_output
from ..core.settings import settings
from ..train import RunFolder
from .common import check_positive


class Experiment:
    """One experiment: its options (checked in `__init__`) and the parts only it knows.

    Subclasses set `name` and implement `default_out`, `command`, `execute`, `report` and `summary`;
    `options` (the constructor's keyword arguments) lets a worker process rebuild the experiment.
    """

    name: str = ""

    def __init__(self, **options):
        self.options = options

    def default_out(self) -> str:
        """Where new run folders go when no `out` is given: `<default_out>-<time>-<id>`."""
        return f"runs/{self.name}"

    def command(self, seed: int) -> str:
        """The command line that reproduces this run."""
        raise NotImplementedError

    def execute(self, ctx: Context) -> dict:
        """Data, models, metrics and plots (`ctx.add_file` for each file written): the results dict."""
        raise NotImplementedError

    def report(self, res: dict) -> str:
        """`report.md` from the results (which hold `command`, `versions`, `seconds_total` and `files`)."""
        raise NotImplementedError

    def summary(self, res: dict) -> list[str]:
        """The lines printed under the title after the run."""
        return []

    def title(self, res: dict) -> str:
        return self.name

    def inputs(self) -> list[tuple[str, str]]:
        """The files this experiment reads, as `(option, path)`: an output may never be one of them."""
        return []


@dataclass
class Context:
    """What the runner hands an experiment: its folder, seed and verbosity."""

    out: Path
    seed: int
    quiet: bool
    files: list[str] = field(default_factory=list)

    def add_file(self, name: str) -> str:
        """Record a file the experiment wrote into `out` (listed in the report and the results)."""
        self.files.append(name)
        return name

    def rng(self, offset: int = 0) -> np.random.RandomState:
        """numpy's legacy generator seeded with `seed + offset` (the HNN paper's draws)."""
        return np.random.RandomState(self.seed + offset)

    def seed_torch(self) -> None:
        """Reseed torch (before each model's initialisation: each model starts from the same seed)."""
        torch.manual_seed(self.seed)


def versions() -> str:
    """Library versions and the thread count, for the reports' reproduction line."""
    from ..core.version import __version__

    return (f"innergrad {__version__}, torch {torch.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}, {platform.machine()} ({torch.get_num_threads()} torch thread(s))")


def check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InnergradError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def claim(out, default: str) -> RunFolder:
    """This run's folder, locked while it runs: `out` (new, or empty), or a fresh `<default>-<time>-<id>`."""
    if out is None:
        return RunFolder.create(None, root=os.path.dirname(default) or ".", prefix=os.path.basename(default) + "-")
    return RunFolder.create(out)


def run(experiment: Experiment, out: str | os.PathLike | None = None, seed: int = 0, quiet: bool = False,
        threads: int | None = 1) -> dict:
    """Run `experiment` into its own folder; write `report.md` and `results.json`; print a summary.

    **Arguments:** `out`: a new or empty folder (None: a fresh `<default_out>-<time>-<id>`); `seed`:
    numpy and torch seed; `quiet`: no progress bars or summary; `threads`: torch threads for the run
    (None: leave as is), restored afterwards.

    **Returns:** the results dict, also written to `results.json`.
    """
    check_seed(seed)
    check_positive(threads, "threads (--threads)")
    with claim(out, experiment.default_out()) as folder, settings(threads=threads):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        ctx = Context(out=folder.path, seed=seed, quiet=quiet)
        res: dict = {"experiment": experiment.name, "command": experiment.command(seed)}
        res.update(experiment.execute(ctx))
        res["versions"] = versions()
        res["seconds_total"] = time.perf_counter() - t0
        res["files"] = ["report.md", "results.json", *ctx.files]
        inputs = experiment.inputs()
        write_output(folder.path / "report.md", experiment.report(res), inputs=inputs, option="report.md")
        write_output(folder.path / "results.json", json.dumps(strict_json(res), indent=2, allow_nan=False) + "\n",
                     inputs=inputs, option="results.json")
    if not quiet:
        print(f"{experiment.title(res)} ({folder.path / 'report.md'})")
        for line in experiment.summary(res):
            print(line)
    return res
