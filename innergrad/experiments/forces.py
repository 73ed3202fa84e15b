"""`innergrad experiment forces`: a `ConservativeField` learns an energy from forces.

`MuellerBrownForces`: the Mueller-Brown potential from noisy force samples, errors on a grid.
`ForcesData`: the user's positions with energies and/or forces (`--data FILE`).
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
from ..core.mlp import MLP
from ..models.conservative import ConservativeField
from .common import check_number, check_positive, check_widths, optional
from .mueller_brown import BOX, MINIMA, MuellerBrown
from .plots import plot_curve, save_figure
from .runner import Context, Experiment, run

Tensor = torch.Tensor


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


class FieldOutputs(nn.Module):
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

    h = fit(FieldOutputs(field), x, targets, steps=steps, lr=lr, loss=loss, seed=seed,
            callbacks=(LRSchedule(cosine),), progress=False if quiet else None)
    return {"step": list(h.steps), "loss": list(h.losses)}


def _mb_samples(rng: np.random.RandomState, n: int, e_max: float, mb: MuellerBrown) -> np.ndarray:
    (x0, x1), (y0, y1) = BOX
    out = []
    while sum(len(o) for o in out) < n:
        pts = rng.rand(4 * n, 2) * [x1 - x0, y1 - y0] + [x0, y0]
        with torch.no_grad():
            e = mb(torch.from_numpy(pts)).numpy()
        out.append(pts[e < e_max])
    return np.concatenate(out)[:n]


def _plot_forces(out: Path, gx, gy, e_true, e_pred, mask, x_np, hist, e_max) -> list[str]:
    Figure = optional("matplotlib.figure").Figure
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
    save_figure(fig, out, "energy_contours.png")

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


def _grid_errors(mb: MuellerBrown, field: ConservativeField, grid: int, e_max: float) -> tuple[dict, dict]:
    """Energy (up to the constant forces cannot fix) and force errors on a grid below `e_max`."""
    (x0, x1), (y0, y1) = BOX
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
    m = {
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_std_true": float(e_true[mask].std()),
        "energy_offset": offset,
        "force_rmse": float(np.sqrt(np.mean(df**2))),
        "force_rms_true": float(np.sqrt(np.mean(f_true[mask] ** 2))),
        "force_relative": float(np.sqrt((df**2).sum() / (f_true[mask] ** 2).sum())),
    }
    e_min_idx = int(np.argmin(np.where(mask, e_pred, np.inf)))
    m["learned_global_min"] = [float(pts[e_min_idx, 0]), float(pts[e_min_idx, 1])]
    shape = gx.shape
    plot = {"gx": gx, "gy": gy, "e_true": e_true.reshape(shape), "e_pred": (e_pred - offset).reshape(shape),
            "mask": mask.reshape(shape)}
    return m, plot


class MuellerBrownForces(Experiment):
    """Learn the Mueller-Brown potential from noisy forces with `ig.ConservativeField`.

    `samples` points uniform in the usual window with true energy below `e_max`; Gaussian noise of
    std `noise` x (RMS force of the samples) on each force component. The energy is an `ig.MLP`
    (softplus) on standardised inputs; loss = MSE(forces) / var(forces), plus `energy_weight` x
    MSE(energy) / var(energy) on noise-free energies when `energy_weight > 0`. Full batch Adam,
    learning rate `lr` decayed to 1e-5 (cosine). Errors are measured on a `grid` x `grid` grid below `e_max`;
    energies are compared up to the additive constant that forces cannot determine.
    """

    name = "forces"

    def __init__(self, steps: int = 3000, samples: int = 1000, noise: float = 0.1, energy_weight: float = 0.0,
                 e_max: float = 100.0, hidden_layers: Sequence[int] = (128, 128), grid: int = 120, lr: float = 3e-3):
        check_positive(steps, "steps (--steps)", allow_none=False)
        check_positive(samples, "samples (--samples)", allow_none=False)
        check_positive(grid, "grid", allow_none=False)
        check_number(noise, "noise (--noise)", strict=False, what="non-negative fraction of the RMS force")
        check_number(energy_weight, "energy_weight (--energy-weight)", strict=False, what="non-negative number")
        check_number(lr, "lr (--lr)", what="positive learning rate")
        hidden_layers = check_widths(hidden_layers)
        super().__init__(steps=steps, samples=samples, noise=noise, energy_weight=energy_weight, e_max=e_max,
                         hidden_layers=hidden_layers, grid=grid, lr=lr)
        self.steps, self.samples, self.noise, self.energy_weight = steps, samples, noise, energy_weight
        self.e_max, self.hidden_layers, self.grid, self.lr = e_max, hidden_layers, grid, lr

    def title(self, res: dict) -> str:
        return "Mueller-Brown force field"

    def command(self, seed: int) -> str:
        c = (f"innergrad experiment forces --steps {self.steps} --seed {seed} --samples {self.samples} "
             f"--noise {self.noise:g}")
        if self.energy_weight:
            c += f" --energy-weight {self.energy_weight:g}"
        if self.lr != 3e-3:
            c += f" --lr {self.lr:g}"
        return c

    def execute(self, ctx: Context) -> dict:
        mb = MuellerBrown()
        rng = ctx.rng()
        x_np = _mb_samples(rng, self.samples, self.e_max, mb)
        with torch.no_grad():
            e_np, (g_np,) = mb.value_and_input_grad(torch.from_numpy(x_np))
        e_np, f_np = e_np.numpy(), -g_np.numpy()
        noise_std = self.noise * float(np.sqrt((f_np**2).mean()))
        f_noisy = f_np + rng.randn(*f_np.shape) * noise_std

        ctx.seed_torch()
        (x0, x1), (y0, y1) = BOX
        center = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
        width = torch.tensor([(x1 - x0) / 2, (y1 - y0) / 2])
        energy = StandardizedEnergy(MLP(2, self.hidden_layers, "softplus"), center, width,
                                    scale=float(e_np.std()), shift=float(e_np.mean()))
        field = ConservativeField(energy)
        x = torch.tensor(x_np, dtype=torch.float32)
        f_t = torch.tensor(f_noisy, dtype=torch.float32)
        e_t = torch.tensor(e_np, dtype=torch.float32) if self.energy_weight > 0 else None
        fw, ew = 1.0 / float(f_noisy.var()), self.energy_weight / float(e_np.var())
        t_train = time.perf_counter()
        hist = train_field(field, x, f_t, e_t, fw, ew, self.steps, self.lr, ctx.seed, ctx.quiet)
        seconds_train = time.perf_counter() - t_train
        m, g = _grid_errors(mb, field, self.grid, self.e_max)
        m["noise_std"] = noise_std
        m["sample_force_rmse_noisy"] = float(np.sqrt(np.mean((f_noisy - f_np) ** 2)))
        for f in _plot_forces(ctx.out, g["gx"], g["gy"], g["e_true"], g["e_pred"], g["mask"], x_np, hist,
                              self.e_max):
            ctx.add_file(f)
        return {"settings": {"steps": self.steps, "seed": ctx.seed, "samples": self.samples, "noise": self.noise,
                             "energy_weight": self.energy_weight, "e_max": self.e_max,
                             "hidden_layers": list(self.hidden_layers), "grid": self.grid, "lr": self.lr},
                "metrics": m, "seconds_train": seconds_train}

    def report(self, res: dict) -> str:
        return _forces_report(res, [f for f in res["files"] if f.endswith(".png")])

    def summary(self, res: dict) -> list[str]:
        m = res["metrics"]
        return [f"  energy RMSE {m['energy_rmse']:.3g} (true energies span std {m['energy_std_true']:.3g}), "
                f"force RMSE {m['force_rmse']:.3g} (noise std {m['noise_std']:.3g}, "
                f"relative force error {m['force_relative']:.2%})"]


def run_forces(out: str | Path | None = None, steps: int = 3000, seed: int = 0, samples: int = 1000,
               noise: float = 0.1, energy_weight: float = 0.0, e_max: float = 100.0,
               hidden_layers: Sequence[int] = (128, 128), quiet: bool = False, threads: int | None = 1,
               grid: int = 120, lr: float = 3e-3) -> dict:
    """`MuellerBrownForces` through the runner (arguments as there; `out`, `seed`, `quiet`, `threads` as `run`)."""
    exp = MuellerBrownForces(steps=steps, samples=samples, noise=noise, energy_weight=energy_weight, e_max=e_max,
                             hidden_layers=hidden_layers, grid=grid, lr=lr)
    return run(exp, out=out, seed=seed, quiet=quiet, threads=threads)


def _read_targets(data, positions, energy_column, forces):
    from ..data.trajectories import _numeric, _read_columns

    try:
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"data file {str(path)!r} does not exist or is not a file; give a .csv or .npz path")
        cols = _read_columns(path)
        x = np.stack([_numeric(cols, c, "position", path) for c in positions], 1)
        e = _numeric(cols, energy_column, "energy", path) if energy_column else None
        f = np.stack([_numeric(cols, c, "force", path) for c in forces], 1) if forces else None
    except ValueError as err:
        raise InnergradError(str(err)) from None
    if len(x) < 5:
        raise InnergradError(f"{data}: {len(x)} rows; a force field needs at least 5")
    return x, e, f


def _split_errors(e, f, e_pred, f_pred, tr, te, energy_weight: float) -> dict:
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
    return m


class ForcesData(Experiment):
    """Fit an `ig.ConservativeField` to positions with energies and/or forces from a CSV or `.npz`.

    A random `test_fraction` of the rows (numpy seed `seed`) is held out. Loss: MSE(forces) /
    var(forces) + `energy_weight` x MSE(energy) / var(energy), over what the file gives. Energies
    are compared up to a constant where only forces were given.
    """

    name = "forces-data"

    def __init__(self, data: str | Path, positions: Sequence[str] = ("x", "y"), energy_column: str | None = None,
                 forces: Sequence[str] | None = None, test_fraction: float = 0.2, energy_weight: float = 1.0,
                 steps: int = 3000, hidden_layers: Sequence[int] = (128, 128), lr: float = 3e-3):
        check_positive(steps, "steps (--steps)", allow_none=False)
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
        hidden_layers = check_widths(hidden_layers)
        super().__init__(data=str(data), positions=positions, energy_column=energy_column, forces=forces,
                         test_fraction=test_fraction, energy_weight=energy_weight, steps=steps,
                         hidden_layers=hidden_layers, lr=lr)
        self.data, self.positions, self.energy_column, self.forces = data, positions, energy_column, forces
        self.test_fraction, self.energy_weight, self.steps = test_fraction, energy_weight, steps
        self.hidden_layers, self.lr = hidden_layers, lr
        self.x, self.e, self.f = _read_targets(data, positions, energy_column, forces)  # before any folder is made

    def default_out(self) -> str:
        return f"runs/forces-{Path(self.data).stem}"

    def inputs(self) -> list[tuple[str, str]]:
        return [("--data", str(self.data))]

    def title(self, res: dict) -> str:
        return f"Force field on {self.data}"

    def command(self, seed: int) -> str:
        return (f"innergrad experiment forces --data {self.data} --positions {','.join(self.positions)}"
                + (f" --energy-column {self.energy_column}" if self.energy_column else "")
                + (f" --forces {','.join(self.forces)}" if self.forces else "")
                + f" --steps {self.steps} --seed {seed}")

    def execute(self, ctx: Context) -> dict:
        x, e, f = self.x, self.e, self.f
        n = len(x)
        perm = ctx.rng().permutation(n)
        n_test = int(round(self.test_fraction * n))
        te, tr = perm[:n_test], perm[n_test:]
        center, width = x[tr].mean(0), np.where(x[tr].std(0) > 0, x[tr].std(0), 1.0)
        e_scale = float(e[tr].std()) if e is not None and e[tr].std() > 0 else (
            float(np.sqrt((f[tr] ** 2).mean()) * width.mean()) if f is not None else 1.0)
        e_shift = float(e[tr].mean()) if e is not None else 0.0
        ctx.seed_torch()
        energy = StandardizedEnergy(MLP(len(self.positions), self.hidden_layers, "softplus"), torch.tensor(center),
                                    torch.tensor(width), scale=e_scale, shift=e_shift)
        field = ConservativeField(energy)

        def tt(a):
            return None if a is None else torch.tensor(a, dtype=torch.float32)

        fw = 1.0 / float(f[tr].var()) if f is not None else 0.0
        ew = (self.energy_weight / float(e[tr].var())) if e is not None and e[tr].var() > 0 else 0.0
        hist = train_field(field, tt(x[tr]), tt(None if f is None else f[tr]), tt(None if e is None else e[tr]),
                           fw, ew, self.steps, self.lr, ctx.seed, ctx.quiet)
        with torch.no_grad():
            e_pred, f_pred = field(torch.tensor(x, dtype=torch.float32))
        m = _split_errors(e, f, e_pred.double().numpy(), f_pred.double().numpy(), tr, te, self.energy_weight)
        ctx.add_file(plot_curve(ctx.out, hist, "Force-field training on your data"))
        return {"data": {"file": str(self.data), "rows": n, "n_train": int(len(tr)), "n_test": int(len(te))},
                "settings": {"steps": self.steps, "seed": ctx.seed, "hidden_layers": list(self.hidden_layers),
                             "lr": self.lr, "energy_weight": self.energy_weight, "test_fraction": self.test_fraction},
                "metrics": m}

    def report(self, res: dict) -> str:
        d, m = res["data"], res["metrics"]
        compared = ("energies are compared up to the constant that forces alone cannot fix."
                    if self.energy_weight == 0 or self.e is None else "energies compared as given.")
        lines = [
            "# Conservative force field on your data", "", f"Reproduce: `{res['command']}`", "",
            f"{res['versions']}. {res['seconds_total']:.1f} s.", "",
            f"{d['rows']} rows of `{self.data}`: {d['n_train']} for training, {d['n_test']} held out (random, numpy "
            f"seed {res['settings']['seed']}). Forces are -dE/dx of the learned energy (`ig.ConservativeField`); "
            + compared,
            "", "| Quantity | Value |", "|---|---|",
            *[f"| {k.replace('_', ' ')} | {v:.4g} |" for k, v in m.items()],
            "", *[f"![{x[:-4]}]({x})" for x in res["files"] if x.endswith(".png")], "",
        ]
        return "\n".join(lines)

    def summary(self, res: dict) -> list[str]:
        return ["  " + ", ".join(f"{k} {v:.3g}" for k, v in res["metrics"].items())]


def run_forces_data(data: str | Path, positions: Sequence[str] = ("x", "y"), energy_column: str | None = None,
                    forces: Sequence[str] | None = None, test_fraction: float = 0.2, energy_weight: float = 1.0,
                    out: str | Path | None = None, steps: int = 3000, seed: int = 0,
                    hidden_layers: Sequence[int] = (128, 128), lr: float = 3e-3, quiet: bool = False,
                    threads: int | None = 1) -> dict:
    """`ForcesData` through the runner (arguments as there; `out`, `seed`, `quiet`, `threads` as `run`)."""
    exp = ForcesData(data, positions=positions, energy_column=energy_column, forces=forces,
                     test_fraction=test_fraction, energy_weight=energy_weight, steps=steps,
                     hidden_layers=hidden_layers, lr=lr)
    return run(exp, out=out, seed=seed, quiet=quiet, threads=threads)
