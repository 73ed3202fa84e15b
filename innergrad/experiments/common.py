"""Helpers every experiment shares: option checks, number formats, statistics, the baseline model,
training through `ig.train.fit`, and rollouts with `solve_ivp`.

Public on purpose: an experiment module imports these by name, never another module's private ones.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core.activations import get_activation
from ..core.errors import InnergradError
from ..core.text import fmt as _text_fmt
from ..train import metrics

Tensor = torch.Tensor

#: Display names and plot colours of the models the experiments compare (one table for every report).
MODEL_NAMES = {"baseline": "Baseline NN", "hnn": "Hamiltonian NN", "dhnn": "Dissipative HNN",
               "lnn": "Lagrangian NN", "truth": "Ground truth"}
COLORS = {"truth": "black", "baseline": "tab:orange", "hnn": "tab:blue", "dhnn": "tab:green", "lnn": "tab:purple"}
CMAPS = {"truth": "Greys", "baseline": "Oranges", "hnn": "Blues", "dhnn": "Greens", "lnn": "Purples"}


def optional(module: str, extra: str = "train"):
    """Import an optional dependency, or a one-line error naming the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise InnergradError(
            f"`innergrad experiment` needs {module.split('.')[0]}; install it with "
            f"`pip install 'innergrad[{extra}]'`"
        ) from e


def progress(total: int, desc: str, quiet: bool):
    """A tqdm bar on stderr (silent with `quiet`)."""
    tqdm = optional("tqdm").tqdm
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)


def check_positive(value, name: str, allow_none: bool = True) -> None:
    """A positive integer (or None where allowed), else a one-line error naming the option."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InnergradError(f"{name} must be a positive integer, got {value!r}")


def check_number(value, name: str, *, low: float = 0.0, strict: bool = True, what: str = "number") -> None:
    """A finite real number above `low` (at or above it when not `strict`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"{'>' if strict else '>='} {low:g}"
        raise InnergradError(f"{name} must be a {what} ({bound}), got {value!r}")


def check_widths(hidden_layers: Sequence[int]) -> tuple[int, ...]:
    hidden_layers = tuple(hidden_layers)
    if not hidden_layers:
        raise InnergradError("hidden_layers must name at least one layer width, e.g. 200 200")
    for w in hidden_layers:
        check_positive(w, "each hidden layer width", allow_none=False)
    return hidden_layers


def fmt(v: float | None) -> str:
    """A metric in the reports' format; an infinite one is a diverged run."""
    return "diverged" if v is not None and math.isinf(v) else _text_fmt(v, ".2e", missing="n/a")


def pm(pair) -> str:
    """`mean ± standard error`, or the mean alone where the error is unknown."""
    mean, se = pair
    return f"{fmt(mean)} ± {fmt(se)}" if se is not None and math.isfinite(se) else fmt(mean)


def finite(v: float) -> float:
    """A float; NaN (a diverged rollout) counts as infinite."""
    return float(v) if math.isfinite(v) else math.inf


def mse_se(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """Mean of the squared errors and its standard error, std / sqrt(number of points) (the paper's)."""
    sq = (pred - target).pow(2)
    return sq.mean().item(), (sq.std() / math.sqrt(sq.shape[0])).item()


def group_stats(values: np.ndarray, groups: int) -> tuple[float, float]:
    """Mean and standard error over `groups` consecutive groups (5 groups of 3 in the HNN paper)."""
    if not np.all(np.isfinite(values)):
        return math.inf, math.nan
    parts = [p.mean() for p in np.array_split(values, min(groups, len(values)))]
    se = float(np.std(parts, ddof=1) / math.sqrt(len(parts))) if len(parts) > 1 else math.nan
    return float(np.mean(parts)), se


def fraction_below(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """In how many paired entries `a` is strictly below `b` (seed by seed), and of how many."""
    return sum(x < y for x, y in zip(a, b)), min(len(a), len(b))


class BaselineMLP(nn.Module):
    """The HNN paper's baseline: an MLP `dim -> hidden... -> dim` that predicts dx/dt directly.

    Same initialisation as the HNN's `ig.MLP(init="orthogonal")` (orthogonal weights, zero biases,
    no output bias), so the two models differ only in the Hamiltonian structure.
    """

    def __init__(self, dim: int, hidden_layers: Sequence[int] = (200, 200), activation: str = "tanh"):
        super().__init__()
        widths = (dim, *hidden_layers)
        self._act = get_activation(activation).fn
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], dim, bias=False)
        for lin in (*self.layers, self.out):
            nn.init.orthogonal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.layers:
            x = self._act(lin(x))
        return self.out(x)


def train_model(model: nn.Module, x: Tensor, dx: Tensor, val: tuple[Tensor, Tensor], *, steps: int, lr: float,
                weight_decay: float, batch_size: int | None, seed: int, quiet: bool) -> dict:
    """`ig.train.fit`: Adam with L2 weight decay (the HNN paper's) on the MSE between model(x) and dx.

    Returns the curves: `step` and `train` (each step's loss), `test_step` and `test` (MSE on `val`
    at each validation: every epoch, so every step in full batch), and `seconds`.
    """
    from ..train import fit

    t0 = time.perf_counter()
    h = fit(model, x, dx, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer="adam",
            loss="mse", val=val, seed=seed, progress=False if quiet else None)
    return {"step": list(h.steps), "train": list(h.losses), "test_step": [v["step"] for v in h.val],
            "test": [v["loss"] for v in h.val], "seconds": time.perf_counter() - t0}


def float64_copy(model: nn.Module) -> nn.Module:
    """An evaluation copy of `model` in float64 (rollouts and metrics run in double precision)."""
    return copy.deepcopy(model).double().eval()


def model_paths(model: nn.Module, ics: np.ndarray, span, t_eval: np.ndarray, rtol: float, bar=None) -> np.ndarray:
    """Each initial condition integrated along the model with `solve_ivp`, `(trials, T, dim)`; NaN
    after a solver failure (a rollout that blew up)."""
    solve_ivp = optional("scipy.integrate").solve_ivp
    m = float64_copy(model)

    def rhs(t, y):
        with torch.no_grad():
            return m(torch.from_numpy(y).unsqueeze(0))[0].numpy()

    paths = np.full((len(ics), len(t_eval), ics.shape[1]), np.nan)
    for i, y0 in enumerate(ics):
        sol = solve_ivp(rhs, span, y0, t_eval=t_eval, rtol=rtol)
        paths[i, : sol.y.shape[1]] = sol.y.T
        if bar is not None:
            bar.update(1)
    return paths


def energy_per_ic(energy, paths: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`ig.metrics.energy_mse` per initial condition of `(trials, T, dim)` paths; a diverged one is inf."""
    with np.errstate(all="ignore"):
        per_ic = metrics.energy_mse(energy, paths.transpose(1, 0, 2), truth.transpose(1, 0, 2), reduction="none",
                                    diverged="inf")
    per_ic[~np.isfinite(per_ic)] = np.inf
    return per_ic


def state_per_ic(paths: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`ig.metrics.rollout_mse` per initial condition of `(trials, T, dim)` paths; a diverged one is inf."""
    with np.errstate(all="ignore"):
        per_ic = metrics.rollout_mse(paths.transpose(1, 0, 2), truth.transpose(1, 0, 2), reduction="none",
                                     diverged="inf")
    per_ic = np.asarray(per_ic, dtype=np.float64)
    per_ic[~np.isfinite(per_ic)] = np.inf
    return per_ic
