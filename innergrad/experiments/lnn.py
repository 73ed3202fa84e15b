"""`innergrad experiment lnn --task double-pendulum`: Lagrangian Neural Networks (Cranmer et al. 2020).

A baseline MLP (predicts dx/dt directly), an `ig.LagrangianNet` on the state `(theta, omega)` and,
where meaningful, an HNN in canonical coordinates `(theta, p)` (`p = dL/domega`, which an HNN needs
and an LNN does not), all trained on exact time derivatives of double-pendulum states. Evaluation:
from held-out initial states, rollouts (`ig.rollout`, RK4) against the true path: the energy error
along the rollouts over time and the state error. The paper's published statements are data
(paper_lnn.json), printed beside ours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

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
    energy_per_ic,
    float64_copy,
    fmt,
    fraction_below,
    mse_se,
    state_per_ic,
    train_model,
)
from .mechanics import (
    canonical_dynamics,
    from_canonical,
    pendulum2_dynamics,
    pendulum2_energy,
    pendulum2_state,
    solve,
    to_canonical,
)
from .plots import plot_energy_error, plot_training
from .runner import Context, Experiment, run

PAPER_LNN: dict = json.loads(Path(__file__).with_name("paper_lnn.json").read_text())
KINDS = ("baseline", "lnn", "hnn")
TASKS = ("double-pendulum",)


def make_data(rng: np.random.RandomState, trajectories: int, points: int, duration: float) -> dict:
    """States along true double-pendulum paths (exact derivatives as targets); split by trajectory, 80/20."""
    t = np.linspace(0.0, duration, points)
    paths = np.stack([solve(pendulum2_dynamics, pendulum2_state(rng), t) for _ in range(trajectories)])
    n_test = max(1, int(round(0.2 * trajectories)))
    train, test = paths[:-n_test].reshape(-1, 4), paths[-n_test:].reshape(-1, 4)
    return {"t": t, "x": train, "dx": pendulum2_dynamics(train), "test_x": test, "test_dx": pendulum2_dynamics(test),
            "n_train_paths": trajectories - n_test, "n_test_paths": n_test}


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


class LNNDoublePendulum(Experiment):
    """Baseline vs LNN (vs HNN in canonical coordinates) on the double pendulum.

    **Options:** `steps` per model (2000), `hidden_layers` (128, 128; softplus as in the paper),
    `batch_size` (256), `lr` (1e-3), `trajectories` (50 paths of `points` 50 over `duration` 5 s,
    80% train / 20% test), `horizon` of the evaluation rollouts (5 s, RK4 with `dt` 0.01),
    `models` (a subset of baseline, lnn, hnn).
    """

    name = "lnn"

    def __init__(self, task: str = "double-pendulum", steps: int = 2000, hidden_layers: Sequence[int] = (128, 128),
                 batch_size: int | None = 256, lr: float = 1e-3, trajectories: int = 50, points: int = 50,
                 duration: float = 5.0, horizon: float = 5.0, dt: float = 0.01, models: Sequence[str] = KINDS):
        if task not in TASKS:
            raise InnergradError(f"unknown LNN task {task!r}; choose one of {list(TASKS)} (or --data FILE)")
        check_positive(steps, "steps (--steps)", allow_none=False)
        check_positive(batch_size, "batch_size (--batch-size)")
        check_positive(trajectories, "trajectories", allow_none=False)
        check_positive(points, "points", allow_none=False)
        if trajectories < 2:
            raise InnergradError(f"trajectories must be at least 2 (one for testing), got {trajectories}")
        for value, name in ((lr, "lr (--lr)"), (duration, "duration"), (horizon, "horizon (--horizon)"),
                            (dt, "dt")):
            check_number(value, name, what="positive number")
        models = tuple(models)
        if not models or any(m not in KINDS for m in models) or len(set(models)) != len(models):
            raise InnergradError(f"--models takes a comma-separated subset of {','.join(KINDS)}, got "
                                 f"{','.join(models) or 'nothing'}")
        hidden_layers = check_widths(hidden_layers)
        super().__init__(task=task, steps=steps, hidden_layers=hidden_layers, batch_size=batch_size, lr=lr,
                         trajectories=trajectories, points=points, duration=duration, horizon=horizon, dt=dt,
                         models=models)
        self.task, self.steps, self.hidden_layers, self.batch_size, self.lr = task, steps, hidden_layers, batch_size, lr
        self.trajectories, self.points, self.duration = trajectories, points, duration
        self.horizon, self.dt, self.models = horizon, dt, models

    def default_out(self) -> str:
        return f"runs/lnn-{self.task}"

    def title(self, res: dict) -> str:
        return "Lagrangian NN on the double pendulum"

    def command(self, seed: int) -> str:
        c = f"innergrad experiment lnn --task {self.task} --steps {self.steps} --seed {seed}"
        if self.hidden_layers != (128, 128):
            c += " --hidden " + " ".join(map(str, self.hidden_layers))
        if self.models != KINDS:
            c += f" --models {','.join(self.models)}"
        return c

    def _build(self, kind: str, ctx: Context) -> nn.Module:
        from ..models.lagrangian import LagrangianNet

        ctx.seed_torch()
        if kind == "baseline":
            return BaselineMLP(4, self.hidden_layers, "softplus")
        if kind == "lnn":
            return LagrangianNet(4, hidden_layers=self.hidden_layers, activation="softplus")
        return HamiltonianNet(4, self.hidden_layers, "softplus")

    def _train(self, ctx: Context, data: dict) -> tuple[dict, dict, dict]:
        models, hists, results = {}, {}, {}
        for kind in self.models:
            model = self._build(kind, ctx)
            if kind == "hnn":  # canonical coordinates: inputs (theta, p), targets d(theta, p)/dt
                arrays = (to_canonical(data["x"]), canonical_dynamics(data["x"]), to_canonical(data["test_x"]),
                          canonical_dynamics(data["test_x"]))
            else:
                arrays = (data["x"], data["dx"], data["test_x"], data["test_dx"])
            x, dx, tx, tdx = map(_as_tensor, arrays)
            hists[kind] = train_model(model, x, dx, (tx, tdx), steps=self.steps, lr=self.lr, weight_decay=0.0,
                                      batch_size=self.batch_size, seed=ctx.seed, quiet=ctx.quiet)
            with torch.no_grad():
                results[kind] = {"train": mse_se(model(x), dx), "test": mse_se(model(tx), tdx),
                                 "train_seconds": hists[kind]["seconds"]}
            models[kind] = model
        return models, hists, results

    def _rollouts(self, models: dict, ics: np.ndarray, t: np.ndarray) -> dict:
        """Each model's path from every initial state, in `(theta, omega)`, `(trials, T, 4)`."""
        sub = max(1, int(round((t[1] - t[0]) / self.dt)))
        paths = {}
        for kind, model in models.items():
            m = float64_copy(model)
            x0 = torch.from_numpy(to_canonical(ics) if kind == "hnn" else ics)
            with torch.no_grad():
                traj = rollout(m, x0, torch.from_numpy(t), method="rk4", substeps=sub).transpose(0, 1).numpy()
            paths[kind] = from_canonical(traj) if kind == "hnn" else traj
        return paths

    def execute(self, ctx: Context) -> dict:
        rng = ctx.rng()
        data = make_data(rng, self.trajectories, self.points, self.duration)
        models, hists, results = self._train(ctx, data)
        t_eval0 = time.perf_counter()
        ics = data["test_x"].reshape(data["n_test_paths"], self.points, 4)[:, 0]
        t = np.linspace(0.0, self.horizon, int(round(self.horizon / 0.05)) + 1)
        truth = np.stack([solve(pendulum2_dynamics, y0, t) for y0 in ics])
        paths = self._rollouts(models, ics, t)
        curves = {}
        with np.errstate(all="ignore"):
            for kind, p in paths.items():
                r = results[kind]
                r["energy_per_ic"] = energy_per_ic(pendulum2_energy, p, truth)
                r["state_per_ic"] = state_per_ic(p, truth)
                r["energy_mse_mean"] = float(np.mean(r["energy_per_ic"]))
                r["rollout_mse_mean"] = float(np.mean(r["state_per_ic"]))
                curves[kind] = np.abs(pendulum2_energy(p) - pendulum2_energy(truth)).mean(0)
        seconds_eval = time.perf_counter() - t_eval0
        ctx.add_file(plot_energy_error(ctx.out, t, curves, "Double pendulum: |E(model path) - E(true path)|, "
                                       "mean over the test initial states"))
        ctx.add_file(plot_training(ctx.out, hists, None, "Double pendulum: training"))
        return {
            "task": self.task,
            "settings": {"seed": ctx.seed, "steps": self.steps, "hidden_layers": list(self.hidden_layers),
                         "batch_size": self.batch_size, "lr": self.lr, "trajectories": self.trajectories,
                         "points": self.points, "duration": self.duration, "horizon": self.horizon, "dt": self.dt,
                         "models": list(self.models), "n_train": int(len(data["x"])),
                         "n_test": int(len(data["test_x"])), "n_eval": int(len(ics))},
            "models": results,
            "energy_error_curve": {"t": t, **curves},
            "seconds_eval": seconds_eval,
            "paper": PAPER_LNN,
        }

    def report(self, res: dict) -> str:
        s, m = res["settings"], res["models"]
        rows = [f"| {MODEL_NAMES[k]} | {fmt(m[k]['energy_mse_mean'])} | {fmt(m[k]['rollout_mse_mean'])} | "
                f"{fmt(m[k]['test'][0])} | {m[k]['train_seconds']:.1f} s |" for k in self.models]
        wins = []
        if "lnn" in m and "baseline" in m:
            w, n = fraction_below(m["lnn"]["energy_per_ic"], m["baseline"]["energy_per_ic"])
            wins.append(f"LNN's energy error below the baseline's on {w} of {n} test initial states.")
        paper = PAPER_LNN
        lines = [
            "# Lagrangian NN vs baseline (and HNN in canonical coordinates): double pendulum", "",
            f"Reproduce: `{res['command']}`", "", f"{res['versions']}. Wall time {res['seconds_total']:.0f} s.", "",
            "## Results", "",
            f"From the first state of each of the {s['n_eval']} test paths, `ig.rollout` (RK4, dt {s['dt']:g}) over "
            f"t in [0, {s['horizon']:g}] against the true path (scipy, rtol 1e-10). Energy MSE: mean over time of "
            "(E(model path) - E(true path))^2 with the true energy (`ig.metrics.energy_mse`); state MSE: "
            "`ig.metrics.rollout_mse`; both averaged over the initial states.", "",
            "| Model | Energy MSE along the rollouts | Rollout state MSE | Test MSE of dx/dt | Train time |",
            "|---|---|---|---|---|", *rows, "", *wins, "",
            f"The paper ({paper['source']}): {paper['statement']}", "",
            "## Protocol", "",
            f"- Data: {s['trajectories']} double-pendulum paths (unit masses and lengths, g = 9.8) from angles "
            f"uniform in ±1 rad and angular velocities in ±1 rad/s, {s['points']} states each on t in "
            f"[0, {s['duration']:g}] (scipy, rtol 1e-10); targets the exact dx/dt; numpy seed {s['seed']}; the last "
            f"20% of the paths for testing ({s['n_train']} train / {s['n_test']} test states).",
            f"- Models: MLP 4 -> {' -> '.join(map(str, s['hidden_layers']))}, softplus; the baseline outputs dx/dt "
            "(4 numbers), the LNN a scalar L(theta, omega) (`ig.LagrangianNet`: q'' from the Euler-Lagrange "
            "equation), the HNN a scalar H(theta, p) trained on canonical coordinates p = M(theta) omega and "
            f"their exact derivatives; torch seed {s['seed']}.",
            f"- Training: `ig.train.fit`, Adam lr {s['lr']:g}, minibatches of {s['batch_size']}, {s['steps']} steps, "
            "MSE of dx/dt.", "", "## Plots", "", *[f"![{f[:-4]}]({f})" for f in res["files"] if f.endswith(".png")],
        ]
        return "\n".join(lines) + "\n"

    def summary(self, res: dict) -> list[str]:
        m = res["models"]
        return [f"  {MODEL_NAMES[k]:16s} energy MSE {fmt(m[k]['energy_mse_mean'])}  state MSE "
                f"{fmt(m[k]['rollout_mse_mean'])}  test MSE {fmt(m[k]['test'][0])}" for k in self.models]


def run_lnn(task: str = "double-pendulum", out: str | Path | None = None, seed: int = 0, quiet: bool = False,
            threads: int | None = 1, **options) -> dict:
    """`LNNDoublePendulum(task, **options)` through the runner (`out`, `seed`, `quiet`, `threads` as `run`)."""
    return run(LNNDoublePendulum(task, **options), out=out, seed=seed, quiet=quiet, threads=threads)
