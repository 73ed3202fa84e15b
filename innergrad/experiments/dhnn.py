"""`innergrad experiment dhnn --task damped-spring`: Dissipative HNNs (Sosanya & Greydanus 2022).

A baseline MLP, an HNN and an `ig.DissipativeHNN` (`dx/dt = J grad H + grad D`) trained on a damped
mass-spring (`H = (q^2 + p^2) / 2`, Rayleigh function `R = rho p^2 / 2`, so the true `D = -R`).
Three questions, as in the paper: does the D-HNN recover the friction term (its learned D and
grad D against the true ones on a grid)? does it predict the damped motion (rollouts against the
truth)? and, with its D rescaled, does it predict the motion for a friction coefficient it never saw?
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import InnergradError
from ..models.hamiltonian import HamiltonianNet
from ..models.integrators import rollout
from .common import (
    MODEL_NAMES,
    BaselineMLP,
    check_number,
    check_positive,
    check_widths,
    float64_copy,
    fmt,
    mse_se,
    state_per_ic,
    train_model,
)
from .mechanics import damped_spring_dynamics, solve, spring_energy, spring_rayleigh
from .plots import plot_dissipation, plot_training
from .runner import Context, Experiment, run

PAPER_DHNN: dict = json.loads(Path(__file__).with_name("paper_dhnn.json").read_text())
KINDS = ("baseline", "hnn", "dhnn")
TASKS = ("damped-spring",)


def dissipative_model(dim: int, hidden_layers: Sequence[int], activation: str = "tanh") -> nn.Module:
    """`ig.DissipativeHNN` with the default H and D (MLPs of `hidden_layers`)."""
    from ..models.dissipative import DissipativeHNN

    return DissipativeHNN(dim, hidden_layers=hidden_layers, activation=activation)


def parts(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(D(x), J grad H(x), grad D(x))` of an `ig.DissipativeHNN`: its dissipation and its two fields."""
    with torch.no_grad():
        conservative, dissipative = model.fields(x)
        return model.dissipation_function(x), conservative, dissipative


class ScaledDissipation(nn.Module):
    """`J grad H + scale * grad D` of a trained dissipative HNN: its prediction for another friction."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, conservative, dissipative = parts(self.model, x)
        return conservative + self.scale * dissipative


def make_data(rng: np.random.RandomState, rho: float, trajectories: int, points: int, duration: float,
              noise: float) -> dict:
    """Noisy states along damped-spring paths from radius U[0.2, 1] starts; exact dx/dt at the clean states."""
    t = np.linspace(0.0, duration, points)
    xs, dxs, starts = [], [], []
    for _ in range(trajectories):
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.0)
        y0 = radius * np.array([np.cos(angle), np.sin(angle)])
        clean = solve(lambda y: damped_spring_dynamics(y, rho), y0, t)
        dxs.append(damped_spring_dynamics(clean, rho))
        xs.append(clean + noise * rng.randn(*clean.shape))
        starts.append(y0)
    n_test = max(1, int(round(0.2 * trajectories)))
    return {"t": t, "x": np.concatenate(xs[:-n_test]), "dx": np.concatenate(dxs[:-n_test]),
            "test_x": np.concatenate(xs[-n_test:]), "test_dx": np.concatenate(dxs[-n_test:]),
            "test_starts": np.stack(starts[-n_test:])}


def _paths(model: nn.Module, ics: np.ndarray, t: np.ndarray, dt: float) -> np.ndarray:
    sub = max(1, int(round((t[1] - t[0]) / dt)))
    with torch.no_grad():
        traj = rollout(float64_copy(model), torch.from_numpy(ics), torch.from_numpy(t), method="rk4", substeps=sub)
    return traj.transpose(0, 1).numpy()


def _truths(ics: np.ndarray, t: np.ndarray, rho: float) -> np.ndarray:
    return np.stack([solve(lambda y: damped_spring_dynamics(y, rho), y0, t) for y0 in ics])


def recovery(model: nn.Module, rho: float, box: float = 1.0, n: int = 41) -> dict:
    """The learned D and its two fields against the truth on the points of an `n` x `n` grid in the disk
    of radius `box` (the region the training paths cover).

    D is compared up to its constant (means removed); the errors are relative (RMS error / RMS truth).
    """
    g = np.linspace(-box, box, n)
    x = np.stack([a.ravel() for a in np.meshgrid(g, g)], -1)
    x = x[(x**2).sum(-1) <= box**2]  # where the data are (paths start inside the unit circle and decay)
    d, cons, diss = (a.numpy() for a in parts(float64_copy(model), torch.from_numpy(x)))
    d_true = -spring_rayleigh(x, rho)
    diss_true = damped_spring_dynamics(x, rho) - np.stack((x[:, 1], -x[:, 0]), -1)
    cons_true = np.stack((x[:, 1], -x[:, 0]), -1)

    def rel(a, b):
        return float(np.sqrt(((a - b) ** 2).sum() / (b**2).sum()))

    dc, tc = d - d.mean(), d_true - d_true.mean()
    # The friction coefficient the learned D implies: least squares of grad D = (0, -rho p) in p.
    rho_fit = float(-(diss[:, 1] * x[:, 1]).sum() / (x[:, 1] ** 2).sum())
    return {"d_relative_error": rel(dc, tc), "dissipative_field_error": rel(diss, diss_true),
            "conservative_field_error": rel(cons, cons_true), "rho_learned": rho_fit,
            "grid": {"x": x, "d": d - d.mean(), "d_true": tc}}


class DHNNDampedSpring(Experiment):
    """Baseline vs HNN vs D-HNN on the damped spring; recovery of D; an unseen friction coefficient.

    **Options:** `rho` (friction of the training data, 0.2) and `rho_unseen` (0.4); `steps` per model
    (1500, full batch), `hidden_layers` (64, 64; tanh), `lr` (1e-3), `trajectories` (40 paths of
    `points` 50 over `duration` 8, last 20% for testing), `noise` on the states (0.01), `horizon` of
    the rollouts (20, RK4 with `dt` 0.01).
    """

    name = "dhnn"

    def __init__(self, task: str = "damped-spring", rho: float = 0.2, rho_unseen: float = 0.4, steps: int = 1500,
                 hidden_layers: Sequence[int] = (64, 64), lr: float = 1e-3, trajectories: int = 40,
                 points: int = 50, duration: float = 8.0, noise: float = 0.01, horizon: float = 20.0,
                 dt: float = 0.01):
        if task not in TASKS:
            raise InnergradError(f"unknown D-HNN task {task!r}; choose one of {list(TASKS)} (or use "
                                 "`innergrad experiment hnn --data FILE --models baseline,hnn,dhnn`)")
        check_positive(steps, "steps (--steps)", allow_none=False)
        check_positive(trajectories, "trajectories", allow_none=False)
        check_positive(points, "points", allow_none=False)
        if trajectories < 2:
            raise InnergradError(f"trajectories must be at least 2 (one for testing), got {trajectories}")
        check_number(rho, "rho (--rho)", what="positive friction coefficient")
        check_number(rho_unseen, "rho_unseen (--rho-unseen)", strict=False, what="friction coefficient")
        check_number(noise, "noise (--noise)", strict=False, what="noise std")
        for value, name in ((lr, "lr (--lr)"), (duration, "duration"), (horizon, "horizon"), (dt, "dt")):
            check_number(value, name, what="positive number")
        hidden_layers = check_widths(hidden_layers)
        super().__init__(task=task, rho=rho, rho_unseen=rho_unseen, steps=steps, hidden_layers=hidden_layers, lr=lr,
                         trajectories=trajectories, points=points, duration=duration, noise=noise, horizon=horizon,
                         dt=dt)
        self.task, self.rho, self.rho_unseen, self.steps = task, rho, rho_unseen, steps
        self.hidden_layers = hidden_layers
        self.lr, self.trajectories, self.points, self.duration = lr, trajectories, points, duration
        self.noise, self.horizon, self.dt = noise, horizon, dt

    def default_out(self) -> str:
        return f"runs/dhnn-{self.task}"

    def title(self, res: dict) -> str:
        return "Dissipative HNN on the damped spring"

    def command(self, seed: int) -> str:
        c = f"innergrad experiment dhnn --task {self.task} --steps {self.steps} --seed {seed}"
        if (self.rho, self.rho_unseen) != (0.2, 0.4):
            c += f" --rho {self.rho:g} --rho-unseen {self.rho_unseen:g}"
        if self.hidden_layers != (64, 64):
            c += " --hidden " + " ".join(map(str, self.hidden_layers))
        return c

    def _train(self, ctx: Context, data: dict) -> tuple[dict, dict, dict]:
        x, dx, tx, tdx = (torch.tensor(data[k], dtype=torch.float32) for k in ("x", "dx", "test_x", "test_dx"))
        models, hists, results = {}, {}, {}
        for kind in KINDS:
            ctx.seed_torch()
            model = (BaselineMLP(2, self.hidden_layers, "tanh") if kind == "baseline" else
                     HamiltonianNet(2, self.hidden_layers, "tanh") if kind == "hnn" else
                     dissipative_model(2, self.hidden_layers, "tanh"))
            hists[kind] = train_model(model, x, dx, (tx, tdx), steps=self.steps, lr=self.lr, weight_decay=0.0,
                                      batch_size=None, seed=ctx.seed, quiet=ctx.quiet)
            with torch.no_grad():
                results[kind] = {"train": mse_se(model(x), dx), "test": mse_se(model(tx), tdx),
                                 "train_seconds": hists[kind]["seconds"]}
            models[kind] = model
        return models, hists, results

    def _rollouts(self, models: dict, results: dict, ics: np.ndarray) -> dict:
        t = np.linspace(0.0, self.horizon, int(round(self.horizon / 0.1)) + 1)
        truth = _truths(ics, t, self.rho)
        unseen = _truths(ics, t, self.rho_unseen)
        curves = {"t": t, "truth": spring_energy(truth).mean(0)}
        for kind, model in models.items():
            p = _paths(model, ics, t, self.dt)
            r = results[kind]
            r["rollout_per_ic"] = state_per_ic(p, truth)
            r["rollout_mse_mean"] = float(np.mean(r["rollout_per_ic"]))
            r["energy_mse_mean"] = float(np.mean((spring_energy(p) - spring_energy(truth)) ** 2))
            curves[kind] = spring_energy(p).mean(0)
            # The unseen friction: the D-HNN rescales its D; the others cannot change and run as trained.
            m = ScaledDissipation(model, self.rho_unseen / self.rho) if kind == "dhnn" else model
            r["unseen_rollout_per_ic"] = state_per_ic(_paths(m, ics, t, self.dt), unseen)
            r["unseen_rollout_mse_mean"] = float(np.mean(r["unseen_rollout_per_ic"]))
        return curves

    def execute(self, ctx: Context) -> dict:
        data = make_data(ctx.rng(), self.rho, self.trajectories, self.points, self.duration, self.noise)
        models, hists, results = self._train(ctx, data)
        t0 = time.perf_counter()
        curves = self._rollouts(models, results, data["test_starts"])
        rec = recovery(models["dhnn"], self.rho)
        results["dhnn"].update({k: v for k, v in rec.items() if k != "grid"})
        ctx.add_file(plot_dissipation(ctx.out, rec["grid"], curves, self.rho))
        ctx.add_file(plot_training(ctx.out, hists, None, "Damped spring: training"))
        return {"task": self.task,
                "settings": {"seed": ctx.seed, "rho": self.rho, "rho_unseen": self.rho_unseen, "steps": self.steps,
                             "hidden_layers": list(self.hidden_layers), "lr": self.lr,
                             "trajectories": self.trajectories, "points": self.points, "duration": self.duration,
                             "noise": self.noise, "horizon": self.horizon, "dt": self.dt,
                             "n_train": int(len(data["x"])), "n_test": int(len(data["test_x"])),
                             "n_eval": int(len(data["test_starts"]))},
                "models": results, "energy_curve": curves, "seconds_eval": time.perf_counter() - t0,
                "paper": PAPER_DHNN}

    def report(self, res: dict) -> str:
        s, m = res["settings"], res["models"]
        rows = [f"| {MODEL_NAMES[k]} | {fmt(m[k]['rollout_mse_mean'])} | {fmt(m[k]['energy_mse_mean'])} | "
                f"{fmt(m[k]['unseen_rollout_mse_mean'])} | {fmt(m[k]['test'][0])} | {m[k]['train_seconds']:.1f} s |"
                for k in KINDS]
        d = m["dhnn"]
        lines = [
            "# Dissipative HNN vs HNN vs baseline: damped spring", "", f"Reproduce: `{res['command']}`", "",
            f"{res['versions']}. Wall time {res['seconds_total']:.0f} s.", "", "## Results", "",
            f"From the first state of each of the {s['n_eval']} test paths, `ig.rollout` (RK4, dt {s['dt']:g}) over "
            f"t in [0, {s['horizon']:g}] against the true path (friction rho = {s['rho']:g}), and against the true "
            f"path at the unseen friction rho = {s['rho_unseen']:g} (the D-HNN's D scaled by "
            f"{s['rho_unseen'] / s['rho']:g}; the baseline and the HNN run as trained: they cannot separate the "
            "friction).", "",
            "| Model | Rollout state MSE | Energy MSE | Rollout state MSE, unseen friction | Test MSE of dx/dt "
            "| Train time |", "|---|---|---|---|---|---|", *rows, "",
            "Friction recovered by the D-HNN on the points of a 41 x 41 grid in the unit disk (where the data are): "
            "learned D against the true "
            f"-R = -rho p^2 / 2 (means removed) relative error {d['d_relative_error']:.3g}; its field grad D against "
            f"(0, -rho p) relative error {d['dissipative_field_error']:.3g}; implied rho {d['rho_learned']:.4g} (true "
            f"{s['rho']:g}); conservative field J grad H against (p, -q) relative error "
            f"{d['conservative_field_error']:.3g}.", "",
            f"The paper ({PAPER_DHNN['source']}): {PAPER_DHNN['statement']}", "", "## Protocol", "",
            f"- Data: {s['trajectories']} damped-spring paths (dq/dt = p, dp/dt = -q - rho p, rho {s['rho']:g}) from "
            f"starts at radius U[0.2, 1], {s['points']} states each on t in [0, {s['duration']:g}] (scipy, rtol "
            f"1e-10), Gaussian noise std {s['noise']:g} on the states, targets the exact dx/dt at the clean states; "
            f"numpy seed {s['seed']}; last 20% of the paths for testing ({s['n_train']} / {s['n_test']} states).",
            f"- Models: MLPs 2 -> {' -> '.join(map(str, s['hidden_layers']))}, tanh: the baseline outputs dx/dt, the "
            "HNN a scalar H, the D-HNN (`ig.DissipativeHNN`) two scalars H and D; torch seed "
            f"{s['seed']}.",
            f"- Training: `ig.train.fit`, full-batch Adam lr {s['lr']:g}, {s['steps']} steps, MSE of dx/dt.", "",
            "## Plots", "", *[f"![{f[:-4]}]({f})" for f in res["files"] if f.endswith(".png")],
        ]
        return "\n".join(lines) + "\n"

    def summary(self, res: dict) -> list[str]:
        m = res["models"]
        lines = [f"  {MODEL_NAMES[k]:16s} rollout MSE {fmt(m[k]['rollout_mse_mean'])}  unseen friction "
                 f"{fmt(m[k]['unseen_rollout_mse_mean'])}" for k in KINDS]
        return lines + [f"  learned friction rho {m['dhnn']['rho_learned']:.4g} (true {res['settings']['rho']:g}), "
                        f"D relative error {m['dhnn']['d_relative_error']:.3g}"]


def run_dhnn(task: str = "damped-spring", out: str | Path | None = None, seed: int = 0, quiet: bool = False,
             threads: int | None = 1, **options) -> dict:
    """`DHNNDampedSpring(task, **options)` through the runner (`out`, `seed`, `quiet`, `threads` as `run`)."""
    return run(DHNNDampedSpring(task, **options), out=out, seed=seed, quiet=quiet, threads=threads)
