"""Plots shared by the experiments (matplotlib's object API: no global figure state, safe in workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.files import write_figure
from .common import COLORS, MODEL_NAMES, float64_copy, optional


def save_figure(fig, out: Path, name: str) -> str:
    """A figure as `out/name` (PNG, 110 dpi) through `core/files.write_figure`: created exclusively, atomically."""
    write_figure(fig, out / name, option="the plot", dpi=110)
    return name


def segments_by_time(ax, path: np.ndarray, i: int, j: int, cmap, label: str, lw: float = 1.8):
    """A path drawn in colours running with time (early light, late dark): a spiral reads as one."""
    LineCollection = optional("matplotlib.collections").LineCollection
    pts = path[:, [i, j]]
    ok = np.all(np.isfinite(pts), 1)
    pts = pts[ok]
    segs = np.stack((pts[:-1], pts[1:]), 1)
    lc = LineCollection(segs, cmap=cmap, linewidths=lw)
    lc.set_array(np.linspace(0.25, 1, len(segs)))  # from 0.25: the earliest stretch stays visible
    lc.set_clim(0, 1)
    ax.add_collection(lc)
    ax.plot([], [], color=optional("matplotlib").colormaps[cmap](0.75), lw=lw, label=label)
    return lc


def plot_hamiltonian_contours(out: Path, hnn: nn.Module, energy_fn, x_data: np.ndarray, names, title: str,
                              name: str = "hamiltonian.png") -> str:
    """Learned H contours beside the true H over the data's phase-space window (the paper's Fig. 1)."""
    Figure = optional("matplotlib.figure").Figure
    lo, hi = x_data.min(0), x_data.max(0)
    pad = 0.15 * (hi - lo)
    gq, gp = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 80),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 80))
    grid = np.stack((gq.ravel(), gp.ravel()), 1)
    m: Any = float64_copy(hnn)  # a model with a `hamiltonian` method
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
    save_figure(fig, out, name)
    return name


def plot_training(out: Path, hists: dict, floor: float | None, title: str) -> str:
    """Train and test MSE of dx/dt against steps, with the noise floor marked where it is known."""
    Figure = optional("matplotlib.figure").Figure
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
    save_figure(fig, out, "training.png")
    return "training.png"


def plot_curve(out: Path, hist: dict, title: str) -> str:
    """The training loss against steps (log scale), as `training.png`."""
    Figure = optional("matplotlib.figure").Figure
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(hist["step"], hist["loss"], label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("normalised loss (MSE / variance)")
    ax.set_title(title)
    ax.legend(loc="upper right", frameon=False)
    save_figure(fig, out, "training.png")
    return "training.png"


def plot_energy_error(out: Path, t: np.ndarray, curves: dict, title: str, name: str = "energy_error.png") -> str:
    """|E(model path) - E(true path)| against time for each model (log scale)."""
    Figure = optional("matplotlib.figure").Figure
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for kind, c in curves.items():
        ax.semilogy(t[1:], np.asarray(c)[1:] + 1e-16, color=COLORS[kind], lw=1.6, label=MODEL_NAMES[kind])
    ax.set_xlabel("time")
    ax.set_ylabel("|E(model path) - E(true path)|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, out, name)
    return name


def plot_dissipation(out: Path, grid: dict, curves: dict, rho: float, name: str = "dissipation.png") -> str:
    """The learned D beside the true -R (means removed), and the energy along the rollouts against time."""
    Figure = optional("matplotlib.figure").Figure
    fig = Figure(figsize=(13, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    x = grid["x"]
    levels = np.linspace(min(grid["d"].min(), grid["d_true"].min()), max(grid["d"].max(), grid["d_true"].max()), 16)
    for ax, z, title in ((axes[0], grid["d_true"], f"True D = -R = -{rho:g} p^2 / 2"),
                         (axes[1], grid["d"], "Learned D (Dissipative HNN)")):
        cs = ax.tricontourf(x[:, 0], x[:, 1], z, levels=levels, cmap="viridis")
        ax.set_title(f"{title} (mean removed)", fontsize=9)
        ax.set_xlabel("q")
    axes[0].set_ylabel("p")
    fig.colorbar(cs, ax=list(axes[:2]), shrink=0.9)
    ax = axes[2]
    ax.plot(curves["t"], curves["truth"], color="black", lw=2, label="Ground truth")
    for kind in [k for k in curves if k not in ("t", "truth")]:
        ax.plot(curves["t"], curves[kind], color=COLORS[kind], lw=1.5, label=MODEL_NAMES[kind])
    ax.set_xlabel("time")
    ax.set_ylabel("H along the rollouts (mean over test starts)")
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, out, name)
    return name
