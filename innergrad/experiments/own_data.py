"""The HNN and force-field experiments on the user's own measurements (`--data FILE`).

`run_hnn_data`: trajectories `t, q..., p...` from a CSV or `.npz` file; derivatives by
`ig.data.time_derivative`; a baseline MLP and an HNN trained on the same standardised data; from
each test trajectory's first state a rollout over its own time stamps; `ig.metrics` on the rollouts.

`run_forces_data`: positions with energies and/or forces; an `ig.ConservativeField` fitted to them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import InnergradError
from ..core.files import write_atomic, write_json
from ..core.mlp import MLP
from ..data.trajectories import Trajectories, load_trajectories, time_derivative
from ..models.conservative import ConservativeField
from ..models.hamiltonian import HamiltonianNet
from ..train import metrics
from . import hnn as base

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


def _units(x: np.ndarray, dx: np.ndarray, canonical: bool) -> tuple[np.ndarray, np.ndarray, float]:
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


def _split(d: Trajectories, test_fraction: float | None, test_trajectories) -> tuple[Trajectories, Trajectories, str]:
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


def _derivatives(d: Trajectories, scheme: str, who: str):
    try:
        return time_derivative(d.t, d.x, scheme=scheme, trajectory=d.trajectory, return_rows=True)
    except ValueError as e:
        raise InnergradError(f"{who} data: {e}") from None


def _energy_function(d: Trajectories, all_data: Trajectories, expression: str | None, state: Sequence[str]):
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
    interp = base._optional("scipy.interpolate").RBFInterpolator(
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


def _true_dynamics(energy_fn, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """`J grad E` by central differences of the true energy (for the noise floor)."""
    n = x.shape[1] // 2
    g = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[i] = h
        g[:, i] = (energy_fn(x + e) - energy_fn(x - e)) / (2 * h)
    return np.concatenate((g[:, n:], -g[:, :n]), 1)


def run_hnn_data(
    data: str | Path,
    time_column: str = "t",
    state: Sequence[str] = ("q", "p"),
    trajectory: str | None = None,
    test_fraction: float | None = None,
    test_trajectories: Sequence[str] | None = None,
    energy_column: str | None = None,
    energy: str | None = None,
    scheme: str = "central",
    out: str | Path | None = None,
    steps: int = 2000,
    seed: int = 0,
    hidden_layers: Sequence[int] = (200, 200),
    weight_decay: float = 1e-4,
    lr: float = 1e-3,
    batch_size: int | None = None,
    backend: str = "auto",
    quiet: bool = False,
    threads: int | None = 1,
) -> dict:
    """Train the baseline and the HNN on the trajectories in `data`; report, plot, return the results.

    Arguments as for `innergrad experiment hnn --data` (`state`: position columns first, then the
    momenta). The defaults follow the paper's training (Adam, lr 1e-3, L2 weight decay 1e-4, 2000
    full-batch steps, MLP 200-200 tanh).
    """
    base._check_positive(steps, "steps (--steps)", allow_none=False)
    base._check_positive(threads, "threads (--threads)")
    base._check_positive(batch_size, "batch_size (--batch-size)")
    hidden_layers = tuple(hidden_layers)
    for w in hidden_layers or (0,):
        base._check_positive(w, "each hidden layer width", allow_none=False)
    state = tuple(state)
    if len(state) < 2 or len(state) % 2:
        raise InnergradError(f"--state needs an even number of columns, the positions then the momenta "
                        f"(e.g. q,p or x,y,px,py), got {list(state)}")
    try:
        d = load_trajectories(data, time=time_column, state=state, trajectory=trajectory,
                              energy_column=energy_column, energy=energy)
    except ValueError as e:
        raise InnergradError(str(e)) from None
    out = base._out_dir(out, f"runs/hnn-{Path(data).stem}")
    t_start = time.perf_counter()
    train, test, split_desc = _split(d, test_fraction, test_trajectories)
    x_tr, dx_tr, _ = _derivatives(train, scheme, "training")
    x_te, dx_te, _ = _derivatives(test, scheme, "test")
    center, scale, tau = _units(x_tr, dx_tr, canonical=True)
    energy_fn, energy_desc = _energy_function(test, d, energy, state)
    floor = None
    if energy is not None:  # the error the true dynamics make against these targets
        floor = float(np.mean((_true_dynamics(energy_fn, x_tr) - dx_tr) ** 2))

    def std(a, b):
        return (torch.tensor((a - center) / scale, dtype=torch.float32),
                torch.tensor(b * tau / scale, dtype=torch.float32))

    xs, dxs = std(x_tr, dx_tr)
    xts, dxts = std(x_te, dx_te)
    dim = len(state)
    models, hists, results = {}, {}, {}
    with base._Threads(threads):
        for kind in ("baseline", "hnn"):
            torch.manual_seed(seed)
            net = (base.BaselineMLP(dim, hidden_layers, "tanh") if kind == "baseline"
                   else HamiltonianNet(dim, hidden_layers, "tanh", backend=backend))
            hists[kind] = base._train(net, xs, dxs, (xts, dxts), steps=steps, lr=lr, weight_decay=weight_decay,
                                      batch_size=batch_size, seed=seed, quiet=quiet, desc=f"{kind}")
            model = InUnits(net, center, scale, tau)
            with torch.no_grad():
                m64 = InUnits(net, center, scale, tau).double()
                pred_tr = m64(torch.from_numpy(x_tr)).numpy()
                pred_te = m64(torch.from_numpy(x_te)).numpy()
            results[kind] = {"train": base._mse_se(torch.from_numpy(pred_tr), torch.from_numpy(dx_tr)),
                             "test": base._mse_se(torch.from_numpy(pred_te), torch.from_numpy(dx_te)),
                             "train_seconds": hists[kind]["seconds"]}
            models[kind] = model
        # Rollouts from each test trajectory's first state over its own time stamps.
        t_eval0 = time.perf_counter()
        paths: dict[str, list] = {k: [] for k in models}
        truths, times = [], []
        for tid in test.ids:
            sel = test.trajectory == tid
            t_i, x_i = test.t[sel], test.x[sel]
            truths.append(x_i)
            times.append(t_i)
            for kind, model in models.items():
                paths[kind].append(base._model_paths(model, x_i[:1], (t_i[0], t_i[-1]), t_i, 1e-10)[0])
        for kind in models:
            r = results[kind]
            r["rollout_mse"] = [_finite(metrics.rollout_mse(p, x)) for p, x in zip(paths[kind], truths)]
            if energy_fn is not None:
                r["energy_mse"] = [_finite(metrics.energy_mse(energy_fn, p, x)) for p, x in zip(paths[kind], truths)]
        hnn = models["hnn"].double()
        results["hnn"]["h_spread_rollout"] = [_finite(metrics.h_spread(hnn, p)) for p in paths["hnn"]]
        results["hnn"]["h_spread_data"] = [_finite(metrics.h_spread(hnn, x)) for x in truths]
        if d.energy is not None or energy_fn is not None:
            e_data = [energy_fn(x) for x in truths]
            results["data"] = {"energy_spread": [float(np.std(e)) for e in e_data]}
        seconds_eval = time.perf_counter() - t_eval0
        files = _plot_data(out, d, train, test, models, paths, truths, times, energy_fn, hists, floor, state)
        versions = base._versions()
    for kind in models:
        for key in ("rollout_mse", "energy_mse"):
            if key in results[kind]:
                results[kind][key + "_mean"] = float(np.mean(results[kind][key]))
    for key in ("h_spread_rollout", "h_spread_data"):
        results["hnn"][key + "_mean"] = float(np.mean(results["hnn"][key]))
    command = _data_command(data, time_column, state, trajectory, test_fraction, test_trajectories, energy_column,
                            energy, scheme, steps, seed, hidden_layers)
    res = {
        "experiment": "hnn-data",
        "command": command,
        "versions": versions,
        "data": {"file": str(data), "rows": int(len(d.t)), "trajectories": len(d.ids), "split": split_desc,
                 "train_trajectories": [str(i) for i in train.ids], "test_trajectories": [str(i) for i in test.ids],
                 "n_train": int(len(x_tr)), "n_test": int(len(x_te)), "scheme": scheme,
                 "energy": energy_desc, "noise_floor": floor},
        "settings": {"seed": seed, "steps": steps, "hidden_layers": list(hidden_layers), "lr": lr,
                     "weight_decay": weight_decay, "batch_size": batch_size, "backend": backend,
                     "units": {"center": center.tolist(), "scale": scale.tolist(), "tau": tau}},
        "models": results,
        "seconds_eval": seconds_eval,
        "seconds_total": time.perf_counter() - t_start,
        "files": ["report.md", "results.json", *files],
    }
    write_atomic(out / "report.md", _data_report(res, files))
    write_json(out / "results.json", res)
    if not quiet:
        print(f"HNN vs baseline on {data} ({out / 'report.md'})")
        for kind in ("baseline", "hnn"):
            r = results[kind]
            line = (f"  {base.MODEL_NAMES[kind]:16s} test MSE {base._pm(r['test'])}  rollout MSE "
                    f"{base._fmt(r['rollout_mse_mean'])}")
            if "energy_mse_mean" in r:
                line += f"  energy MSE {base._fmt(r['energy_mse_mean'])}"
            print(line)
    return res


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else math.inf


def _data_command(data, time_column, state, trajectory, test_fraction, test_trajectories, energy_column, energy,
                  scheme, steps, seed, hidden_layers) -> str:
    parts = [f"innergrad experiment hnn --data {data} --time {time_column} --state {','.join(state)}"]
    if trajectory:
        parts.append(f"--trajectory {trajectory}")
    if test_trajectories:
        parts.append("--test-trajectories " + " ".join(map(str, test_trajectories)))
    elif test_fraction is not None:
        parts.append(f"--test-fraction {test_fraction:g}")
    if energy_column:
        parts.append(f"--energy-column {energy_column}")
    if energy:
        parts.append(f"--energy '{energy}'")
    if scheme != "central":
        parts.append(f"--scheme {scheme}")
    parts.append(f"--steps {steps} --seed {seed}")
    if tuple(hidden_layers) != (200, 200):
        parts.append("--hidden " + " ".join(map(str, hidden_layers)))
    return " ".join(parts)


def _plot_data(out: Path, d, train, test, models, paths, truths, times, energy_fn, hists, floor, state) -> list[str]:
    Figure = base._optional("matplotlib.figure").Figure
    colors = base.COLORS
    files = []
    k = 0  # the first test trajectory
    n = len(state) // 2
    qn, pn = state[0], state[n]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    truth = truths[k]
    # Dense rollouts for the figures (the metrics use the file's own time stamps).
    t_dense = np.linspace(times[k][0], times[k][-1], 40 * len(times[k]))
    dense = {name: base._model_paths(models[name], truth[:1], (t_dense[0], t_dense[-1]), t_dense, 1e-10)[0]
             for name in ("baseline", "hnn")}
    for ax, name in zip(axes, ("truth", "baseline", "hnn")):
        ax.scatter(train.x[:, 0], train.x[:, n], s=3, c="0.85", label="training data")
        ax.plot(truth[:, 0], truth[:, n], ".", color="black", ms=3, label="measured (test)")
        if name != "truth":
            p = dense[name]
            ax.plot(p[:, 0], p[:, n], color=colors[name], lw=1.2, label=f"{base.MODEL_NAMES[name]} rollout")
        ax.plot(truth[0, 0], truth[0, n], "o", color="black", ms=5)
        ax.set_title("Measured test trajectory" if name == "truth" else base.MODEL_NAMES[name])
        ax.set_xlabel(qn)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=2, frameon=False)
    axes[0].set_ylabel(pn)
    fig.suptitle(f"Phase portrait: rollouts from the first state of test trajectory {test.ids[k]!s}")
    fig.savefig(out / "phase_portrait.png", dpi=110)
    files.append("phase_portrait.png")

    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    t = times[k]
    if energy_fn is not None:
        ax.plot(t, energy_fn(truth), ".", color="black", ms=3, label="measured states")
        for name in ("baseline", "hnn"):
            ax.plot(t_dense, energy_fn(dense[name]), color=colors[name], lw=1.6, label=base.MODEL_NAMES[name])
        ax.set_ylabel("true energy E(x)")
    else:
        hnn = models["hnn"]
        with torch.no_grad():
            for name, tt, path in (("truth", t, truth), ("hnn", t_dense, dense["hnn"])):
                h = hnn.hamiltonian(torch.from_numpy(np.nan_to_num(path))).numpy()
                ax.plot(tt, h, color=colors[name], lw=1.6,
                        label="learned H on the measured states" if name == "truth" else "learned H on the HNN rollout")
        ax.set_ylabel("learned H (no true energy given)")
    ax.set_xlabel("time")
    ax.set_title(f"Energy along test trajectory {test.ids[k]!s}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False)
    fig.savefig(out / "energy.png", dpi=110)
    files.append("energy.png")

    if len(state) == 2:
        files.append(base.plot_hamiltonian_contours(out, models["hnn"], energy_fn, d.x, (qn, pn),
                                                    "learned H beside the true energy"))
    files.append(base.plot_training(out, hists, floor, "training on the measured data"))
    return files


def _data_report(res: dict, files: list[str]) -> str:
    dd, s, m = res["data"], res["settings"], res["models"]
    rows = []
    for kind in ("baseline", "hnn"):
        r = m[kind]
        cells = [base.MODEL_NAMES[kind], base._pm(r["train"]), base._pm(r["test"]), base._fmt(r["rollout_mse_mean"])]
        cells.append(base._fmt(r["energy_mse_mean"]) if "energy_mse_mean" in r else "n/a")
        cells.append(base._fmt(r.get("h_spread_rollout_mean")) if kind == "hnn" else "n/a")
        cells.append(f"{r['train_seconds']:.1f} s")
        rows.append("| " + " | ".join(cells) + " |")
    floor = dd["noise_floor"]
    lines = [
        "# HNN vs baseline on your trajectories",
        "",
        f"Reproduce: `{res['command']}`",
        "",
        f"{res['versions']}. Wall time {res['seconds_total']:.0f} s.",
        "",
        "## Results",
        "",
        f"Data: `{dd['file']}`, {dd['rows']} rows in {dd['trajectories']} "
        f"trajector{'y' if dd['trajectories'] == 1 else 'ies'}; "
        f"split: {dd['split']}; {dd['n_train']} train / {dd['n_test']} test derivative samples "
        f"(`ig.data.time_derivative`, scheme `{dd['scheme']}`).",
        "",
        "| Model | Train MSE of dx/dt | Test MSE of dx/dt | Rollout state MSE | Energy MSE | Learned-H spread "
        "| Train time |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "- dx/dt errors: mean over rows of the squared error (averaged over state dimensions), ± standard error.",
        "- Rollouts: from each test trajectory's first state, integrated with `solve_ivp` (rtol 1e-10) over its "
        "own time stamps; state MSE by `ig.metrics.rollout_mse`, averaged over the test trajectories.",
        ("- Energy MSE (`ig.metrics.energy_mse`, the HNN paper's definition): the mean over time of "
         f"(E(model path) - E(measured path))^2 with the true energy {dd['energy']}."
         if dd["energy"] else "- Energy MSE: n/a (give --energy-column or --energy to compute it)."),
        "- Learned-H spread (`ig.metrics.h_spread`): the std over time of the HNN's learned H along its own "
        f"rollouts (integrator drift; {base._fmt(m['hnn']['h_spread_rollout_mean'])}) and along the measured test "
        f"paths (model error plus measurement noise; {base._fmt(m['hnn']['h_spread_data_mean'])}), in the data's "
        "energy units.",
    ]
    if "data" in m:
        lines.append(f"- The true energy itself spreads by {base._fmt(float(np.mean(m['data']['energy_spread'])))} "
                     "(std over time) along the measured test paths: the measurement noise level.")
    if floor is not None:
        lines.append(f"- Noise floor of the dx/dt MSE: {base._fmt(floor)}, the error the true dynamics "
                     "(J grad E from the energy expression) make against these finite-difference targets.")
    lines += [
        "",
        "## Protocol",
        "",
        "- States standardised (one scale for all positions, one for all momenta, time rescaled so that dx/dt ~ 1: "
        "structure-preserving for the HNN); both models see the same data.",
        f"- Models: MLP {len(s['units']['center'])} -> {' -> '.join(map(str, s['hidden_layers']))} -> dim (baseline) "
        f"or -> 1 (HNN's H), tanh, orthogonal init; torch seed {s['seed']}.",
        f"- Training: `ig.train.fit`, Adam lr {s['lr']:g}, L2 weight decay {s['weight_decay']:g}, "
        f"{'full batch' if s['batch_size'] is None else 'minibatches of ' + str(s['batch_size'])}, {s['steps']} steps, "
        "loss MSE of dx/dt.",
        "",
        "## Plots",
        "",
        *[f"![{f[:-4]}]({f})" for f in files],
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- force field on the user's data


def run_forces_data(
    data: str | Path,
    positions: Sequence[str] = ("x", "y"),
    energy_column: str | None = None,
    forces: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    energy_weight: float = 1.0,
    out: str | Path | None = None,
    steps: int = 3000,
    seed: int = 0,
    hidden_layers: Sequence[int] = (128, 128),
    lr: float = 3e-3,
    quiet: bool = False,
    threads: int | None = 1,
) -> dict:
    """Fit an `ig.ConservativeField` to positions with energies and/or forces from a CSV or `.npz`.

    A random `test_fraction` of the rows (numpy seed `seed`) is held out. Loss: MSE(forces) /
    var(forces) + `energy_weight` x MSE(energy) / var(energy), over what the file gives. Energies
    are compared up to a constant where only forces were given.
    """
    base._check_positive(steps, "steps (--steps)", allow_none=False)
    base._check_positive(threads, "threads (--threads)")
    positions = tuple(positions)
    if not positions:
        raise InnergradError("--positions names at least one column, e.g. x,y")
    forces = tuple(forces) if forces else None
    if forces is not None and len(forces) != len(positions):
        raise InnergradError(f"--forces needs one column per position ({len(positions)}: {list(positions)}), "
                        f"got {list(forces)}")
    if energy_column is None and forces is None:
        raise InnergradError("give the targets: --energy-column E and/or --forces fx,fy")
    if not (isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1):
        raise InnergradError(f"--test-fraction must be in [0, 1), got {test_fraction!r}")
    try:
        from ..data.trajectories import _numeric, _read_columns

        path = Path(data)
        if not path.is_file():
            raise ValueError(f"data file {str(path)!r} does not exist or is not a file; give a .csv or .npz path")
        cols = _read_columns(path)
        x = np.stack([_numeric(cols, c, "position", path) for c in positions], 1)
        e = _numeric(cols, energy_column, "energy", path) if energy_column else None
        f = np.stack([_numeric(cols, c, "force", path) for c in forces], 1) if forces else None
    except ValueError as err:
        raise InnergradError(str(err)) from None
    n = len(x)
    if n < 5:
        raise InnergradError(f"{data}: {n} rows; a force field needs at least 5")
    out = base._out_dir(out, f"runs/forces-{Path(data).stem}")
    t_start = time.perf_counter()
    rng = np.random.RandomState(seed)
    perm = rng.permutation(n)
    n_test = int(round(test_fraction * n))
    te, tr = perm[:n_test], perm[n_test:]
    center, width = x[tr].mean(0), np.where(x[tr].std(0) > 0, x[tr].std(0), 1.0)
    e_scale = float(e[tr].std()) if e is not None and e[tr].std() > 0 else (
        float(np.sqrt((f[tr] ** 2).mean()) * width.mean()) if f is not None else 1.0)
    e_shift = float(e[tr].mean()) if e is not None else 0.0
    with base._Threads(threads):
        torch.manual_seed(seed)
        energy = base.StandardizedEnergy(MLP(len(positions), hidden_layers, "softplus"), torch.tensor(center),
                                         torch.tensor(width), scale=e_scale, shift=e_shift)
        field = ConservativeField(energy)
        tt = lambda a: None if a is None else torch.tensor(a, dtype=torch.float32)  # noqa: E731
        fw = 1.0 / float(f[tr].var()) if f is not None else 0.0
        ew = (energy_weight / float(e[tr].var())) if e is not None and e[tr].var() > 0 else 0.0
        hist = base.train_field(field, tt(x[tr]), tt(None if f is None else f[tr]), tt(None if e is None else e[tr]),
                                fw, ew, steps, lr, seed, quiet)
        with torch.no_grad():
            e_pred, f_pred = field(torch.tensor(x, dtype=torch.float32))
        e_pred, f_pred = e_pred.double().numpy(), f_pred.double().numpy()
        m = {}
        for split, idx in (("train", tr), ("test", te)):
            if len(idx) == 0:
                continue
            if e is not None:
                off = 0.0 if energy_weight > 0 else float(np.mean(e_pred[idx] - e[idx]))
                m[f"{split}_energy_rmse"] = float(np.sqrt(np.mean((e_pred[idx] - off - e[idx]) ** 2)))
            if f is not None:
                df = f_pred[idx] - f[idx]
                m[f"{split}_force_rmse"] = float(np.sqrt(np.mean(df**2)))
                m[f"{split}_force_relative"] = float(np.sqrt((df**2).sum() / max((f[idx] ** 2).sum(), 1e-300)))
        if e is not None:
            m["energy_std"] = float(e.std())
        if f is not None:
            m["force_rms"] = float(np.sqrt((f**2).mean()))
        files = [base.plot_curve(out, hist, "Force-field training on your data")]
        versions = base._versions()
    res = {
        "experiment": "forces-data",
        "command": (f"innergrad experiment forces --data {data} --positions {','.join(positions)}"
                    + (f" --energy-column {energy_column}" if energy_column else "")
                    + (f" --forces {','.join(forces)}" if forces else "") + f" --steps {steps} --seed {seed}"),
        "versions": versions,
        "data": {"file": str(data), "rows": n, "n_train": int(len(tr)), "n_test": int(len(te))},
        "settings": {"steps": steps, "seed": seed, "hidden_layers": list(hidden_layers), "lr": lr,
                     "energy_weight": energy_weight, "test_fraction": test_fraction},
        "metrics": m,
        "seconds_total": time.perf_counter() - t_start,
        "files": ["report.md", "results.json", *files],
    }
    lines = [
        "# Conservative force field on your data", "", f"Reproduce: `{res['command']}`", "",
        f"{versions}. {res['seconds_total']:.1f} s.", "",
        f"{n} rows of `{data}`: {len(tr)} for training, {len(te)} held out (random, numpy seed {seed}). Forces are "
        "-dE/dx of the learned energy (`ig.ConservativeField`); "
        + ("energies are compared up to the constant that forces alone cannot fix." if energy_weight == 0 or e is None
           else "energies compared as given."),
        "", "| Quantity | Value |", "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v:.4g} |" for k, v in m.items()],
        "", *[f"![{x[:-4]}]({x})" for x in files], "",
    ]
    write_atomic(out / "report.md", "\n".join(lines))
    write_json(out / "results.json", res)
    if not quiet:
        print(f"Force field on {data} ({out / 'report.md'})")
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()))
    return res
