"""Functions with known gradients and Hessians, shared by the tests (torchdiffeq's `problems.py` idea).

Each problem builds `f` and its arguments for a dtype/device and gives the exact per-sample gradient
(and Hessian-vector product where it has one) in closed form, computed without autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

import innergrad as ig

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
DTYPES = [torch.float32, torch.float64]


def skip_unsupported(backend, f, args, argnums=0):
    """Skip the calling test when the named backend declares it cannot evaluate `f` on `args`."""
    from innergrad.core.backends import BACKENDS

    if backend == "auto":
        return
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    why = BACKENDS[backend].unsupported(f, tuple(args), nums)
    if why:
        pytest.skip(f"{backend}: {why}")


def tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}


@dataclass
class Problem:
    name: str
    f: Callable
    args: tuple
    argnums: int | tuple
    value: Callable  # args -> (B,)
    grad: Callable  # args -> grad or tuple of grads, matching argnums
    hvp: Callable | None = None  # (args, v) -> H v w.r.t. args[0], single-argument problems only
    hessian: Callable | None = None  # args -> per-sample Hessian blocks (nested tuples, as argnums)


def quadratic(dtype, device, B=5, d=4, seed=0) -> Problem:
    """f(x) = 1/2 x^T A x + b^T x with A symmetric: grad = A x + b, H = A."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = (M + M.T).to(dtype=dtype, device=device)
    b = torch.randn(d, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    x = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    def f(x):
        return 0.5 * ((x @ A) * x).sum(-1) + x @ b

    return Problem("quadratic", f, (x,), 0, lambda a: f(a[0]), lambda a: a[0] @ A + b, lambda a, v: v @ A,
                   lambda a: A.expand(a[0].shape[0], d, d))


def softplus_sum(dtype, device, B=6, d=3, seed=1) -> Problem:
    """f(x) = sum_j softplus(x_j): grad = sigmoid(x), H = diag(sigmoid (1 - sigmoid))."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, d, generator=g, dtype=torch.float64) * 2).to(dtype=dtype, device=device)

    def f(x):
        return Fn.softplus(x).sum(-1, keepdim=True)  # (B, 1): the primitive squeezes it

    def hv(a, v):
        s = torch.sigmoid(a[0])
        return s * (1 - s) * v

    return Problem("softplus_sum", f, (x,), 0, lambda a: f(a[0]).squeeze(1), lambda a: torch.sigmoid(a[0]), hv)


def oscillator(dtype, device, B=4, seed=2) -> Problem:
    """Harmonic oscillator H(q, p) = k q^2 / 2 + p^2 / (2 m): dH/dq = k q, dH/dp = p / m."""
    k, m = 3.0, 0.5
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 1, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    p = torch.randn(B, 1, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    def H(q, p):
        return (0.5 * k * q**2 + 0.5 * p**2 / m).sum(-1)

    return Problem("oscillator", H, (q, p), (0, 1), lambda a: H(*a), lambda a: (k * a[0], a[1] / m))


class TanhNet(nn.Module):
    """f(x, h) = w2 . tanh(W1 [x; h] + b1) + c, a one-hidden-layer net with a hand-derived gradient."""

    def __init__(self, dx, dh, width, dtype=torch.float64, device="cpu", seed=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def r(*s):
            t = torch.randn(*s, generator=g, dtype=torch.float64) * 0.7
            return nn.Parameter(t.to(dtype=dtype, device=device))

        self.dx = dx
        self.W1, self.b1, self.w2, self.c = r(width, dx + dh), r(width), r(width), r(())

    def forward(self, x, h):
        return torch.tanh(torch.cat([x, h], -1) @ self.W1.T + self.b1) @ self.w2 + self.c

    def hand_grad_h(self, x, h):
        a = torch.cat([x, h], -1) @ self.W1.T + self.b1
        return (self.w2 * (1 - torch.tanh(a) ** 2)) @ self.W1[:, self.dx :]


def small_mlp(dtype, device, B=5, dx=3, dh=2, width=6, seed=4) -> Problem:
    net = TanhNet(dx, dh, width, dtype, device, seed)
    g = torch.Generator().manual_seed(seed + 10)
    x = torch.randn(B, dx, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    h = torch.randn(B, dh, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return Problem("small_mlp", net, (x, h), 1, lambda a: net(*a), lambda a: net.hand_grad_h(*a))


def ig_mlp(dtype, device, B=5, dx=3, dh=2, seed=5) -> Problem:
    """ig.MLP with one tanh layer equals TanhNet: copy the weights across, compare with the hand gradient."""
    torch.manual_seed(seed)
    mlp = ig.MLP((dx, dh), hidden_layers=(6,), activation="tanh").to(dtype=dtype, device=device)
    ref = TanhNet(dx, dh, 6, dtype, device)
    with torch.no_grad():
        ref.W1.copy_(mlp.layers[0].weight)
        ref.b1.copy_(mlp.layers[0].bias)
        ref.w2.copy_(mlp.out.weight[0])
        ref.c.copy_(mlp.out.bias[0])
    g = torch.Generator().manual_seed(seed + 10)
    x = torch.randn(B, dx, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    h = torch.randn(B, dh, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return Problem("ig_mlp", mlp, (x, h), 1, lambda a: ref(*a), lambda a: ref.hand_grad_h(*a))


def lagrangian(dtype, device, B=5, n=2, seed=6) -> Problem:
    """L(q, v) = sum_i (1 + q_i^2) v_i^2 / 2 + cos q_i, a position-dependent mass (not an MLP).

    dL/dq = q v^2 - sin q, dL/dv = (1 + q^2) v; d2L/dq2 = diag(v^2 - cos q), d2L/dq dv = diag(2 q v),
    d2L/dv2 = diag(1 + q^2).
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    v = torch.randn(B, n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    def L(q, v):
        return (0.5 * (1 + q**2) * v**2 + torch.cos(q)).sum(-1)

    def hess(a):
        q, v = a
        d = torch.diag_embed
        return ((d(v**2 - torch.cos(q)), d(2 * q * v)), (d(2 * q * v), d(1 + q**2)))

    return Problem("lagrangian", L, (q, v), (0, 1), lambda a: L(*a),
                   lambda a: (a[0] * a[1] ** 2 - torch.sin(a[0]), (1 + a[0] ** 2) * a[1]), hessian=hess)


PROBLEMS = {p.__name__: p for p in (quadratic, softplus_sum, oscillator, small_mlp, ig_mlp, lagrangian)}
