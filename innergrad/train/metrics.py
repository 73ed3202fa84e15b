"""Physics metrics of learned dynamics along rollouts (`ig.metrics`).

Paths are time-first, as `ig.rollout` returns them: `(T, D)` for one trajectory or `(T, B, D)` for
a batch. Every function takes numpy arrays or tensors (computed in float64 either way, so both give
the same numbers) and returns a Python float, or with `reduction="none"` one value per trajectory
(numpy in, numpy out; tensors in, a tensor out).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Tensor = torch.Tensor
REDUCTIONS = ("mean", "none")


def _as64(a, name: str, who: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(a, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a tensor or a numpy array of numbers, "
                        f"got {type(a).__name__}") from None


def _paths(pred, true, who: str) -> tuple[Tensor, Tensor]:
    p, t = _as64(pred, "pred", who), _as64(true, "true", who)
    if p.shape != t.shape:
        raise ValueError(f"{who}: pred and true must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.dim() not in (2, 3):
        raise ValueError(f"{who}: paths must be (T, D) or (T, B, D) (time first, as ig.rollout returns), "
                         f"got shape {tuple(p.shape)}")
    return p, t


def _reduce(per_traj: Tensor, reduction: str, like, who: str):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "mean":
        return float(per_traj.mean())
    if isinstance(like, Tensor):
        return per_traj.to(like.device)
    return per_traj.numpy()


def _energy_values(energy: Callable, path: Tensor, like, who: str) -> Tensor:
    """`energy` on every state of `path`, given in the caller's kind (numpy or tensor)."""
    module = energy if isinstance(energy, torch.nn.Module) else getattr(energy, "__self__", None)
    if isinstance(module, torch.nn.Module):  # a network takes tensors in its own dtype and device
        param = next(module.parameters(), None)
        arg = path if param is None else path.to(param.device, param.dtype)
    elif isinstance(like, Tensor):
        arg = path.to(like.device, like.dtype)
    else:
        arg = path.numpy()
    with torch.no_grad():
        out = energy(arg)
    out = _as64(out, "energy(path)", who)
    if out.shape != path.shape[:-1]:
        raise ValueError(f"{who}: energy must map states (..., D) to values (...); for paths of shape "
                         f"{tuple(path.shape)} it returned {tuple(out.shape)}")
    return out


def _hamiltonian(energy):
    """A HamiltonianNet's learned H, any other callable as is."""
    return energy.hamiltonian if hasattr(energy, "hamiltonian") and callable(energy.hamiltonian) else energy


def rollout_mse(pred, true, reduction: str = "mean"):
    """Mean squared state error between a model's rollout and the true path, over time and state."""
    who = "ig.metrics.rollout_mse"
    p, t = _paths(pred, true, who)
    return _reduce((p - t).pow(2).mean(dim=(0, -1)), reduction, pred, who)


def energy_mse(energy: Callable, pred, true, reduction: str = "mean"):
    """The HNN paper's energy metric: the mean over time of `(E(pred_t) - E(true_t))^2`.

    `energy` is the true energy function (states `(..., D)` -> `(...)`; numpy or torch, it receives
    the paths in the kind they were given). Per trajectory, then averaged (`"mean"`).
    """
    who = "ig.metrics.energy_mse"
    p, t = _paths(pred, true, who)
    e_pred, e_true = _energy_values(energy, p, pred, who), _energy_values(energy, t, pred, who)
    return _reduce((e_pred - e_true).pow(2).mean(dim=0), reduction, pred, who)


def h_spread(hamiltonian: Callable, path, reduction: str = "mean", relative: bool = False):
    """How far a (learned) energy moves along a path: its standard deviation over time.

    `hamiltonian` is an `ig.HamiltonianNet` (its learned `H` is used) or any callable
    `(..., D) -> (...)`. Zero for an exact conservation law; for an HNN's own rollout it measures the
    integrator's drift, along the true path the model's error. `relative=True` divides by the mean
    |H| along the path (an energy has an arbitrary zero; use it where H's scale matters).
    """
    who = "ig.metrics.h_spread"
    x = _as64(path, "path", who)
    if x.dim() not in (2, 3):
        raise ValueError(f"{who}: path must be (T, D) or (T, B, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{who}: path needs at least 2 time points, got {x.shape[0]}")
    h = _energy_values(_hamiltonian(hamiltonian), x, path, who)
    spread = h.std(dim=0, unbiased=False)
    if relative:
        spread = spread / h.abs().mean(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
    return _reduce(spread, reduction, path, who)


__all__ = ["energy_mse", "h_spread", "rollout_mse"]
