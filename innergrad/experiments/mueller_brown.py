"""The Mueller-Brown potential: a 2-D test energy with three minima and two saddles.

K. Mueller and L. D. Brown, Theoret. Chim. Acta 53, 75 (1979):

    V(x, y) = sum_k A_k exp(a_k (x - x_k)^2 + b_k (x - x_k)(y - y_k) + c_k (y - y_k)^2)

It is the ground truth of `innergrad experiment forces` and of the force-field tests. As a module it
maps `(B, 2) -> (B,)` and declares its gradient in closed form, so `ig.value_and_grad` can check the
closed-form backend against autograd on a function whose derivative is known exactly.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor

A = (-200.0, -100.0, -170.0, 15.0)
a = (-1.0, -1.0, -6.5, 0.7)
b = (0.0, 0.0, 11.0, 0.6)
c = (-10.0, -10.0, -6.5, 0.7)
X0 = (1.0, 0.0, -0.5, -1.0)
Y0 = (0.0, 0.5, 1.5, 1.0)

# The usual plotting window; energies rise to ~3300 in its upper-right corner.
BOX = ((-1.5, 1.2), (-0.2, 2.0))
# Minima (approximate) and the global minimum's energy, for plots and sanity checks.
MINIMA = ((-0.558, 1.442), (0.623, 0.028), (-0.050, 0.467))
E_MIN = -146.69952


class MuellerBrown(nn.Module):
    """`V(x)` for `x` of shape `(..., 2)`, returning `(...)`; `value_and_input_grad` is analytic."""

    def __init__(self):
        super().__init__()
        for name, vals in (("A", A), ("a", a), ("b", b), ("c", c), ("x0", X0), ("y0", Y0)):
            self.register_buffer(name, torch.tensor(vals, dtype=torch.float64), persistent=False)

    def _terms(self, x: Tensor):
        if x.shape[-1] != 2:
            raise ValueError(f"MuellerBrown: x must have last dimension 2, got shape {tuple(x.shape)}")
        k = {n: getattr(self, n).to(x.dtype) for n in ("A", "a", "b", "c", "x0", "y0")}
        dx = x[..., :1] - k["x0"]
        dy = x[..., 1:] - k["y0"]
        e = k["A"] * torch.exp(k["a"] * dx * dx + k["b"] * dx * dy + k["c"] * dy * dy)
        return e, dx, dy, k

    def forward(self, x: Tensor) -> Tensor:
        return self._terms(x)[0].sum(-1)

    def value_and_input_grad(self, x: Tensor, argnums=0) -> tuple[Tensor, tuple[Tensor, ...]]:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        if nums != (0,):
            raise ValueError(f"MuellerBrown takes one input; argnums must be 0, got {argnums!r}")
        e, dx, dy, k = self._terms(x)
        gx = (e * (2 * k["a"] * dx + k["b"] * dy)).sum(-1)
        gy = (e * (k["b"] * dx + 2 * k["c"] * dy)).sum(-1)
        return e.sum(-1), (torch.stack((gx, gy), -1),)
