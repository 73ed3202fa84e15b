"""Physics metrics of learned dynamics along rollouts (`ig.metrics`).

Paths are time-first, as `ig.rollout` returns them: `(T, D)` for one trajectory or `(T, B, D)` for
a batch. Every function takes numpy arrays or tensors (computed in float64 either way, so both give
the same numbers) and returns a Python float, or with `reduction="none"` one value per trajectory
(numpy in, numpy out; tensors in, a tensor out).

Full accuracy for any finite input: squares and spreads are taken of values scaled by their largest
magnitude (so `1e200` states do not overflow); a result beyond float64 is an error. A path or energy
that holds NaN or inf is an error naming where (`diverged="raise"`, the default); with
`diverged="inf"` such a trajectory's metric is `inf` (a diverged rollout counts as infinitely wrong).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Tensor = torch.Tensor
REDUCTIONS = ("mean", "none")
DIVERGED = ("raise", "inf")


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


def _options(reduction: str, diverged: str, who: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if diverged not in DIVERGED:
        raise ValueError(f"{who}: diverged must be one of {DIVERGED}, got {diverged!r}")


def _finite_rows(a: Tensor, name: str, diverged: str, who: str, state: bool = True) -> Tensor:
    """(B,) or () bool: trajectories of `a` (time first: states `(T, [B,] D)`, or with `state=False` values
    `(T, [B])`) that are finite throughout; raises on the first non-finite value unless `diverged="inf"`."""
    ok = torch.isfinite(a)
    if state:
        ok = ok.all(-1)
    if diverged == "raise" and not ok.all():
        idx = [int(i) for i in torch.nonzero(~ok)[0]]
        where = f"time index {idx[0]}" + (f", trajectory {idx[1]}" if len(idx) > 1 else "")
        raise ValueError(f"{who}: {name} is NaN or infinite at {where}; a diverged path has no finite metric. "
                         "Pass diverged='inf' to count it as infinitely wrong, or shorten the rollout")
    return ok.all(0)


def _rms(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """sqrt(mean((a - b)^2)) over `dims`, exact for any finite a, b: differences and squares of values
    scaled by their largest magnitude, so neither overflows nor underflows."""
    s = torch.maximum(a.abs().amax(dim=dims, keepdim=True), b.abs().amax(dim=dims, keepdim=True))
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return (((a / s - b / s).pow(2).mean(dim=dims, keepdim=True)).sqrt() * s).squeeze(dims)


def _mean_square(a: Tensor, b: Tensor, dims: tuple[int, ...], who: str) -> Tensor:
    return _square_or_raise(_rms(a, b, dims), who)


def _square_or_raise(rms: Tensor, who: str) -> Tensor:
    big = torch.isfinite(rms) & (rms > math.sqrt(torch.finfo(torch.float64).max))
    if big.any():
        raise ValueError(f"{who}: the result exceeds float64 (a root mean square of {float(rms[big].max()):.3g}); "
                         "rescale the states")
    return rms.pow(2)


def _reduce(per_traj: Tensor, reduction: str, like, who: str):
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


def rollout_mse(pred, true, reduction: str = "mean", diverged: str = "raise"):
    """Mean squared state error between a model's rollout and the true path, over time and state."""
    who = "ig.metrics.rollout_mse"
    _options(reduction, diverged, who)
    p, t = _paths(pred, true, who)
    ok = _finite_rows(p, "pred", diverged, who) & _finite_rows(t, "true", diverged, who)
    p, t = _zero_where_not(ok, p), _zero_where_not(ok, t)
    per = _mean_square(p, t, (0, p.dim() - 1), who)
    return _reduce(torch.where(ok, per, torch.full_like(per, math.inf)), reduction, pred, who)


def _zero_where_not(ok: Tensor, a: Tensor) -> Tensor:
    """`a` with the trajectories that are not `ok` set to 0 (their metric is inf; keeps NaN out of the rest)."""
    mask = ok.reshape((1,) + tuple(ok.shape) + (1,) * (a.dim() - 1 - ok.dim()))
    return torch.where(mask, a, torch.zeros_like(a))


def energy_mse(energy: Callable, pred, true, reduction: str = "mean", diverged: str = "raise"):
    """The HNN paper's energy metric: the mean over time of `(E(pred_t) - E(true_t))^2`.

    `energy` is the true energy function (states `(..., D)` -> `(...)`; numpy or torch, it receives
    the paths in the kind they were given). Per trajectory, then averaged (`"mean"`).
    """
    who = "ig.metrics.energy_mse"
    _options(reduction, diverged, who)
    p, t = _paths(pred, true, who)
    ok = _finite_rows(p, "pred", diverged, who) & _finite_rows(t, "true", diverged, who)
    e_pred = _energy_values(energy, _zero_where_not(ok, p), pred, who)
    e_true = _energy_values(energy, _zero_where_not(ok, t), pred, who)
    ok = ok & _finite_rows(e_pred, "energy(pred)", diverged, who, False) \
        & _finite_rows(e_true, "energy(true)", diverged, who, False)
    e_pred, e_true = _zero_where_not(ok, e_pred), _zero_where_not(ok, e_true)
    per = _mean_square(e_pred, e_true, (0,), who)
    return _reduce(torch.where(ok, per, torch.full_like(per, math.inf)), reduction, pred, who)


def h_spread(hamiltonian: Callable, path, reduction: str = "mean", relative: bool = False,
             diverged: str = "raise"):
    """How far a (learned) energy moves along a path: its standard deviation over time.

    `hamiltonian` is an `ig.HamiltonianNet` (its learned `H` is used) or any callable
    `(..., D) -> (...)`. Zero for an exact conservation law; for an HNN's own rollout it measures the
    integrator's drift, along the true path the model's error. `relative=True` divides by the mean
    |H| along the path (an energy has an arbitrary zero; use it where H's scale matters).
    """
    who = "ig.metrics.h_spread"
    _options(reduction, diverged, who)
    x = _as64(path, "path", who)
    if x.dim() not in (2, 3):
        raise ValueError(f"{who}: path must be (T, D) or (T, B, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{who}: path needs at least 2 time points, got {x.shape[0]}")
    ok = _finite_rows(x, "path", diverged, who)
    h = _energy_values(_hamiltonian(hamiltonian), _zero_where_not(ok, x), path, who)
    ok = ok & _finite_rows(h, "H(path)", diverged, who, False)
    h = _zero_where_not(ok, h)
    spread = _rms(h, h.mean(dim=0, keepdim=True) if _fits_mean(h) else _scaled_mean(h), (0,))
    if relative:
        s = h.abs().amax(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
        spread = spread / ((h / s).abs().mean(dim=0) * s).clamp_min(torch.finfo(torch.float64).tiny)
    return _reduce(torch.where(ok, spread, torch.full_like(spread, math.inf)), reduction, path, who)


def _fits_mean(h: Tensor) -> bool:
    return bool(torch.isfinite(h.sum(dim=0)).all())


def _scaled_mean(h: Tensor) -> Tensor:
    s = h.abs().amax(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (h / s).mean(dim=0, keepdim=True) * s


__all__ = ["DIVERGED", "energy_mse", "h_spread", "rollout_mse"]
