"""Reproducible experiments behind `innergrad experiment ...`.

- `hnn`: a baseline MLP (predicts dx/dt directly) against a Hamiltonian NN on the spring, pendulum
  and two-body tasks of Greydanus, Dzamba & Yosinski, "Hamiltonian Neural Networks" (NeurIPS 2019),
  with their data, model, optimiser and metrics; writes `report.md`, `results.json` and PNG plots.
- `forces`: a `ConservativeField` learns the Mueller-Brown potential from noisy force samples.

Each run is seeded and records its settings, library versions and wall times in the report.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.activations import get_activation
from ..core.backends import BACKENDS, backends, choose_backend
from ..core.errors import InnergradError
from ..core.files import write_atomic, write_json
from ..core.mlp import MLP
from ..core.text import fmt
from ..models.conservative import ConservativeField
from ..models.hamiltonian import HamiltonianNet
from ..models.integrators import rollout
from ..train import metrics
from ..train._runs import LOCK_NAME
from .hnn_tasks import TASKS, HNNTask, exact_trajectory, make_dataset
from .mueller_brown import BOX, MINIMA, MuellerBrown

Tensor = torch.Tensor

# The paper's published numbers and its energy protocol are data (paper_hnn.json), not code.
_PAPER_FILE = json.loads((Path(__file__).with_name("paper_hnn.json")).read_text())
# Greydanus et al. 2019, Table 1: task -> model -> metric -> (mean, standard error).
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    task: {model: {k: tuple(v) for k, v in row.items()} for model, row in models.items()}
    for task, models in _PAPER_FILE["table1"].items()
}
PAPER_PROTOCOL: dict = _PAPER_FILE["energy_protocol"]

MODEL_NAMES = {"baseline": "Baseline NN", "hnn": "Hamiltonian NN"}
COLORS = {"truth": "black", "baseline": "tab:orange", "hnn": "tab:blue"}
ENERGY_GROUPS = 5
ROLLOUT_DT = 0.01  # default step of the ig.rollout runs reported beside the paper's solve_ivp protocol
# Fixed-point iterations that make the leapfrog the implicit Stormer-Verlet method, symplectic for a
# learned (non-separable) H.
IMPLICIT_ITERS = 2


# ---------------------------------------------------------------- shared helpers


def _optional(module: str, extra: str = "train"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise InnergradError(
            f"`innergrad experiment` needs {module.split('.')[0]}; install it with "
            f"`pip install 'innergrad[{extra}]'`"
        ) from e


def _progress(total: int, desc: str, quiet: bool):
    tqdm = _optional("tqdm").tqdm
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)


def _check_positive(value, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InnergradError(f"{name} must be a positive integer, got {value!r}")


def _out_dir(out, default: str | Path) -> Path:
    """The experiment's output folder: new, or empty but for the lock of the command that made it for this run.

    An experiment never writes into a folder that holds other files (a user's, or an earlier run's).
    """
    path = Path(out if out is not None else default)
    check_out_free(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out_free(path: Path) -> None:
    """Refuse a file, or a folder holding anything but a run lock, as an experiment's output folder."""
    if path.exists() and not path.is_dir():
        raise InnergradError(f"--out {str(path)!r} is an existing file; give a directory for the report and plots")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
        if others:
            raise InnergradError(f"--out {str(path)!r} already holds {len(others)} file(s), e.g. {others[0]}; "
                                 "an experiment writes only into a new or empty folder: choose another --out "
                                 "(or leave --out out for a fresh runs/ folder)")


class _Threads:
    """Run with `n` torch threads and restore the previous setting (None leaves it alone).

    The networks here are 200 wide: on a small shared CPU one thread is usually fastest, as
    inter-op synchronisation costs more than the tiny matrix products gain.
    """

    def __init__(self, n: int | None):
        self.n, self.prev = n, None

    def __enter__(self):
        if self.n is not None:
            self.prev = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.prev is not None:
            torch.set_num_threads(self.prev)


def _versions() -> str:
    from ..core.version import __version__

    return (f"innergrad {__version__}, torch {torch.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}, {platform.machine()} ({torch.get_num_threads()} torch thread(s))")


def _fmt(v: float) -> str:
    return "diverged" if v is not None and math.isinf(v) else fmt(v, ".2e", missing="n/a")


def _pm(pair) -> str:
    mean, se = pair
    return f"{_fmt(mean)} ± {_fmt(se)}" if se is not None and math.isfinite(se) else _fmt(mean)


def _mse_se(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """Mean of the squared errors and its standard error, std / sqrt(number of points) (the paper's)."""
    sq = (pred - target).pow(2)
    return sq.mean().item(), (sq.std() / math.sqrt(sq.shape[0])).item()


def _group_stats(values: np.ndarray, groups: int) -> tuple[float, float]:
    """Mean and standard error over `groups` consecutive groups (5 groups of 3 in the paper)."""
    if not np.all(np.isfinite(values)):
        return math.inf, math.nan
    parts = [p.mean() for p in np.array_split(values, min(groups, len(values)))]
    se = float(np.std(parts, ddof=1) / math.sqrt(len(parts))) if len(parts) > 1 else math.nan
    return float(np.mean(parts)), se


# ---------------------------------------------------------------- HNN experiment


class BaselineMLP(nn.Module):
    """The paper's baseline: an MLP `dim -> hidden... -> dim` that predicts dx/dt directly.

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


def _build(kind: str, task: HNNTask, hidden_layers, backend: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # each model starts from the same seed, as in the paper's separate runs
    if kind == "baseline":
        return BaselineMLP(task.dim, hidden_layers, "tanh")
    return HamiltonianNet(task.dim, hidden_layers, "tanh", backend=backend)


def _train(model: nn.Module, x: Tensor, dx: Tensor, val: tuple[Tensor, Tensor], *, steps: int, lr: float,
           weight_decay: float, batch_size: int | None, seed: int, quiet: bool, desc: str) -> dict:
    """`ig.train.fit`: Adam with L2 weight decay (the paper's) on the MSE between model(x) and dx.

    Returns the curves: `step` and `train` (each step's loss), `test_step` and `test` (MSE on `val`
    at each validation: every epoch, so every step in full batch), and `seconds`.
    """
    from ..train import fit

    t0 = time.perf_counter()
    h = fit(model, x, dx, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer="adam",
            loss="mse", val=val, seed=seed, progress=False if quiet else None)
    return {"step": list(h.steps), "train": list(h.losses), "test_step": [v["step"] for v in h.val],
            "test": [v["loss"] for v in h.val], "seconds": time.perf_counter() - t0}


def _model_rhs(model: nn.Module):
    m = copy.deepcopy(model).double().eval()

    def rhs(t, y):
        with torch.no_grad():
            return m(torch.from_numpy(y).unsqueeze(0))[0].numpy()

    return m, rhs


def _model_paths(model: nn.Module, ics: np.ndarray, span, t_eval: np.ndarray, rtol: float, bar=None) -> np.ndarray:
    """Each initial condition integrated along the model with `solve_ivp`, `(trials, T, dim)`; NaN
    after a solver failure (a rollout that blew up)."""
    from .hnn_tasks import _solve_ivp

    solve_ivp = _solve_ivp()
    _, rhs = _model_rhs(model)
    paths = np.full((len(ics), len(t_eval), ics.shape[1]), np.nan)
    for i, y0 in enumerate(ics):
        sol = solve_ivp(rhs, span, y0, t_eval=t_eval, rtol=rtol)
        paths[i, : sol.y.shape[1]] = sol.y.T
        if bar is not None:
            bar.update(1)
    return paths


def _energy_per_ic(task: HNNTask, paths: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`ig.metrics.energy_mse` per initial condition; a diverged rollout counts as infinite."""
    with np.errstate(all="ignore"):
        per_ic = metrics.energy_mse(task.hamiltonian, paths.transpose(1, 0, 2), truth.transpose(1, 0, 2),
                                    reduction="none")
    per_ic[~np.isfinite(per_ic)] = np.inf
    return per_ic


def paper_initial_conditions(rng: np.random.RandomState, trials: int, dim: int) -> np.ndarray:
    """The paper's evaluation draws: each coordinate U(-0.8, 0.8) pushed out by 0.2 (|x_i| in [0.2, 1])."""
    lo, hi = PAPER_PROTOCOL["coordinate_low"], PAPER_PROTOCOL["coordinate_high"]
    x0 = rng.rand(trials, dim) * 2 * (hi - lo) - (hi - lo)
    return x0 + lo * np.sign(x0)


def _evaluate_energy(
    task: HNNTask, models: dict[str, nn.Module], trials: int, seed: int, quiet: bool, rollout_dt: float
) -> dict:
    """Energy MSE under our protocol and (spring, pendulum) under the paper's, plus fixed-step rollouts.

    Ours: `trials` initial conditions drawn like the data (seed `seed + 1`); truth and each model
    integrated with `solve_ivp` (rtol 1e-12) to `task.eval_points` times. The paper's
    (`PAPER_PROTOCOL`, from its released notebook): 15 initial conditions with each coordinate in
    +-[0.2, 1] (seed `seed + 1`), t in [0, 20] at 100 points, the models on the time axis stretched
    by `1 + 0.9 * noise_std`. Both: per initial condition the mean over time of
    `(H(model path) - H(true path))^2` with the true H (`ig.metrics.energy_mse`); mean and standard
    error over `ENERGY_GROUPS` consecutive groups.
    """
    rng = np.random.RandomState(seed + 1)
    ics = np.stack([task.sample_state(rng) for _ in range(trials)])
    span = task.eval_t_span
    t_eval = np.linspace(span[0], span[1], task.eval_points)
    paper = task.name in PAPER_PROTOCOL["tasks"]
    n_paper = PAPER_PROTOCOL["trials"] if paper else 0
    bar = _progress((trials + n_paper) * (1 + len(models)), "energy rollouts", quiet)
    truth = []
    for y0 in ics:
        truth.append(exact_trajectory(task, y0, span, t_eval, rtol=1e-12))
        bar.update(1)
    truth = np.stack(truth)  # (trials, T, dim)
    e_true = task.hamiltonian(truth)
    res: dict = {"t": t_eval, "truth": truth, "e_true": e_true, "paths": {}, "energy": {}, "energy_per_ic": {},
                 "state_mse": {}, "fixed": {}, "energy_paper": {}, "energy_paper_per_ic": {}}
    if paper:
        pp = PAPER_PROTOCOL
        p_ics = paper_initial_conditions(np.random.RandomState(seed + 1), n_paper, task.dim)
        p_span = tuple(pp["t_span"])
        p_t = np.linspace(p_span[0], p_span[1], pp["points"])
        stretch = 1 + pp["time_stretch_per_noise"] * task.noise_std
        p_truth = []
        for y0 in p_ics:
            p_truth.append(exact_trajectory(task, y0, p_span, p_t, rtol=pp["rtol"]))
            bar.update(1)
        p_truth = np.stack(p_truth)
        res["paper_stretch"] = stretch
    for name, model in models.items():
        paths = _model_paths(model, ics, span, t_eval, 1e-12, bar)
        per_ic = _energy_per_ic(task, paths, truth)
        res["paths"][name] = paths
        res["energy"][name] = _group_stats(per_ic, ENERGY_GROUPS)
        res["energy_per_ic"][name] = per_ic
        state = metrics.rollout_mse(paths.transpose(1, 0, 2), truth.transpose(1, 0, 2), reduction="none")
        res["state_mse"][name] = _group_stats(state, ENERGY_GROUPS)
        if paper:
            p_paths = _model_paths(model, p_ics, (p_span[0], p_span[1] * stretch), p_t * stretch, pp["rtol"], bar)
            p_per_ic = _energy_per_ic(task, p_paths, p_truth)
            res["energy_paper"][name] = _group_stats(p_per_ic, pp["groups"])
            res["energy_paper_per_ic"][name] = p_per_ic
        # Fixed-step rollouts with innergrad's integrators, all initial conditions in one batch.
        m, _ = _model_rhs(model)
        sub = max(1, math.ceil((t_eval[1] - t_eval[0]) / rollout_dt - 1e-9))
        x0 = torch.from_numpy(ics)
        for method in ("rk4", "leapfrog"):
            with torch.no_grad():
                traj = rollout(m, x0, torch.from_numpy(t_eval), method=method, substeps=sub,
                               implicit_iters=IMPLICIT_ITERS)
            res["fixed"][(name, method)] = _group_stats(_energy_per_ic(task, traj.transpose(0, 1).numpy(), truth),
                                                        ENERGY_GROUPS)
        res["fixed_dt"] = float((t_eval[1] - t_eval[0]) / sub)
    bar.close()
    return res


def _segments_by_time(ax, path: np.ndarray, i: int, j: int, cmap, label: str, lw: float = 1.8):
    """A path drawn in colours running with time (early light, late dark): a spiral reads as one."""
    LineCollection = _optional("matplotlib.collections").LineCollection
    pts = path[:, [i, j]]
    ok = np.all(np.isfinite(pts), 1)
    pts = pts[ok]
    segs = np.stack((pts[:-1], pts[1:]), 1)
    lc = LineCollection(segs, cmap=cmap, linewidths=lw)
    lc.set_array(np.linspace(0.25, 1, len(segs)))  # from 0.25: the earliest stretch stays visible
    lc.set_clim(0, 1)
    ax.add_collection(lc)
    ax.plot([], [], color=_optional("matplotlib").colormaps[cmap](0.75), lw=lw, label=label)
    return lc


def _long_rollouts(task: HNNTask, models: dict, y0: np.ndarray, horizon: float, points: int) -> dict:
    """Truth and each model from one initial condition over a long horizon (rtol 1e-10), for the plots."""
    t = np.linspace(0.0, horizon, points)
    paths = {"truth": exact_trajectory(task, y0, (0.0, horizon), t, rtol=1e-10)}
    for name, model in models.items():
        paths[name] = _model_paths(model, y0[None], (0.0, horizon), t, 1e-10)[0]
    return {"t": t, "paths": paths}


def plot_hamiltonian_contours(out: Path, hnn: nn.Module, energy_fn, x_data: np.ndarray, names, title: str,
                              name: str = "hamiltonian.png") -> str:
    """Learned H contours beside the true H over the data's phase-space window (the paper's Fig. 1)."""
    Figure = _optional("matplotlib.figure").Figure
    lo, hi = x_data.min(0), x_data.max(0)
    pad = 0.15 * (hi - lo)
    gq, gp = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 80),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 80))
    grid = np.stack((gq.ravel(), gp.ravel()), 1)
    m = copy.deepcopy(hnn).double().eval()
    with torch.no_grad():
        h = m.hamiltonian(torch.from_numpy(grid)).numpy()
    panels = []
    if energy_fn is not None:
        e = np.asarray(energy_fn(grid), dtype=np.float64)
        h = h - np.nanmean(h - e)  # an energy's zero is arbitrary: align the means
        panels.append(("True H", e))
    panels.append(("Learned H (Hamiltonian NN)" + (", shifted to the true mean" if energy_fn is not None else ""), h))
    vals = np.concatenate([v for _, v in panels])
    levels = np.linspace(np.nanpercentile(vals, 1), np.nanpercentile(vals, 99), 16)
    fig = Figure(figsize=(4.6 * len(panels) + 1.2, 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    for ax, (ttl, z) in zip(axes, panels):
        cs = ax.contourf(gq, gp, z.reshape(gq.shape), levels=levels, cmap="viridis", extend="both")
        ax.contour(gq, gp, z.reshape(gq.shape), levels=levels, colors="white", linewidths=0.5)
        ax.scatter(x_data[:, 0], x_data[:, 1], s=2, c="red", alpha=0.3, label="data")
        ax.set_title(ttl)
        ax.set_xlabel(names[0])
    axes[0].set_ylabel(names[1])
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    fig.colorbar(cs, ax=list(axes), label="energy H", shrink=0.9)
    fig.suptitle(title)
    fig.savefig(out / name, dpi=110)
    return name


def plot_training(out: Path, hists: dict, floor: float | None, title: str) -> str:
    """Train and test MSE of dx/dt against steps, with the noise floor marked where it is known."""
    Figure = _optional("matplotlib.figure").Figure
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, h in hists.items():
        ax.plot(h["step"], h["train"], color=COLORS[name], lw=1, alpha=0.6, label=f"{MODEL_NAMES[name]}: train")
        ax.plot(h["test_step"], h["test"], color=COLORS[name], lw=1.8, ls="--", label=f"{MODEL_NAMES[name]}: test")
    if floor is not None and floor > 0:
        ax.axhline(floor, color="0.3", lw=1, ls=":", label="noise floor (true dynamics on the noisy data)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE of dx/dt")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.savefig(out / "training.png", dpi=110)
    return "training.png"


def _plot_hnn(task: HNNTask, out: Path, data: dict, ev: dict, hists: dict, models: dict, floor) -> list[str]:
    Figure = _optional("matplotlib.figure").Figure
    files = []
    # From the evaluation initial condition of median energy (the first may be a tiny orbit), three
    # times the evaluation horizon: long enough for the baseline's drift to show as a spiral.
    k = int(np.argsort(ev["e_true"][:, 0])[len(ev["e_true"]) // 2])
    horizon = 3 * (task.eval_t_span[1] - task.eval_t_span[0])
    long = _long_rollouts(task, models, ev["truth"][k][0], horizon, 3 * task.eval_points)
    truth = long["paths"]["truth"]
    cmaps = {"truth": "Greys", "baseline": "Oranges", "hnn": "Blues"}
    pairs = [(0, 1)] if task.dim == 2 else [(0, 2), (1, 3)]  # (q, p), or body 1 and 2 in the (x, y) plane
    labels = ("q", "p") if task.dim == 2 else ("x", "y")
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    lim = 1.6 * np.nanmax(np.abs(truth[:, :4] if task.dim > 2 else truth))
    for ax, name in zip(axes, ("truth", "baseline", "hnn")):
        if task.dim == 2:
            ax.scatter(data["x"][:, 0], data["x"][:, 1], s=3, c="0.85", label="training data (noisy)")
        path = long["paths"][name]
        for n_pair, (i, j) in enumerate(pairs):
            if name != "truth":
                ax.plot(truth[:, i], truth[:, j], color="black", lw=0.8, ls="--",
                        label="truth" if n_pair == 0 else None)
            lc = _segments_by_time(ax, path, i, j, cmaps[name],
                                   ("truth" if name == "truth" else MODEL_NAMES[name]) + (f" (body {n_pair + 1})"
                                                                                         if task.dim > 2 else ""))
        ax.plot(path[0, 0], path[0, 1], "o", color="black", ms=5, label="start")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title("Ground truth" if name == "truth" else MODEL_NAMES[name])
        ax.set_xlabel(labels[0])
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, ncol=2, frameon=False)
    axes[0].set_ylabel(labels[1])
    cb = fig.colorbar(lc, ax=list(axes), shrink=0.8, ticks=[0, 1])
    cb.ax.set_yticklabels(["t = 0", f"t = {horizon:g}"])
    cb.set_label("time along the path (light to dark)")
    fig.suptitle(f"{task.title}: rollouts from one evaluation initial condition (median energy), t in [0, {horizon:g}]")
    fig.savefig(out / "phase_portrait.png", dpi=110)
    files.append("phase_portrait.png")

    # Energy against time for each model (the true H along each path) and its error on a log scale.
    fig = Figure(figsize=(12, 4.0), layout="constrained")
    ax, ax_err = fig.subplots(1, 2)
    e_true = task.hamiltonian(truth)
    ax.plot(long["t"], e_true, color="black", lw=2, label="Ground truth")
    for name in ("baseline", "hnn"):
        e = task.hamiltonian(long["paths"][name])
        ax.plot(long["t"], e, color=COLORS[name], lw=1.5, label=MODEL_NAMES[name])
        # From the first output time on: at t = 0 the error is exactly zero.
        ax_err.semilogy(long["t"][1:], np.abs(e - e_true)[1:] + 1e-16, color=COLORS[name], lw=1.5,
                        label=MODEL_NAMES[name])
    ax.set_xlabel("time")
    ax.set_ylabel("total energy (true H)")
    ax.set_title("Energy along the rollouts")
    ax_err.set_xlabel("time")
    ax_err.set_ylabel("|H(model path) - H(true path)|")
    ax_err.set_title("Energy error")
    for a in (ax, ax_err):
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=8, ncol=3, frameon=False)
    fig.suptitle(f"{task.title}: the initial condition of the phase portraits")
    fig.savefig(out / "energy.png", dpi=110)
    files.append("energy.png")

    if task.dim == 2:
        files.append(plot_hamiltonian_contours(out, models["hnn"], task.hamiltonian, data["x"], ("q", "p"),
                                               f"{task.title}: learned H beside the true H"))
    files.append(plot_training(out, hists, floor, f"{task.title}: training"))
    return files


def _hnn_report(task: HNNTask, res: dict, command: str, files: list[str]) -> str:
    paper = PAPER[task.name]
    rows = []
    for kind in ("baseline", "hnn"):
        r = res["models"][kind]
        paper_cell = _pm(r["energy_paper"]) if "energy_paper" in r else "n/a"
        rows.append(f"| {MODEL_NAMES[kind]} (innergrad) | {_pm(r['train'])} | {_pm(r['test'])} | "
                    f"{paper_cell} | {_pm(r['energy'])} | {r['train_seconds']:.1f} s |")
    for kind in ("baseline", "hnn"):
        p = paper[kind]
        rows.append(f"| {MODEL_NAMES[kind]} (paper) | {_pm(p['train'])} | {_pm(p['test'])} | {_pm(p['energy'])} "
                    "| | |")
    fixed = []
    for kind in ("baseline", "hnn"):
        r = res["models"][kind]
        fixed.append(f"| {MODEL_NAMES[kind]} | {_pm(r['energy'])} | {_pm(r['energy_rk4'])} | "
                     f"{_pm(r['energy_leapfrog'])} | {_pm(r['state_mse'])} |")
    s = res["settings"]
    bs = "full batch" if s["batch_size"] is None else f"minibatches of {s['batch_size']}"
    noise = f"Gaussian noise std {s['noise_std']} on q and p" if s["noise_std"] else "no noise"
    lines = [
        f"# HNN vs baseline: {task.title}",
        "",
        f"Reproduce: `{command}`",
        "",
        f"{res['versions']}. Wall time {res['seconds_total']:.0f} s in all (data {res['seconds_data']:.1f} s, "
        f"evaluation {res['seconds_eval']:.1f} s).",
        "",
        "## Results",
        "",
        "Mean squared error of the time derivative on the train and test states, ± standard error "
        "(std of the squared errors / sqrt(number of states)); energy MSE ± standard error over "
        f"{ENERGY_GROUPS} groups of initial conditions, under the paper's protocol and under ours (both below). "
        "Paper: Greydanus, Dzamba & Yosinski, *Hamiltonian Neural Networks*, NeurIPS 2019, Table 1"
        + (f"; the noise floor of the train MSE (the true dynamics on the noisy states) is {_fmt(res['noise_floor'])}."
           if res.get("noise_floor") else "."),
        "",
        "| Model | Train MSE | Test MSE | Energy MSE (paper protocol) | Energy MSE (ours) | Train time |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Energy MSE by integrator (our protocol's {s['energy_trials']} initial conditions; `solve_ivp` as the "
        f"paper integrates, RK4 and leapfrog are `ig.rollout` with fixed step dt = {res['fixed_dt']:.4g}, the leapfrog "
        f"with {IMPLICIT_ITERS} fixed-point iterations: Stormer-Verlet for a non-separable H), and the "
        "mean squared state error of the `solve_ivp` rollouts:",
        "",
        "| Model | solve_ivp (rtol 1e-12) | ig.rollout rk4 | ig.rollout leapfrog | State MSE |",
        "|---|---|---|---|---|",
        *fixed,
        "",
        "## Protocol",
        "",
        f"- Data: {s['trajectories']} trajectories of {s['points']} points on t in {list(s['t_span'])}; initial "
        f"state: {task.state_desc}; integrated with scipy `solve_ivp` (rtol {s['rtol']:g}); targets are the "
        f"exact time derivatives at the clean states; {noise}; numpy seed {s['seed']}. "
        f"{s['n_train']} train / {s['n_test']} test states, split by trajectory ({s['split']}).",
        f"- Models: MLP {task.dim} -> {' -> '.join(map(str, s['hidden_layers']))} -> "
        f"{task.dim} (baseline) or -> 1 (HNN, H), tanh, orthogonal weights, no bias on the last layer; "
        f"torch seed {s['seed']}. HNN backend: `{s['backend']}` (resolved: `{s['backend_used']}`).",
        f"- Training: Adam, lr 1e-3, weight decay {s['weight_decay']:g}, {bs}, {s['steps']} steps, loss = MSE "
        "of dx/dt.",
        f"- Energy, our protocol: {s['energy_trials']} initial conditions drawn like the data (numpy seed "
        f"{s['seed'] + 1}); truth and each model integrated with `solve_ivp` (rtol 1e-12, model in float64) to "
        f"{s['eval_points']} points on t in {list(s['eval_t_span'])}; per initial condition the MSE between the true "
        "H along the model's path and along the true path (`ig.metrics.energy_mse`).",
    ]
    if res.get("paper_time_stretch"):
        pp = PAPER_PROTOCOL
        lines.append(
            f"- Energy, the paper's protocol (its released `analyze-spring.ipynb`, applied to the pendulum too): "
            f"{pp['trials']} initial conditions with each coordinate uniform in ±[{pp['coordinate_low']:g}, "
            f"{pp['coordinate_high']:g}] (numpy seed {s['seed'] + 1}); truth by `solve_ivp` (rtol {pp['rtol']:g}) at "
            f"{pp['points']} points on t in {pp['t_span']}; each model integrated the same way on the time axis "
            f"stretched by 1 + {pp['time_stretch_per_noise']:g} x noise std = {res['paper_time_stretch']:g} (the "
            "notebook's compensation for the input noise); the same per-initial-condition MSE, over "
            f"{pp['groups']} groups. The notebook stretches its time lists in place, so its later trials run "
            "on ever longer horizons; we stretch once, as its comment describes.")
    else:
        lines.append("- Energy, the paper's protocol: not defined in its released code for this task; ours only.")
    if task.name == "pendulum":
        lines.append("- Pendulum H = 3(1 - cos q) + p^2, as in the paper's released code "
                     "(`experiment-pend/data.py`), which produced its Table 1.")
    if task.name == "two-body":
        lines.append("- Two-body: as in the released code, the first 20% of the orbits are the test split, "
                     "no noise is added, the data are integrated with rtol 1e-9 and weight decay is 0.")
    lines += ["", "## Plots", ""]
    lines += [f"![{f[:-4]}]({f})" for f in files]
    return "\n".join(lines) + "\n"


def noise_floor(task: HNNTask, data: dict) -> float | None:
    """The train MSE the true dynamics reach on the noisy states (targets are exact at the clean ones):
    the floor under which a model is fitting noise. None without noise."""
    if not task.noise_std:
        return None
    return float(np.mean((task.dynamics(data["x"]) - data["dx"]) ** 2))


def run_hnn(
    task: str = "spring",
    out: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    hidden_layers: Sequence[int] = (200, 200),
    energy_trials: int = 15,
    backend: str = "auto",
    threads: int | None = 1,
    rollout_dt: float = ROLLOUT_DT,
) -> dict:
    """Train the baseline and the HNN on `task`, evaluate them, write `report.md` and plots to `out`.

    **Arguments:** `task`: `"spring"`, `"pendulum"` or `"two-body"`; `out`: directory (default
    `runs/hnn-<task>`); `steps`: training steps per model (default: the paper's, 2000 or 10000);
    `energy_trials`: initial conditions of the energy metric (15); `threads`: torch threads during
    the run (None: leave as is); `rollout_dt`: step of the extra `ig.rollout` energy rows (rk4 and
    leapfrog beside the paper's `solve_ivp`). The rest as in the paper.

    **Returns:** the results dict that is also written to `results.json`.
    """
    if task not in TASKS:
        raise InnergradError(f"unknown HNN task {task!r}; choose one of {sorted(TASKS)}")
    t = TASKS[task]
    _check_positive(steps, "steps (--steps)")
    _check_positive(energy_trials, "energy_trials (--energy-trials)", allow_none=False)
    _check_positive(threads, "threads (--threads)")
    if not (isinstance(rollout_dt, (int, float)) and rollout_dt > 0):
        raise InnergradError(f"rollout_dt (--rollout-dt) must be a positive time step, got {rollout_dt!r}")
    if backend != "auto" and backend not in BACKENDS:
        raise InnergradError(f"unknown backend {backend!r}; choose one of {backends()}")
    hidden_layers = tuple(hidden_layers)
    if not hidden_layers:
        raise InnergradError("hidden_layers must name at least one layer width, e.g. 200 200")
    for w in hidden_layers:
        _check_positive(w, "each hidden layer width", allow_none=False)
    steps = t.steps if steps is None else steps
    out = _out_dir(out, f"runs/hnn-{task}")
    t_start = time.perf_counter()
    with _Threads(threads):
        data_np = make_dataset(t, seed)
        seconds_data = time.perf_counter() - t_start
        data = {k: torch.tensor(v, dtype=torch.float32) for k, v in data_np.items() if k != "t"}
        if backend != "auto":  # fail before training, not after the baseline's minutes
            probe = HamiltonianNet(t.dim, hidden_layers, "tanh").H
            why = BACKENDS[backend].unsupported(probe, (data["x"][:2],), (0,))
            if why:
                raise InnergradError(f"--backend {backend} cannot run this HNN: {why}. Use --backend auto.")
        models, hists, results = {}, {}, {}
        for kind in ("baseline", "hnn"):
            model = _build(kind, t, hidden_layers, backend, seed)
            hists[kind] = _train(model, data["x"], data["dx"], (data["test_x"], data["test_dx"]), steps=steps,
                                 lr=1e-3, weight_decay=t.weight_decay, batch_size=t.batch_size, seed=seed,
                                 quiet=quiet, desc=f"{task} {kind}")
            with torch.no_grad():
                results[kind] = {
                    "train": _mse_se(model(data["x"]), data["dx"]),
                    "test": _mse_se(model(data["test_x"]), data["test_dx"]),
                    "train_seconds": hists[kind]["seconds"],
                }
            models[kind] = model
        t_eval = time.perf_counter()
        ev = _evaluate_energy(t, models, energy_trials, seed, quiet, rollout_dt)
        for kind in models:
            results[kind]["energy"] = ev["energy"][kind]
            results[kind]["energy_rk4"] = ev["fixed"][(kind, "rk4")]
            results[kind]["energy_leapfrog"] = ev["fixed"][(kind, "leapfrog")]
            results[kind]["state_mse"] = ev["state_mse"][kind]
            results[kind]["energy_per_ic"] = ev["energy_per_ic"][kind]
            if kind in ev["energy_paper"]:
                results[kind]["energy_paper"] = ev["energy_paper"][kind]
                results[kind]["energy_paper_per_ic"] = ev["energy_paper_per_ic"][kind]
        seconds_eval = time.perf_counter() - t_eval
        floor = noise_floor(t, data_np)
        files = _plot_hnn(t, out, data_np, ev, hists, models, floor)
        versions = _versions()
    hnn = models["hnn"]
    used = hnn.backend if hnn.backend != "auto" else choose_backend(hnn.H, (data["x"][:2],), (0,)).name
    command = f"innergrad experiment hnn --task {task} --steps {steps} --seed {seed}"
    if hidden_layers != (200, 200):
        command += " --hidden " + " ".join(map(str, hidden_layers))
    if energy_trials != 15:
        command += f" --energy-trials {energy_trials}"
    if rollout_dt != ROLLOUT_DT:
        command += f" --rollout-dt {rollout_dt:g}"
    res = {
        "experiment": "hnn",
        "task": task,
        "command": command,
        "versions": versions,
        "settings": {
            "seed": seed, "steps": steps, "hidden_layers": list(hidden_layers), "backend": backend,
            "backend_used": used, "trajectories": t.trajectories, "points": t.points, "t_span": t.t_span,
            "noise_std": t.noise_std, "rtol": t.rtol, "batch_size": t.batch_size,
            "weight_decay": t.weight_decay, "energy_trials": energy_trials, "eval_t_span": t.eval_t_span,
            "eval_points": t.eval_points, "n_train": int(data["x"].shape[0]),
            "n_test": int(data["test_x"].shape[0]),
            "split": "first 20% test" if t.test_first else "first half train, last half test",
        },
        "models": results,
        "fixed_dt": ev["fixed_dt"],
        "paper_time_stretch": ev.get("paper_stretch"),
        "noise_floor": floor,
        "seconds_data": seconds_data,
        "seconds_eval": seconds_eval,
        "seconds_total": time.perf_counter() - t_start,
        "paper": PAPER[task],
        "files": ["report.md", "results.json", *files],
    }
    write_atomic(out / "report.md", _hnn_report(t, res, command, files))
    write_json(out / "results.json", res)
    if not quiet:
        _print_summary(
            f"{t.title} ({out / 'report.md'})",
            [(MODEL_NAMES[k], results[k]) for k in ("baseline", "hnn")],
            ("train", "test", "energy"),
        )
    return res


def _print_summary(title: str, rows, keys) -> None:
    print(title)
    for name, r in rows:
        print(f"  {name:16s} " + "  ".join(f"{k} {_pm(r[k]) if isinstance(r[k], tuple) else _fmt(r[k])}"
                                           for k in keys))


# ---------------------------------------------------------------- force-field experiment


class StandardizedEnergy(nn.Module):
    """`E(x) = scale * mlp((x - center) / width) + shift`: an `ig.MLP` on standardised inputs.

    A user-written energy module; it declares its input gradient in closed form by the chain rule
    on the MLP's, so `ConservativeField` keeps the closed-form backend.
    """

    def __init__(self, mlp: MLP, center: Tensor, width: Tensor, scale: float, shift: float = 0.0):
        super().__init__()
        self.mlp = mlp
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("width", torch.as_tensor(width, dtype=torch.float32))
        self.scale, self.shift = float(scale), float(shift)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.mlp((x - self.center) / self.width) + self.shift

    def value_and_input_grad(self, x: Tensor, argnums=0):
        v, (g,) = self.mlp.value_and_input_grad((x - self.center) / self.width, argnums=0)
        return self.scale * v + self.shift, (self.scale * g / self.width,)


class _FieldOutputs(nn.Module):
    """`x -> [E | F]`: a force field's energy and forces side by side, the one output `fit` compares."""

    def __init__(self, field: ConservativeField):
        super().__init__()
        self.field = field

    def forward(self, x: Tensor) -> Tensor:
        e, f = self.field(x)
        return torch.cat((e.unsqueeze(-1), f), -1)


def train_field(field: ConservativeField, x: Tensor, forces: Tensor | None, energy: Tensor | None,
                force_weight: float, energy_weight: float, steps: int, lr: float, seed: int, quiet: bool) -> dict:
    """`ig.train.fit`, full-batch Adam on `force_weight` x MSE(forces) + `energy_weight` x MSE(energy),
    lr cosine-decayed to 1e-5."""
    from ..train import LRSchedule, fit

    n = x.shape[0]
    targets = torch.cat((energy.unsqueeze(-1) if energy is not None else torch.zeros(n, 1),
                         forces if forces is not None else torch.zeros_like(x)), -1)

    def loss(out: Tensor, t: Tensor) -> Tensor:
        total = out.new_zeros(())
        if forces is not None and force_weight:
            total = total + force_weight * (out[:, 1:] - t[:, 1:]).pow(2).mean()
        if energy is not None and energy_weight:
            total = total + energy_weight * (out[:, 0] - t[:, 0]).pow(2).mean()
        return total

    eta_min = 1e-5

    def cosine(step: int) -> float:  # torch's CosineAnnealingLR(T_max=steps, eta_min=1e-5), as a plan
        return eta_min + (lr - eta_min) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    h = fit(_FieldOutputs(field), x, targets, steps=steps, lr=lr, loss=loss, seed=seed,
            callbacks=(LRSchedule(cosine),), progress=False if quiet else None)
    return {"step": list(h.steps), "loss": list(h.losses)}


def plot_curve(out: Path, hist: dict, title: str) -> str:
    """The training loss against steps (log scale), as `training.png`."""
    Figure = _optional("matplotlib.figure").Figure
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(hist["step"], hist["loss"], label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("normalised loss (MSE / variance)")
    ax.set_title(title)
    ax.legend(loc="upper right", frameon=False)
    fig.savefig(out / "training.png", dpi=110)
    return "training.png"


def _mb_samples(rng: np.random.RandomState, n: int, e_max: float, mb: MuellerBrown) -> np.ndarray:
    (x0, x1), (y0, y1) = BOX
    out = []
    while sum(len(o) for o in out) < n:
        pts = rng.rand(4 * n, 2) * [x1 - x0, y1 - y0] + [x0, y0]
        with torch.no_grad():
            e = mb(torch.from_numpy(pts)).numpy()
        out.append(pts[e < e_max])
    return np.concatenate(out)[:n]


def run_forces(
    out: str | Path | None = None,
    steps: int = 3000,
    seed: int = 0,
    samples: int = 1000,
    noise: float = 0.1,
    energy_weight: float = 0.0,
    e_max: float = 100.0,
    hidden_layers: Sequence[int] = (128, 128),
    quiet: bool = False,
    threads: int | None = 1,
    grid: int = 120,
    lr: float = 3e-3,
) -> dict:
    """Learn the Mueller-Brown potential from noisy forces with `ig.ConservativeField`.

    `samples` points uniform in the usual window with true energy below `e_max`; Gaussian noise of
    std `noise` x (RMS force of the samples) on each force component. The energy is an `ig.MLP`
    (softplus) on standardised inputs; loss = MSE(forces) / var(forces), plus `energy_weight` x
    MSE(energy) / var(energy) on noise-free energies when `energy_weight > 0`. Full batch Adam,
    learning rate `lr` decayed to 1e-5 (cosine). Errors are measured on a `grid` x `grid` grid below `e_max`;
    energies are compared up to the additive constant that forces cannot determine.
    """
    _check_positive(steps, "steps (--steps)", allow_none=False)
    _check_positive(samples, "samples (--samples)", allow_none=False)
    _check_positive(threads, "threads (--threads)")
    _check_positive(grid, "grid", allow_none=False)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise InnergradError(f"noise (--noise) must be a non-negative fraction of the RMS force, got {noise!r}")
    if not (isinstance(energy_weight, (int, float)) and energy_weight >= 0):
        raise InnergradError(f"energy_weight (--energy-weight) must be a non-negative number, got {energy_weight!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise InnergradError(f"lr (--lr) must be a positive learning rate, got {lr!r}")
    out = _out_dir(out, "runs/forces")
    t_start = time.perf_counter()
    mb = MuellerBrown()
    with _Threads(threads):
        rng = np.random.RandomState(seed)
        x_np = _mb_samples(rng, samples, e_max, mb)
        with torch.no_grad():
            e_np, (g_np,) = mb.value_and_input_grad(torch.from_numpy(x_np))
        e_np, f_np = e_np.numpy(), -g_np.numpy()
        f_rms = float(np.sqrt((f_np**2).mean()))
        noise_std = noise * f_rms
        f_noisy = f_np + rng.randn(*f_np.shape) * noise_std

        torch.manual_seed(seed)
        (x0, x1), (y0, y1) = BOX
        center = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
        width = torch.tensor([(x1 - x0) / 2, (y1 - y0) / 2])
        energy = StandardizedEnergy(MLP(2, hidden_layers, "softplus"), center, width,
                                    scale=float(e_np.std()), shift=float(e_np.mean()))
        field = ConservativeField(energy)
        x = torch.tensor(x_np, dtype=torch.float32)
        f_t = torch.tensor(f_noisy, dtype=torch.float32)
        e_t = torch.tensor(e_np, dtype=torch.float32) if energy_weight > 0 else None
        fw, ew = 1.0 / float(f_noisy.var()), energy_weight / float(e_np.var())
        t_train = time.perf_counter()
        hist = train_field(field, x, f_t, e_t, fw, ew, steps, lr, seed, quiet)
        seconds_train = time.perf_counter() - t_train

        gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
        pts = np.stack((gx.ravel(), gy.ravel()), -1)
        with torch.no_grad():
            e_true, (g_true,) = mb.value_and_input_grad(torch.from_numpy(pts))
            e_pred, f_pred = field(torch.tensor(pts, dtype=torch.float32))
        e_true, f_true = e_true.numpy(), -g_true.numpy()
        e_pred, f_pred = e_pred.double().numpy(), f_pred.double().numpy()
        mask = e_true < e_max
        offset = float(np.mean(e_pred[mask] - e_true[mask]))
        de = (e_pred - offset - e_true)[mask]
        df = (f_pred - f_true)[mask]
        metrics = {
            "energy_rmse": float(np.sqrt(np.mean(de**2))),
            "energy_mae": float(np.mean(np.abs(de))),
            "energy_std_true": float(e_true[mask].std()),
            "energy_offset": offset,
            "force_rmse": float(np.sqrt(np.mean(df**2))),
            "force_rms_true": float(np.sqrt(np.mean(f_true[mask] ** 2))),
            "force_relative": float(np.sqrt((df**2).sum() / (f_true[mask] ** 2).sum())),
            "noise_std": noise_std,
            "sample_force_rmse_noisy": float(np.sqrt(np.mean((f_noisy - f_np) ** 2))),
        }
        e_min_idx = int(np.argmin(np.where(mask, e_pred, np.inf)))
        metrics["learned_global_min"] = [float(pts[e_min_idx, 0]), float(pts[e_min_idx, 1])]
        files = _plot_forces(out, gx, gy, e_true.reshape(gx.shape), (e_pred - offset).reshape(gx.shape),
                             mask.reshape(gx.shape), x_np, hist, e_max)
        versions = _versions()
    command = (f"innergrad experiment forces --steps {steps} --seed {seed} --samples {samples} "
               f"--noise {noise:g}")
    if energy_weight:
        command += f" --energy-weight {energy_weight:g}"
    if lr != 3e-3:
        command += f" --lr {lr:g}"
    res = {
        "experiment": "forces",
        "command": command,
        "versions": versions,
        "settings": {"steps": steps, "seed": seed, "samples": samples, "noise": noise, "energy_weight": energy_weight,
                     "e_max": e_max, "hidden_layers": list(hidden_layers), "grid": grid, "lr": lr},
        "metrics": metrics,
        "seconds_train": seconds_train,
        "seconds_total": time.perf_counter() - t_start,
        "files": ["report.md", "results.json", *files],
    }
    write_atomic(out / "report.md", _forces_report(res, files))
    write_json(out / "results.json", res)
    if not quiet:
        m = metrics
        print(f"Mueller-Brown force field ({out / 'report.md'})")
        print(f"  energy RMSE {m['energy_rmse']:.3g} (true energies span std {m['energy_std_true']:.3g}), "
              f"force RMSE {m['force_rmse']:.3g} (noise std {m['noise_std']:.3g}, "
              f"relative force error {m['force_relative']:.2%})")
    return res


def _plot_forces(out: Path, gx, gy, e_true, e_pred, mask, x_np, hist, e_max) -> list[str]:
    Figure = _optional("matplotlib.figure").Figure
    levels = np.linspace(-150, e_max, 26)
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    for ax, z, title in ((axes[0], e_true, "True Mueller-Brown energy"),
                         (axes[1], e_pred, "Learned energy (ConservativeField)")):
        cs = ax.contourf(gx, gy, np.where(mask, z, np.nan), levels=levels, cmap="viridis", extend="both")
        ax.contour(gx, gy, np.where(mask, z, np.nan), levels=levels[::2], colors="white", linewidths=0.5,
                   linestyles="solid")
        ax.set_title(title)
    fig.colorbar(cs, ax=axes[:2], label="energy", shrink=0.9)
    axes[0].scatter(x_np[:, 0], x_np[:, 1], s=1, c="red", alpha=0.35, label="force samples")
    axes[0].legend(loc="upper right", fontsize=7)
    for m in MINIMA:
        for ax in axes[:2]:
            ax.plot(*m, "w*", ms=8)
    err = np.where(mask, np.abs(e_pred - e_true), np.nan)
    ce = axes[2].contourf(gx, gy, err, levels=20, cmap="magma")
    fig.colorbar(ce, ax=axes[2], label="|learned - true|", shrink=0.9)
    axes[2].set_title("Energy error (up to a constant)")
    for ax in axes:
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    fig.savefig(out / "energy_contours.png", dpi=110)

    plot_curve(out, hist, "Force-field training")
    return ["energy_contours.png", "training.png"]


def _forces_report(res: dict, files: list[str]) -> str:
    m, s = res["metrics"], res["settings"]
    targets = "noisy forces" + (f" and exact energies (weight {s['energy_weight']:g})" if s["energy_weight"] else "")
    return "\n".join([
        "# Conservative force field: Mueller-Brown potential from noisy forces",
        "",
        f"Reproduce: `{res['command']}`",
        "",
        f"{res['versions']}. Training {res['seconds_train']:.1f} s, {res['seconds_total']:.1f} s in all.",
        "",
        "## Results",
        "",
        f"Errors on a {s['grid']}x{s['grid']} grid over the window, where the true energy is below {s['e_max']:g}. "
        "Forces determine the energy only up to a constant, so energies are compared after removing the "
        f"mean offset ({m['energy_offset']:.3g}).",
        "",
        "| Quantity | Value | For scale |",
        "|---|---|---|",
        f"| Energy RMSE | {m['energy_rmse']:.3g} | std of the true energy {m['energy_std_true']:.3g} |",
        f"| Energy MAE | {m['energy_mae']:.3g} | |",
        f"| Force RMSE (per component) | {m['force_rmse']:.3g} | noise std on the training forces "
        f"{m['noise_std']:.3g}; RMS true force {m['force_rms_true']:.3g} |",
        f"| Relative force error | {m['force_relative']:.2%} | |",
        f"| Learned global minimum | ({m['learned_global_min'][0]:.2f}, {m['learned_global_min'][1]:.2f}) | "
        f"true ({MINIMA[0][0]:.2f}, {MINIMA[0][1]:.2f}) |",
        "",
        "## Protocol",
        "",
        f"- Data: {s['samples']} points uniform in x in {list(BOX[0])}, y in {list(BOX[1])} with true energy "
        f"below {s['e_max']:g}; Gaussian noise of std {s['noise']:g} x RMS force on each force component; "
        f"numpy seed {s['seed']}.",
        f"- Model: `ig.ConservativeField` over an `ig.MLP` 2 -> {' -> '.join(map(str, s['hidden_layers']))} -> 1 "
        "(softplus) on standardised inputs and energy units; forces = -dE/dx by the closed-form backend.",
        f"- Training on {targets}: loss = MSE(forces) / var(forces) (+ weighted MSE(energy) / var(energy)); "
        f"full-batch Adam, lr {s['lr']:g} with cosine decay to 1e-5, {s['steps']} steps, torch seed {s['seed']}.",
        "",
        "## Plots",
        "",
        *[f"![{f[:-4]}]({f})" for f in files],
        "",
    ])
