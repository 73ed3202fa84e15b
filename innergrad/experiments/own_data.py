"""`innergrad experiment hnn --data FILE`: the models on the user's own measured trajectories.

Trajectories `t, q..., p...` from a CSV or `.npz` file; derivatives by `ig.data.time_derivative`;
each model (a baseline MLP, an HNN, ...) trained on the same standardised data; from each test
trajectory's first state a rollout over its own time stamps; `ig.metrics` on the rollouts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import InnergradError
from ..data.trajectories import Trajectories, load_trajectories, time_derivative
from ..models.hamiltonian import HamiltonianNet
from ..train import metrics
from .common import (
    COLORS,
    MODEL_NAMES,
    BaselineMLP,
    check_positive,
    check_widths,
    finite,
    fmt,
    model_paths,
    mse_se,
    optional,
    pm,
    train_model,
)
from .energy_trend import describe, energy_trend
from .plots import plot_hamiltonian_contours, plot_training, save_figure
from .runner import Context, Experiment, run

Tensor = torch.Tensor


class InUnits(nn.Module):
    """A model trained on standardised states, used in the data's units: `x -> dx/dt`.

    The change of units `x' = (x - c) / s`, `t' = t / tau` with one scale `s_q` for every position
    and one `s_p` for every momentum maps Hamiltonian dynamics to Hamiltonian dynamics with
    `H' = H * tau / (s_q s_p)`, so standardising never breaks the HNN's structure.
    """

    def __init__(self, model: nn.Module, center: np.ndarray, scale: np.ndarray, tau: float):
        super().__init__()
        self.model = model
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))
        self.tau = float(tau)
        n = len(scale) // 2
        self.energy_unit = float(scale[0] * scale[n]) / self.tau if len(scale) % 2 == 0 else 1.0

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.center.to(x.dtype)) / self.scale.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.standardise(x)) * (self.scale.to(x.dtype) / self.tau)

    def hamiltonian(self, x: Tensor) -> Tensor:
        return self.model.hamiltonian(self.standardise(x)) * self.energy_unit


def standard_units(x: np.ndarray, dx: np.ndarray, canonical: bool) -> tuple[np.ndarray, np.ndarray, float]:
    center = x.mean(0)
    std = x.std(0)
    if canonical:  # one scale for all q and one for all p keeps the dynamics Hamiltonian
        n = x.shape[1] // 2
        scale = np.concatenate([np.full(n, np.sqrt((std[:n] ** 2).mean())), np.full(n, np.sqrt((std[n:] ** 2).mean()))])
    else:
        scale = std
    scale = np.where(scale > 0, scale, 1.0)
    rate = np.sqrt(((dx / scale) ** 2).mean())  # derivatives in standard units ~ 1
    tau = 1.0 / rate if rate > 0 and np.isfinite(rate) else 1.0
    return center, scale, tau


def lagrangian_units(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Units for an LNN on `(q, q')`: positions centred and scaled by one `s_q`, velocities by `s_q / tau`
    and not centred, so the standardised state is again `(q', dq'/dt')` in standardised time `t / tau`."""
    n = x.shape[1] // 2
    s_q = float(np.sqrt((x[:, :n].std(0) ** 2).mean())) or 1.0
    v_rms = float(np.sqrt((x[:, n:] ** 2).mean())) or 1.0
    center = np.concatenate((x[:, :n].mean(0), np.zeros(n)))
    scale = np.concatenate((np.full(n, s_q), np.full(n, v_rms)))
    return center, scale, s_q / v_rms


def standardised(x: np.ndarray, dx: np.ndarray, center, scale, tau: float) -> tuple[Tensor, Tensor]:
    """States and derivatives in standard units (float32 tensors for training)."""
    return (torch.tensor((x - center) / scale, dtype=torch.float32),
            torch.tensor(dx * tau / scale, dtype=torch.float32))


def split_data(d: Trajectories, test_fraction: float | None,
               test_trajectories) -> tuple[Trajectories, Trajectories, str]:
    ids = d.ids
    if test_trajectories:
        by_name = {str(i): i for i in ids}
        missing = [str(i) for i in test_trajectories if str(i) not in by_name]
        if missing:
            raise InnergradError(f"--test-trajectories {missing} are not in the file; its trajectories are "
                            f"{[str(i) for i in ids][:20]}")
        test = [by_name[str(i)] for i in test_trajectories]
        train = [i for i in ids if i not in test]
        if not train:
            raise InnergradError("--test-trajectories names every trajectory; leave at least one for training")
        return d.split(train), d.split(test), f"test trajectories {[str(i) for i in test]}"
    frac = 0.25 if test_fraction is None else test_fraction
    if not (isinstance(frac, (int, float)) and 0 < frac < 1):
        raise InnergradError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if len(ids) >= 2:
        n_test = min(len(ids) - 1, max(1, int(round(frac * len(ids)))))
        return (d.split(ids[:-n_test]), d.split(ids[-n_test:]),
                f"the last {n_test} of {len(ids)} trajectories (in file order) for testing")
    # One trajectory: its final stretch in time is the test (a forecast beyond the training data).
    cut = d.t.min() + (1 - frac) * (d.t.max() - d.t.min())
    keep = d.t <= cut

    def part(mask, suffix):
        ids_ = np.array([f"{d.trajectory[0]}{suffix}"] * int(mask.sum()))
        return Trajectories(d.t[mask], d.x[mask], ids_, None if d.energy is None else d.energy[mask],
                            d.state_names, d.source)

    return (part(keep, ""), part(~keep, " (final stretch)"),
            f"one trajectory: t <= {cut:.4g} for training, the final {frac:.0%} of its time span for testing")


def derivatives(d: Trajectories, scheme: str, who: str):
    try:
        return time_derivative(d.t, d.x, scheme=scheme, trajectory=d.trajectory, return_rows=True)
    except ValueError as e:
        raise InnergradError(f"{who} data: {e}") from None


def energy_function(d: Trajectories, all_data: Trajectories, expression: str | None, state: Sequence[str]):
    """The true energy as a function of states: the expression, or an interpolant of the energy column."""
    from ..data.trajectories import evaluate_expression

    if expression is not None:
        def fn(x):
            x = np.asarray(x, dtype=np.float64)
            return evaluate_expression(expression, {s: x[..., i].reshape(-1) for i, s in enumerate(state)},
                                       finite=False).reshape(x.shape[:-1])  # a model's path may diverge
        return fn, f"`{expression}`"
    if all_data.energy is None:
        return None, None
    interp = optional("scipy.interpolate").RBFInterpolator(
        all_data.x, all_data.energy, neighbors=min(64, len(all_data.x)), kernel="thin_plate_spline",
        smoothing=1e-3 * len(all_data.x))

    def fn(x):
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1, x.shape[-1])
        out = np.full(len(flat), np.nan)
        ok = np.all(np.isfinite(flat), 1)
        if ok.any():
            out[ok] = interp(flat[ok])
        return out.reshape(x.shape[:-1])

    return fn, "the energy column (interpolated over the measured states: thin-plate spline, 64 neighbours)"


def true_dynamics(energy_fn, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """`J grad E` by central differences of the true energy (for the noise floor)."""
    n = x.shape[1] // 2
    g = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[i] = h
        g[:, i] = (energy_fn(x + e) - energy_fn(x - e)) / (2 * h)
    return np.concatenate((g[:, n:], -g[:, :n]), 1)



# ---------------------------------------------------------------- the models a data run can compare


def build_model(kind: str, dim: int, hidden_layers: Sequence[int], backend: str) -> nn.Module:
    """A fresh model of `kind` on standardised states `(B, dim) -> (B, dim)`."""
    if kind == "baseline":
        return BaselineMLP(dim, hidden_layers, "tanh")
    if kind == "hnn":
        return HamiltonianNet(dim, hidden_layers, "tanh", backend=backend)
    if kind == "dhnn":
        from .dhnn import dissipative_model

        return dissipative_model(dim, hidden_layers, "tanh")
    from ..models.lagrangian import LagrangianNet

    return LagrangianNet(dim, hidden_layers=hidden_layers, activation="softplus")


#: The models a data run can compare; an LNN reads the second half of the state as velocities.
MODEL_KINDS = ("baseline", "hnn", "dhnn", "lnn")


def _check_models(models: Sequence[str]) -> tuple[str, ...]:
    models = tuple(models)
    unknown = [m for m in models if m not in MODEL_KINDS]
    if not models or unknown or len(set(models)) != len(models):
        raise InnergradError(f"--models takes a comma-separated subset of {','.join(MODEL_KINDS)} (each once), "
                             f"got {','.join(models) or 'nothing'}")
    return models


# ---------------------------------------------------------------- the experiment


class HNNData(Experiment):
    """Train the models on the trajectories in `data`; report, plot, return the results.

    Arguments as for `innergrad experiment hnn --data` (`state`: position columns first, then the
    momenta). The defaults follow the HNN paper's training (Adam, lr 1e-3, L2 weight decay 1e-4,
    2000 full-batch steps, MLP 200-200 tanh).
    """

    name = "hnn-data"
    cli = "hnn"  # the command that runs it
    default_models: tuple[str, ...] = ("baseline", "hnn")

    def __init__(self, data: str | Path, time_column: str = "t", state: Sequence[str] = ("q", "p"),
                 trajectory: str | None = None, test_fraction: float | None = None,
                 test_trajectories: Sequence[str] | None = None, energy_column: str | None = None,
                 energy: str | None = None, scheme: str = "central", steps: int = 2000,
                 hidden_layers: Sequence[int] = (200, 200), weight_decay: float = 1e-4, lr: float = 1e-3,
                 batch_size: int | None = None, backend: str = "auto", models: Sequence[str] | None = None):
        check_positive(steps, "steps (--steps)", allow_none=False)
        check_positive(batch_size, "batch_size (--batch-size)")
        hidden_layers = check_widths(hidden_layers)
        state = tuple(state)
        if len(state) < 2 or len(state) % 2:
            raise InnergradError(f"--state needs an even number of columns, the positions then the momenta "
                                 f"(e.g. q,p or x,y,px,py), got {list(state)}")
        models = _check_models(type(self).default_models if models is None else models)
        opts = dict(data=str(data), time_column=time_column, state=state, trajectory=trajectory,
                    test_fraction=test_fraction, test_trajectories=test_trajectories, energy_column=energy_column,
                    energy=energy, scheme=scheme, steps=steps, hidden_layers=hidden_layers,
                    weight_decay=weight_decay, lr=lr, batch_size=batch_size, backend=backend, models=models)
        super().__init__(**opts)
        for k, v in opts.items():
            setattr(self, k, v)
        try:
            self.d = load_trajectories(data, time=time_column, state=state, trajectory=trajectory,
                                       energy_column=energy_column, energy=energy)
        except ValueError as e:
            raise InnergradError(str(e)) from None
        self.split = split_data(self.d, test_fraction, test_trajectories)  # a bad split fails before any folder

    def default_out(self) -> str:
        return f"runs/{self.cli}-{Path(self.data).stem}"

    def inputs(self) -> list[tuple[str, str]]:
        return [("--data", str(self.data))]

    def title(self, res: dict) -> str:
        return f"{' vs '.join(MODEL_NAMES[k] for k in self.models)} on {self.data}"

    def command(self, seed: int) -> str:
        parts = [f"innergrad experiment {self.cli} --data {self.data} --time {self.time_column} "
                 f"--state {','.join(self.state)}"]
        if self.trajectory:
            parts.append(f"--trajectory {self.trajectory}")
        if self.test_trajectories:
            parts.append("--test-trajectories " + " ".join(map(str, self.test_trajectories)))
        elif self.test_fraction is not None:
            parts.append(f"--test-fraction {self.test_fraction:g}")
        if self.energy_column:
            parts.append(f"--energy-column {self.energy_column}")
        if self.energy:
            parts.append(f"--energy '{self.energy}'")
        if self.scheme != "central":
            parts.append(f"--scheme {self.scheme}")
        if self.models != type(self).default_models:
            parts.append(f"--models {','.join(self.models)}")
        parts.append(f"--steps {self.steps} --seed {seed}")
        if tuple(self.hidden_layers) != (200, 200):
            parts.append("--hidden " + " ".join(map(str, self.hidden_layers)))
        return " ".join(parts)

    def _prepare(self) -> dict:
        """Split, derivatives, units and the true energy: everything the models share."""
        train, test, split_desc = self.split
        x_tr, dx_tr, _ = derivatives(train, self.scheme, "training")
        x_te, dx_te, _ = derivatives(test, self.scheme, "test")
        center, scale, tau = standard_units(x_tr, dx_tr, canonical=True)
        energy_fn, energy_desc = energy_function(test, self.d, self.energy, self.state)
        floor = floor_test = trend = None
        if self.energy is not None:  # the error the true dynamics make against these targets
            floor = float(np.mean((true_dynamics(energy_fn, x_tr) - dx_tr) ** 2))
            floor_test = float(np.mean((true_dynamics(energy_fn, x_te) - dx_te) ** 2))
        if energy_fn is not None:
            trend = energy_trend(energy_fn, self.d.t, self.d.x, self.d.trajectory)
        return {"train": train, "test": test, "split": split_desc, "x_tr": x_tr, "dx_tr": dx_tr, "x_te": x_te,
                "dx_te": dx_te, "units": (center, scale, tau), "energy_fn": energy_fn, "energy_desc": energy_desc,
                "floor": floor, "floor_test": floor_test, "trend": trend}

    def _train(self, ctx: Context, p: dict) -> tuple[dict, dict, dict]:
        models, hists, results = {}, {}, {}
        for kind in self.models:
            # An LNN's state is (q, q'): its units keep q' the time derivative of q (lagrangian_units).
            center, scale, tau = lagrangian_units(p["x_tr"]) if kind == "lnn" else p["units"]

            xs, dxs = standardised(p["x_tr"], p["dx_tr"], center, scale, tau)
            xts, dxts = standardised(p["x_te"], p["dx_te"], center, scale, tau)
            ctx.seed_torch()
            net = build_model(kind, len(self.state), self.hidden_layers, self.backend)
            hists[kind] = train_model(net, xs, dxs, (xts, dxts), steps=self.steps, lr=self.lr,
                                      weight_decay=self.weight_decay, batch_size=self.batch_size, seed=ctx.seed,
                                      quiet=ctx.quiet)
            model = InUnits(net, center, scale, tau)
            with torch.no_grad():
                m64 = InUnits(net, center, scale, tau).double()
                pred_tr = m64(torch.from_numpy(p["x_tr"])).numpy()
                pred_te = m64(torch.from_numpy(p["x_te"])).numpy()
            results[kind] = {"train": mse_se(torch.from_numpy(pred_tr), torch.from_numpy(p["dx_tr"])),
                             "test": mse_se(torch.from_numpy(pred_te), torch.from_numpy(p["dx_te"])),
                             "train_seconds": hists[kind]["seconds"]}
            models[kind] = model
        return models, hists, results

    def _rollouts(self, p: dict, models: dict, results: dict) -> dict:
        """From each test trajectory's first state over its own time stamps; the metrics on them."""
        test, energy_fn = p["test"], p["energy_fn"]
        paths: dict[str, list] = {k: [] for k in models}
        truths, times = [], []
        for tid in test.ids:
            sel = test.trajectory == tid
            t_i, x_i = test.t[sel], test.x[sel]
            truths.append(x_i)
            times.append(t_i)
            for kind, model in models.items():
                paths[kind].append(model_paths(model, x_i[:1], (t_i[0], t_i[-1]), t_i, 1e-10)[0])
        for kind in models:
            r = results[kind]
            pairs = list(zip(paths[kind], truths))  # a diverged path's metrics are inf
            r["rollout_mse"] = [finite(metrics.rollout_mse(q, x, diverged="inf")) for q, x in pairs]
            if energy_fn is not None:
                r["energy_mse"] = [finite(metrics.energy_mse(energy_fn, q, x, diverged="inf")) for q, x in pairs]
        if "hnn" in models:
            hnn = models["hnn"].double()
            results["hnn"]["h_spread_rollout"] = [finite(metrics.h_spread(hnn, q, diverged="inf"))
                                                  for q in paths["hnn"]]
            results["hnn"]["h_spread_data"] = [finite(metrics.h_spread(hnn, x, diverged="inf")) for x in truths]
        if self.d.energy is not None or energy_fn is not None:
            results["data"] = {"energy_spread": [float(np.std(energy_fn(x))) for x in truths]}
        return {"paths": paths, "truths": truths, "times": times}

    def execute(self, ctx: Context) -> dict:
        p = self._prepare()
        models, hists, results = self._train(ctx, p)
        # A noise floor only where it is one: the true dynamics must fit the targets at least as well as
        # the models do; otherwise the given energy does not describe these data (friction, a drive, ...).
        best_test = min(r["test"][0] for r in results.values())
        best_train = min(r["train"][0] for r in results.values())
        p["describes"] = (None if p["floor_test"] is None else
                          bool(p["floor_test"] <= best_test and p["floor"] <= best_train))
        t_eval0 = time.perf_counter()
        roll = self._rollouts(p, models, results)
        seconds_eval = time.perf_counter() - t_eval0
        for f in _plot_data(ctx.out, self, p, models, roll, hists):
            ctx.add_file(f)
        for kind in models:
            for key in ("rollout_mse", "energy_mse", "h_spread_rollout", "h_spread_data"):
                if key in results[kind]:
                    results[kind][key + "_mean"] = float(np.mean(results[kind][key]))
        center, scale, tau = p["units"]
        train, test = p["train"], p["test"]
        return {
            "data": {"file": str(self.data), "rows": int(len(self.d.t)), "trajectories": len(self.d.ids),
                     "split": p["split"], "train_trajectories": [str(i) for i in train.ids],
                     "test_trajectories": [str(i) for i in test.ids], "n_train": int(len(p["x_tr"])),
                     "n_test": int(len(p["x_te"])), "scheme": self.scheme, "energy": p["energy_desc"],
                     "noise_floor": p["floor"] if p["describes"] else None, "true_dynamics_mse": p["floor"],
                     "true_dynamics_test_mse": p["floor_test"], "energy_describes_data": p["describes"],
                     "energy_trend": p["trend"]},
            "settings": {"seed": ctx.seed, "steps": self.steps, "hidden_layers": list(self.hidden_layers),
                         "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                         "backend": self.backend, "models": list(self.models),
                         "units": {"center": center.tolist(), "scale": scale.tolist(), "tau": tau}},
            "models": results,
            "seconds_eval": seconds_eval,
        }

    def report(self, res: dict) -> str:
        return _data_report(res, [f for f in res["files"] if f.endswith(".png")], self.models)

    def summary(self, res: dict) -> list[str]:
        lines = []
        for kind in self.models:
            r = res["models"][kind]
            line = f"  {MODEL_NAMES[kind]:16s} test MSE {pm(r['test'])}  rollout MSE {fmt(r['rollout_mse_mean'])}"
            if "energy_mse_mean" in r:
                line += f"  energy MSE {fmt(r['energy_mse_mean'])}"
            lines.append(line)
        return lines


class LNNData(HNNData):
    """`innergrad experiment lnn --data FILE`: the same run with the state read as `(q, q')` and an LNN."""

    name = "lnn-data"
    cli = "lnn"
    default_models = ("baseline", "lnn")


def run_hnn_data(data: str | Path, out: str | Path | None = None, seed: int = 0, quiet: bool = False,
                 threads: int | None = 1, **options) -> dict:
    """`HNNData(data, **options)` through the runner (`out`, `seed`, `quiet`, `threads` as `run`)."""
    return run(HNNData(data, **options), out=out, seed=seed, quiet=quiet, threads=threads)


# ---------------------------------------------------------------- plots and report


def _plot_phase(out: Path, exp: HNNData, p: dict, roll: dict, dense: dict, k: int) -> str:
    Figure = optional("matplotlib.figure").Figure
    n = len(exp.state) // 2
    names = ("truth", *exp.models)
    fig = Figure(figsize=(3.7 * len(names), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharex=True, sharey=True))
    truth = roll["truths"][k]
    for ax, name in zip(axes, names):
        ax.scatter(p["train"].x[:, 0], p["train"].x[:, n], s=3, c="0.85", label="training data")
        ax.plot(truth[:, 0], truth[:, n], ".", color="black", ms=3, label="measured (test)")
        if name != "truth":
            path = dense[name]
            ax.plot(path[:, 0], path[:, n], color=COLORS[name], lw=1.2, label=f"{MODEL_NAMES[name]} rollout")
        ax.plot(truth[0, 0], truth[0, n], "o", color="black", ms=5)
        ax.set_title("Measured test trajectory" if name == "truth" else MODEL_NAMES[name])
        ax.set_xlabel(exp.state[0])
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=2, frameon=False)
    axes[0].set_ylabel(exp.state[n])
    fig.suptitle(f"Phase portrait: rollouts from the first state of test trajectory {p['test'].ids[k]!s}")
    save_figure(fig, out, "phase_portrait.png")
    return "phase_portrait.png"


def _plot_energy(out: Path, exp: HNNData, p: dict, roll: dict, dense: dict, t_dense: np.ndarray, models: dict,
                 k: int) -> str:
    Figure = optional("matplotlib.figure").Figure
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    t, truth, energy_fn = roll["times"][k], roll["truths"][k], p["energy_fn"]
    if energy_fn is not None:
        ax.plot(t, energy_fn(truth), ".", color="black", ms=3, label="measured states")
        for name in exp.models:
            ax.plot(t_dense, energy_fn(dense[name]), color=COLORS[name], lw=1.6, label=MODEL_NAMES[name])
        ax.set_ylabel("true energy E(x)")
    elif "hnn" in models:
        hnn = models["hnn"]
        with torch.no_grad():
            for name, tt, path in (("truth", t, truth), ("hnn", t_dense, dense["hnn"])):
                h = hnn.hamiltonian(torch.from_numpy(np.nan_to_num(path))).numpy()
                ax.plot(tt, h, color=COLORS[name], lw=1.6,
                        label="learned H on the measured states" if name == "truth" else "learned H on the HNN rollout")
        ax.set_ylabel("learned H (no true energy given)")
    ax.set_xlabel("time")
    ax.set_title(f"Energy along test trajectory {p['test'].ids[k]!s}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False)
    save_figure(fig, out, "energy.png")
    return "energy.png"


def _plot_data(out: Path, exp: HNNData, p: dict, models: dict, roll: dict, hists: dict) -> list[str]:
    k = 0  # the first test trajectory
    times, truth = roll["times"][k], roll["truths"][k]
    # Dense rollouts for the figures (the metrics use the file's own time stamps).
    t_dense = np.linspace(times[0], times[-1], 40 * len(times))
    dense = {name: model_paths(models[name], truth[:1], (t_dense[0], t_dense[-1]), t_dense, 1e-10)[0]
             for name in exp.models}
    files = [_plot_phase(out, exp, p, roll, dense, k), _plot_energy(out, exp, p, roll, dense, t_dense, models, k)]
    if len(exp.state) == 2 and "hnn" in models:
        files.append(plot_hamiltonian_contours(out, models["hnn"], p["energy_fn"], exp.d.x, exp.state,
                                               "learned H beside the true energy"))
    files.append(plot_training(out, hists, p["floor"] if p["describes"] else None, "training on the measured data"))
    return files


def _model_rows(m: dict, kinds: Sequence[str]) -> list[str]:
    rows = []
    for kind in kinds:
        r = m[kind]
        cells = [MODEL_NAMES[kind], fmt(r["rollout_mse_mean"]),
                 fmt(r["energy_mse_mean"]) if "energy_mse_mean" in r else "n/a", pm(r["test"]), pm(r["train"]),
                 fmt(r.get("h_spread_rollout_mean")) if kind == "hnn" else "n/a", f"{r['train_seconds']:.1f} s"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _physics_lines(dd: dict, m: dict) -> list[str]:
    """What the data are (energy conserved or not) and whether the true dynamics make a noise floor."""
    lines = []
    if dd.get("energy_trend"):
        lines.append(f"- **What the data are.** {describe(dd['energy_trend'], [k for k in m if k != 'data'])}")
    floor, raw = dd["noise_floor"], dd.get("true_dynamics_test_mse")
    if floor is not None:
        lines.append(f"- Noise floor of the dx/dt MSE: {fmt(floor)} (train) / {fmt(raw)} (test), the error the true "
                     "dynamics (J grad E from the energy expression) make against these finite-difference targets, "
                     "in the units of the models' dx/dt errors.")
    elif raw is not None:
        best = min(m[k]["test"][0] for k in m if k != "data")
        lines.append(f"- No noise floor: the dynamics of the given energy (J grad E) miss the targets by "
                     f"{fmt(dd['true_dynamics_mse'])} (train) / {fmt(raw)} (test), more than the best model does "
                     f"(test {fmt(best)}), so the given energy does not describe these data (friction, a drive, or "
                     "another energy).")
    return lines


def _data_report(res: dict, files: list[str], kinds: Sequence[str]) -> str:
    dd, s, m = res["data"], res["settings"], res["models"]
    best = min(kinds, key=lambda k: m[k]["rollout_mse_mean"])
    lines = [
        f"# {' vs '.join(MODEL_NAMES[k] for k in kinds)} on your trajectories", "",
        f"Reproduce: `{res['command']}`", "", f"{res['versions']}. Wall time {res['seconds_total']:.0f} s.", "",
        "## Results", "",
        f"Data: `{dd['file']}`, {dd['rows']} rows in {dd['trajectories']} "
        f"trajector{'y' if dd['trajectories'] == 1 else 'ies'}; "
        f"split: {dd['split']}; {dd['n_train']} train / {dd['n_test']} test derivative samples "
        f"(`ig.data.time_derivative`, scheme `{dd['scheme']}`).", "",
        *_physics_lines(dd, m), "",
        f"Headline: the rollout state error over the test window; lowest here: **{MODEL_NAMES[best]}** "
        f"({fmt(m[best]['rollout_mse_mean'])}).", "",
        "| Model | Rollout state MSE | Energy MSE | Test MSE of dx/dt | Train MSE of dx/dt | Learned-H spread "
        "| Train time |",
        "|---|---|---|---|---|---|---|",
        *_model_rows(m, kinds), "",
        "- Rollouts: from each test trajectory's first state, integrated with `solve_ivp` (rtol 1e-10) over its "
        "own time stamps; state MSE by `ig.metrics.rollout_mse`, averaged over the test trajectories.",
        ("- Energy MSE (`ig.metrics.energy_mse`, the HNN paper's definition): the mean over time of "
         f"(E(model path) - E(measured path))^2 with the true energy {dd['energy']}."
         if dd["energy"] else "- Energy MSE: n/a (give --energy-column or --energy to compute it)."),
        "- dx/dt errors: mean over rows of the squared error (averaged over state dimensions), ± standard error.",
    ]
    if "hnn" in m:
        lines.append(
            "- Learned-H spread (`ig.metrics.h_spread`): the std over time of the HNN's learned H along its own "
            f"rollouts (integrator drift; {fmt(m['hnn']['h_spread_rollout_mean'])}) and along the measured test "
            f"paths (model error plus measurement noise; {fmt(m['hnn']['h_spread_data_mean'])}), in the data's "
            "energy units.")
    lines += [
        "", "## Protocol", "",
        "- States standardised (one scale for all positions, one for all momenta, time rescaled so that dx/dt ~ 1: "
        "structure-preserving for the HNN); every model sees the same data.",
        f"- Models: MLP {len(s['units']['center'])} -> {' -> '.join(map(str, s['hidden_layers']))} -> dim (baseline) "
        f"or -> 1 (HNN's H; the D-HNN's H and D), tanh, orthogonal init; the LNN's L softplus, on (q, q') with "
        f"the second half of the state read as velocities; torch seed {s['seed']}.",
        f"- Training: `ig.train.fit`, Adam lr {s['lr']:g}, L2 weight decay {s['weight_decay']:g}, "
        f"{'full batch' if s['batch_size'] is None else 'minibatches of ' + str(s['batch_size'])}, {s['steps']} steps, "
        "loss MSE of dx/dt.",
        "", "## Plots", "", *[f"![{f[:-4]}]({f})" for f in files], "",
    ]
    return "\n".join(lines)
