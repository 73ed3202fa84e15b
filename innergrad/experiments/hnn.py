"""`innergrad experiment hnn --task T`: the Hamiltonian Neural Networks paper, reproduced.

A baseline MLP (predicts dx/dt directly) against a Hamiltonian NN on the spring, pendulum and
two-body tasks of Greydanus, Dzamba & Yosinski, "Hamiltonian Neural Networks" (NeurIPS 2019), with
their data, model, optimiser and metrics; the paper's Table 1 and energy protocol are data
(paper_hnn.json). The runner (runner.py) writes the report, results and summary.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.backends import BACKENDS, backends, choose_backend
from ..core.errors import InnergradError
from ..models.hamiltonian import HamiltonianNet
from ..models.integrators import rollout
from .common import (
    COLORS,
    MODEL_NAMES,
    BaselineMLP,
    check_number,
    check_positive,
    check_widths,
    energy_per_ic,
    float64_copy,
    fmt,
    group_stats,
    model_paths,
    mse_se,
    optional,
    pm,
    progress,
    state_per_ic,
    train_model,
)
from .hnn_tasks import TASKS, HNNTask, exact_trajectory, make_dataset
from .plots import plot_hamiltonian_contours, plot_training, save_figure, segments_by_time
from .runner import Context, Experiment, run

# The paper's published numbers and its energy protocol are data (paper_hnn.json), not code.
_PAPER_FILE = json.loads((Path(__file__).with_name("paper_hnn.json")).read_text())
# Greydanus et al. 2019, Table 1: task -> model -> metric -> (mean, standard error).
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    task: {model: {k: tuple(v) for k, v in row.items()} for model, row in models.items()}
    for task, models in _PAPER_FILE["table1"].items()
}
PAPER_PROTOCOL: dict = _PAPER_FILE["energy_protocol"]

ENERGY_GROUPS = 5
ROLLOUT_DT = 0.01  # default step of the ig.rollout runs reported beside the paper's solve_ivp protocol
# Fixed-point iterations that make the leapfrog the implicit Stormer-Verlet method, symplectic for a
# learned (non-separable) H.
IMPLICIT_ITERS = 2
KINDS = ("baseline", "hnn")


def paper_initial_conditions(rng: np.random.RandomState, trials: int, dim: int) -> np.ndarray:
    """The paper's evaluation draws: each coordinate U(-0.8, 0.8) pushed out by 0.2 (|x_i| in [0.2, 1])."""
    lo, hi = PAPER_PROTOCOL["coordinate_low"], PAPER_PROTOCOL["coordinate_high"]
    x0 = rng.rand(trials, dim) * 2 * (hi - lo) - (hi - lo)
    return x0 + lo * np.sign(x0)


def noise_floor(task: HNNTask, data: dict) -> float | None:
    """The train MSE the true dynamics reach on the noisy states (targets are exact at the clean ones):
    the floor under which a model is fitting noise. None without noise."""
    if not task.noise_std:
        return None
    return float(np.mean((task.dynamics(data["x"]) - data["dx"]) ** 2))


# ---------------------------------------------------------------- evaluation


def _truths(task: HNNTask, ics: np.ndarray, span, t_eval: np.ndarray, rtol: float, bar) -> np.ndarray:
    out = []
    for y0 in ics:
        out.append(exact_trajectory(task, y0, span, t_eval, rtol=rtol))
        bar.update(1)
    return np.stack(out)  # (trials, T, dim)


def _fixed_step(task: HNNTask, model: nn.Module, ics: np.ndarray, t_eval: np.ndarray, truth: np.ndarray,
                rollout_dt: float) -> tuple[dict, float]:
    """Energy MSE of `ig.rollout` (rk4 and implicit leapfrog), all initial conditions in one batch."""
    m = float64_copy(model)
    sub = max(1, math.ceil((t_eval[1] - t_eval[0]) / rollout_dt - 1e-9))
    x0 = torch.from_numpy(ics)
    out = {}
    for method in ("rk4", "leapfrog"):
        with torch.no_grad():
            traj = rollout(m, x0, torch.from_numpy(t_eval), method=method, substeps=sub, implicit_iters=IMPLICIT_ITERS)
        out[method] = group_stats(energy_per_ic(task.hamiltonian, traj.transpose(0, 1).numpy(), truth), ENERGY_GROUPS)
    return out, float((t_eval[1] - t_eval[0]) / sub)


def evaluate_energy(task: HNNTask, models: dict[str, nn.Module], trials: int, seed: int, quiet: bool,
                    rollout_dt: float) -> dict:
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
    pp = PAPER_PROTOCOL
    n_paper = pp["trials"] if paper else 0
    bar = progress((trials + n_paper) * (1 + len(models)), "energy rollouts", quiet)
    truth = _truths(task, ics, span, t_eval, 1e-12, bar)
    res: dict = {"t": t_eval, "truth": truth, "e_true": task.hamiltonian(truth), "per_model": {}}
    if paper:
        p_ics = paper_initial_conditions(np.random.RandomState(seed + 1), n_paper, task.dim)
        p_span = tuple(pp["t_span"])
        p_t = np.linspace(p_span[0], p_span[1], pp["points"])
        stretch = 1 + pp["time_stretch_per_noise"] * task.noise_std
        p_truth = _truths(task, p_ics, p_span, p_t, pp["rtol"], bar)
        res["paper_stretch"] = stretch
    for name, model in models.items():
        paths = model_paths(model, ics, span, t_eval, 1e-12, bar)
        per_ic = energy_per_ic(task.hamiltonian, paths, truth)
        r = {"energy": group_stats(per_ic, ENERGY_GROUPS), "energy_per_ic": per_ic,
             "state_mse": group_stats(state_per_ic(paths, truth), ENERGY_GROUPS)}
        if paper:
            p_paths = model_paths(model, p_ics, (p_span[0], p_span[1] * stretch), p_t * stretch, pp["rtol"], bar)
            p_per_ic = energy_per_ic(task.hamiltonian, p_paths, p_truth)
            r["energy_paper"] = group_stats(p_per_ic, pp["groups"])
            r["energy_paper_per_ic"] = p_per_ic
        fixed, res["fixed_dt"] = _fixed_step(task, model, ics, t_eval, truth, rollout_dt)
        r["energy_rk4"], r["energy_leapfrog"] = fixed["rk4"], fixed["leapfrog"]
        res["per_model"][name] = r
    bar.close()
    return res


# ---------------------------------------------------------------- plots


def _long_rollouts(task: HNNTask, models: dict, y0: np.ndarray, horizon: float, points: int) -> dict:
    """Truth and each model from one initial condition over a long horizon (rtol 1e-10), for the plots."""
    t = np.linspace(0.0, horizon, points)
    paths = {"truth": exact_trajectory(task, y0, (0.0, horizon), t, rtol=1e-10)}
    for name, model in models.items():
        paths[name] = model_paths(model, y0[None], (0.0, horizon), t, 1e-10)[0]
    return {"t": t, "paths": paths}


def _plot_phase(task: HNNTask, out: Path, data: dict, long: dict, horizon: float) -> str:
    Figure = optional("matplotlib.figure").Figure
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
            lc = segments_by_time(ax, path, i, j, cmaps[name],
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
    save_figure(fig, out, "phase_portrait.png")
    return "phase_portrait.png"


def _plot_energy(task: HNNTask, out: Path, long: dict) -> str:
    """Energy against time for each model (the true H along each path) and its error on a log scale."""
    Figure = optional("matplotlib.figure").Figure
    fig = Figure(figsize=(12, 4.0), layout="constrained")
    ax, ax_err = fig.subplots(1, 2)
    e_true = task.hamiltonian(long["paths"]["truth"])
    ax.plot(long["t"], e_true, color="black", lw=2, label="Ground truth")
    for name in KINDS:
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
    save_figure(fig, out, "energy.png")
    return "energy.png"


def _plot_hnn(task: HNNTask, ctx: Context, data: dict, ev: dict, hists: dict, models: dict, floor) -> None:
    # From the evaluation initial condition of median energy (the first may be a tiny orbit), three
    # times the evaluation horizon: long enough for the baseline's drift to show as a spiral.
    k = int(np.argsort(ev["e_true"][:, 0])[len(ev["e_true"]) // 2])
    horizon = 3 * (task.eval_t_span[1] - task.eval_t_span[0])
    long = _long_rollouts(task, models, ev["truth"][k][0], horizon, 3 * task.eval_points)
    ctx.add_file(_plot_phase(task, ctx.out, data, long, horizon))
    ctx.add_file(_plot_energy(task, ctx.out, long))
    if task.dim == 2:
        ctx.add_file(plot_hamiltonian_contours(ctx.out, models["hnn"], task.hamiltonian, data["x"], ("q", "p"),
                                               f"{task.title}: learned H beside the true H"))
    ctx.add_file(plot_training(ctx.out, hists, floor, f"{task.title}: training"))


# ---------------------------------------------------------------- report


def _result_tables(task: HNNTask, res: dict) -> list[str]:
    paper = PAPER[task.name]
    rows = []
    for kind in KINDS:
        r = res["models"][kind]
        paper_cell = pm(r["energy_paper"]) if "energy_paper" in r else "n/a"
        rows.append(f"| {MODEL_NAMES[kind]} (innergrad) | {pm(r['train'])} | {pm(r['test'])} | "
                    f"{paper_cell} | {pm(r['energy'])} | {r['train_seconds']:.1f} s |")
    for kind in KINDS:
        p = paper[kind]
        rows.append(f"| {MODEL_NAMES[kind]} (paper) | {pm(p['train'])} | {pm(p['test'])} | {pm(p['energy'])} | | |")
    fixed = []
    for kind in KINDS:
        r = res["models"][kind]
        fixed.append(f"| {MODEL_NAMES[kind]} | {pm(r['energy'])} | {pm(r['energy_rk4'])} | "
                     f"{pm(r['energy_leapfrog'])} | {pm(r['state_mse'])} |")
    s = res["settings"]
    return [
        "Mean squared error of the time derivative on the train and test states, ± standard error "
        "(std of the squared errors / sqrt(number of states)); energy MSE ± standard error over "
        f"{ENERGY_GROUPS} groups of initial conditions, under the paper's protocol and under ours (both below). "
        "Paper: Greydanus, Dzamba & Yosinski, *Hamiltonian Neural Networks*, NeurIPS 2019, Table 1"
        + (f"; the noise floor of the train MSE (the true dynamics on the noisy states) is {fmt(res['noise_floor'])}."
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
    ]


def _protocol(task: HNNTask, res: dict) -> list[str]:
    s = res["settings"]
    bs = "full batch" if s["batch_size"] is None else f"minibatches of {s['batch_size']}"
    noise = f"Gaussian noise std {s['noise_std']} on q and p" if s["noise_std"] else "no noise"
    lines = [
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
    return lines


# ---------------------------------------------------------------- the experiment


class HNNPaper(Experiment):
    """Baseline vs HNN on one task of the paper (`spring`, `pendulum`, `two-body`).

    **Options:** `steps` per model (default: the paper's, 2000 or 10000); `hidden_layers` (200, 200);
    `energy_trials`: initial conditions of our energy metric (15); `backend` of the HNN's gradient;
    `rollout_dt`: step of the extra `ig.rollout` energy rows (rk4 and leapfrog beside `solve_ivp`).
    """

    name = "hnn"

    def __init__(self, task: str = "spring", steps: int | None = None, hidden_layers: Sequence[int] = (200, 200),
                 energy_trials: int = 15, backend: str = "auto", rollout_dt: float = ROLLOUT_DT):
        if task not in TASKS:
            raise InnergradError(f"unknown HNN task {task!r}; choose one of {sorted(TASKS)}")
        check_positive(steps, "steps (--steps)")
        check_positive(energy_trials, "energy_trials (--energy-trials)", allow_none=False)
        check_number(rollout_dt, "rollout_dt (--rollout-dt)", what="positive time step")
        if backend != "auto" and backend not in BACKENDS:
            raise InnergradError(f"unknown backend {backend!r}; choose one of {backends()}")
        hidden_layers = check_widths(hidden_layers)
        super().__init__(task=task, steps=steps, hidden_layers=hidden_layers, energy_trials=energy_trials,
                         backend=backend, rollout_dt=rollout_dt)
        self.task = TASKS[task]
        self.steps = self.task.steps if steps is None else steps
        self.hidden_layers, self.energy_trials = hidden_layers, energy_trials
        self.backend, self.rollout_dt = backend, rollout_dt

    def default_out(self) -> str:
        return f"runs/hnn-{self.task.name}"

    def title(self, res: dict) -> str:
        return self.task.title

    def command(self, seed: int) -> str:
        c = f"innergrad experiment hnn --task {self.task.name} --steps {self.steps} --seed {seed}"
        if self.hidden_layers != (200, 200):
            c += " --hidden " + " ".join(map(str, self.hidden_layers))
        if self.energy_trials != 15:
            c += f" --energy-trials {self.energy_trials}"
        if self.rollout_dt != ROLLOUT_DT:
            c += f" --rollout-dt {self.rollout_dt:g}"
        return c

    def _build(self, kind: str, ctx: Context) -> nn.Module:
        ctx.seed_torch()  # each model starts from the same seed, as in the paper's separate runs
        if kind == "baseline":
            return BaselineMLP(self.task.dim, self.hidden_layers, "tanh")
        return HamiltonianNet(self.task.dim, self.hidden_layers, "tanh", backend=self.backend)

    def _check_backend(self, x: torch.Tensor) -> None:
        if self.backend != "auto":  # fail before training, not after the baseline's minutes
            probe = HamiltonianNet(self.task.dim, self.hidden_layers, "tanh").H
            why = BACKENDS[self.backend].unsupported(probe, (x[:2],), (0,))
            if why:
                raise InnergradError(f"--backend {self.backend} cannot run this HNN: {why}. Use --backend auto.")

    def _train(self, ctx: Context, data: dict) -> tuple[dict, dict, dict]:
        t = self.task
        models, hists, results = {}, {}, {}
        for kind in KINDS:
            model = self._build(kind, ctx)
            hists[kind] = train_model(model, data["x"], data["dx"], (data["test_x"], data["test_dx"]),
                                      steps=self.steps, lr=1e-3, weight_decay=t.weight_decay,
                                      batch_size=t.batch_size, seed=ctx.seed, quiet=ctx.quiet)
            with torch.no_grad():
                results[kind] = {"train": mse_se(model(data["x"]), data["dx"]),
                                 "test": mse_se(model(data["test_x"]), data["test_dx"]),
                                 "train_seconds": hists[kind]["seconds"]}
            models[kind] = model
        return models, hists, results

    def execute(self, ctx: Context) -> dict:
        t0 = time.perf_counter()
        t = self.task
        data_np = make_dataset(t, ctx.seed)
        seconds_data = time.perf_counter() - t0
        data = {k: torch.tensor(v, dtype=torch.float32) for k, v in data_np.items() if k != "t"}
        self._check_backend(data["x"])
        models, hists, results = self._train(ctx, data)
        t_eval = time.perf_counter()
        ev = evaluate_energy(t, models, self.energy_trials, ctx.seed, ctx.quiet, self.rollout_dt)
        for kind in models:
            results[kind].update(ev["per_model"][kind])
        seconds_eval = time.perf_counter() - t_eval
        floor = noise_floor(t, data_np)
        _plot_hnn(t, ctx, data_np, ev, hists, models, floor)
        hnn = models["hnn"]
        used = hnn.backend if hnn.backend != "auto" else choose_backend(hnn.H, (data["x"][:2],), (0,)).name
        return {
            "task": t.name,
            "settings": {
                "seed": ctx.seed, "steps": self.steps, "hidden_layers": list(self.hidden_layers),
                "backend": self.backend, "backend_used": used, "trajectories": t.trajectories, "points": t.points,
                "t_span": t.t_span, "noise_std": t.noise_std, "rtol": t.rtol, "batch_size": t.batch_size,
                "weight_decay": t.weight_decay, "energy_trials": self.energy_trials, "eval_t_span": t.eval_t_span,
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
            "paper": PAPER[t.name],
        }

    def report(self, res: dict) -> str:
        lines = [
            f"# HNN vs baseline: {self.task.title}", "", f"Reproduce: `{res['command']}`", "",
            f"{res['versions']}. Wall time {res['seconds_total']:.0f} s in all (data {res['seconds_data']:.1f} s, "
            f"evaluation {res['seconds_eval']:.1f} s).", "", "## Results", "",
            *_result_tables(self.task, res), "", "## Protocol", "", *_protocol(self.task, res), "", "## Plots", "",
            *[f"![{f[:-4]}]({f})" for f in res["files"] if f.endswith(".png")],
        ]
        return "\n".join(lines) + "\n"

    def summary(self, res: dict) -> list[str]:
        return [f"  {MODEL_NAMES[k]:16s} " + "  ".join(f"{m} {pm(res['models'][k][m])}"
                                                      for m in ("train", "test", "energy")) for k in KINDS]


def run_hnn(task: str = "spring", out: str | Path | None = None, steps: int | None = None, seed: int = 0,
            quiet: bool = False, hidden_layers: Sequence[int] = (200, 200), energy_trials: int = 15,
            backend: str = "auto", threads: int | None = 1, rollout_dt: float = ROLLOUT_DT) -> dict:
    """Train the baseline and the HNN on `task`, evaluate them, write `report.md` and plots to `out`.

    **Arguments:** as `HNNPaper`; `out`: a new or empty folder (None: a fresh
    `runs/hnn-<task>-<time>-<id>`); `threads`: torch threads during the run (None: leave as is).

    **Returns:** the results dict that is also written to `results.json`.
    """
    exp = HNNPaper(task=task, steps=steps, hidden_layers=hidden_layers, energy_trials=energy_trials,
                   backend=backend, rollout_dt=rollout_dt)
    return run(exp, out=out, seed=seed, quiet=quiet, threads=threads)
