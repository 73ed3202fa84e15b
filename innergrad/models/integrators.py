"""Fixed-step integrators for autonomous vector fields `dx/dt = field(x)`, differentiable and batched.

Every integrator is plain tensor arithmetic on top of `field`, so gradients flow to the initial state
and to the field's parameters (backpropagation through the solver). States are `(..., 2n)` with the
canonical split `x = [q, p]` (positions first, momenta second) that `ig.HamiltonianNet` uses; only
the symplectic integrator relies on that split.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor
Field = Callable[[Tensor], Tensor]

METHODS = ("leapfrog", "rk4", "euler")


def _halves(x: Tensor, who: str) -> int:
    d = x.shape[-1] if x.dim() else 0
    if d == 0 or d % 2:
        raise ValueError(
            f"{who}: the state's last dimension must be even, x = [q, p] with q and p of equal size; got "
            f"shape {tuple(x.shape)}. Use method='rk4' for a field that is not in canonical coordinates."
        )
    return d // 2


def _checked(field: Field, x: Tensor, who: str) -> Tensor:
    out = field(x)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{who}: field must map a state of shape {tuple(x.shape)} to a time derivative of the same "
            f"shape, got {got}"
        )
    return out


def euler_step(field: Field, x: Tensor, dt: float) -> Tensor:
    """One explicit Euler step `x + dt * field(x)` (first order; for comparison only)."""
    return x + dt * _checked(field, x, "innergrad.euler_step")


def rk4_step(field: Field, x: Tensor, dt: float) -> Tensor:
    """One classical Runge-Kutta step (fourth order, four evaluations of `field`)."""
    k1 = _checked(field, x, "innergrad.rk4_step")
    k2 = field(x + 0.5 * dt * k1)
    k3 = field(x + 0.5 * dt * k2)
    k4 = field(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def leapfrog_step(field: Field, x: Tensor, dt: float, implicit_iters: int = 0) -> Tensor:
    """One Stormer-Verlet (leapfrog, kick-drift-kick) step on `x = [q, p]`.

    `field(x)` returns `[dq/dt, dp/dt]`. With `implicit_iters=0` this is the explicit leapfrog

        p_half = p + dt/2 * pdot(q, p)
        q_new  = q + dt   * qdot(q, p_half)
        p_new  = p_half + dt/2 * pdot(q_new, p_half)

    which is symplectic, time-reversible and second order when H is separable, `H = T(p) + V(q)`
    (springs, pendulums, gravity). A learned H is in general not separable; `implicit_iters=k` then
    runs k fixed-point iterations on the implicit equations of the generalised Stormer-Verlet method
    (Hairer, Lubich & Wanner, Geometric Numerical Integration, VI.3), which is symplectic and
    symmetric for any H once the iterations converge (they do for `dt` small against the field's
    Lipschitz constant). For a separable H the iterations change nothing. Costs `3 + 2k` field calls.
    """
    n = _halves(x, "innergrad.leapfrog_step")
    q, p = x[..., :n], x[..., n:]

    def f(q_, p_):
        out = field(torch.cat((q_, p_), -1))
        return out[..., :n], out[..., n:]

    pdot = f(q, p)[1]
    p_half = p + 0.5 * dt * pdot
    for _ in range(implicit_iters):
        p_half = p + 0.5 * dt * f(q, p_half)[1]
    qdot_start = f(q, p_half)[0]
    q_new = q + dt * qdot_start
    qdot_end, pdot_end = f(q_new, p_half)
    for _ in range(implicit_iters):
        q_new = q + 0.5 * dt * (qdot_start + qdot_end)
        qdot_end, pdot_end = f(q_new, p_half)
    p_new = p_half + 0.5 * dt * pdot_end
    return torch.cat((q_new, p_new), -1)


def _step_fn(method: str, implicit_iters: int, who: str):
    if method == "leapfrog":
        return lambda field, x, dt: leapfrog_step(field, x, dt, implicit_iters)
    if method == "rk4":
        return rk4_step
    if method == "euler":
        return euler_step
    raise ValueError(f"{who}: method must be one of {METHODS}, got {method!r}")


def _check_x0(x0: Tensor, who: str) -> None:
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        got = x0.dtype if isinstance(x0, Tensor) else type(x0).__name__
        raise TypeError(f"{who}: x0 must be a floating-point tensor of shape (..., dim), got {got}")
    if not bool(torch.isfinite(x0.detach()).all()):
        raise ValueError(f"{who}: x0 holds NaN or infinite values; every initial state must be finite")


def _check_dt(dt, who: str) -> None:
    try:
        ok = not isinstance(dt, bool) and math.isfinite(float(dt))
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        ok = False
    if not ok:
        raise ValueError(f"{who}: dt must be a finite number, got {str(dt)[:40]}")


class DivergedWarning(RuntimeWarning):
    """A trajectory left the finite numbers (NaN or inf): the field or the step is too large."""


def _warn_if_diverged(xs: Tensor, who: str) -> Tensor:
    """A path that became NaN/inf is returned as computed (a training loop's NaN policy may want it), but
    never silently."""
    finite = torch.isfinite(xs.detach()).reshape(xs.shape[0], -1).all(1)
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        warnings.warn(f"{who}: the trajectory is NaN or infinite from output step {k} on (it diverged); use a "
                      "smaller step, more substeps, or check the field", DivergedWarning, stacklevel=3)
    return xs


def _check_steps(steps: int, who: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"{who}: steps must be a non-negative int, got {steps!r}")


def integrate(
    field: Field, x0: Tensor, dt: float, steps: int, method: str = "leapfrog", implicit_iters: int = 0
) -> Tensor:
    """Trajectory of `steps` fixed steps of size `dt` from `x0`, shape `(steps + 1, *x0.shape)`.

    `x0` is `(B, dim)` (or any `(..., dim)` that `field` accepts); entry 0 is `x0` itself. A negative
    `dt` integrates backwards in time. Differentiable w.r.t. `x0` and `field`'s parameters.
    """
    who = "innergrad.integrate"
    _check_x0(x0, who)
    _check_steps(steps, who)
    _check_dt(dt, who)
    step = _step_fn(method, implicit_iters, who)
    xs = [x0]
    x = x0
    for _ in range(steps):
        x = step(field, x, dt)
        xs.append(x)
    return _warn_if_diverged(torch.stack(xs), who)


def leapfrog(field: Field, x0: Tensor, dt: float, steps: int, implicit_iters: int = 0) -> Tensor:
    """`integrate(..., method="leapfrog")`: Stormer-Verlet, shape `(steps + 1, *x0.shape)`."""
    return integrate(field, x0, dt, steps, "leapfrog", implicit_iters)


def rk4(field: Field, x0: Tensor, dt: float, steps: int) -> Tensor:
    """`integrate(..., method="rk4")`: classical Runge-Kutta, shape `(steps + 1, *x0.shape)`."""
    return integrate(field, x0, dt, steps, "rk4")


def rollout(
    field: Field,
    x0: Tensor,
    t: Tensor | Sequence[float],
    method: str = "leapfrog",
    substeps: int = 1,
    implicit_iters: int = 0,
) -> Tensor:
    """States at the times `t` (an `odeint`-like interface), shape `(len(t), *x0.shape)`.

    **Arguments:**

    - `field`: `x -> dx/dt`, autonomous (e.g. an `ig.HamiltonianNet`).
    - `x0`: the state at `t[0]`, `(B, dim)`.
    - `t`: increasing or decreasing times, 1-D; the spacing may vary.
    - `method`: `"leapfrog"` (symplectic; needs `x = [q, p]`), `"rk4"` or `"euler"`.
    - `substeps`: fixed steps per interval `t[i] -> t[i+1]` (a finer grid than the output).
    - `implicit_iters`: for the leapfrog with a non-separable H; see `leapfrog_step`.

    Differentiable w.r.t. `x0` and the field's parameters.
    """
    who = "innergrad.rollout"
    _check_x0(x0, who)
    if not isinstance(substeps, int) or isinstance(substeps, bool) or substeps < 1:
        raise ValueError(f"{who}: substeps must be a positive int, got {substeps!r}")
    if isinstance(t, Tensor) and t.dim() != 1:
        raise ValueError(f"{who}: t must be 1-D (the output times), got shape {tuple(t.shape)}")
    ts = t.detach().cpu().double().tolist() if isinstance(t, Tensor) else [float(v) for v in t]
    if len(ts) < 1:
        raise ValueError(f"{who}: t must hold at least one time (the start), got none")
    if not all(math.isfinite(v) for v in ts):
        raise ValueError(f"{who}: t holds NaN or infinite times; give finite output times")
    step = _step_fn(method, implicit_iters, who)
    xs = [x0]
    x = x0
    for a, b in zip(ts[:-1], ts[1:]):
        dt = (b - a) / substeps
        for _ in range(substeps):
            x = step(field, x, dt)
        xs.append(x)
    return _warn_if_diverged(torch.stack(xs), who)
