"""The gradient of an input-convex network is a monotone map (Brenier's theorem): fit one to a target map.

    python examples/icnn_gradient_map.py

`T(x) = grad psi(x)` with psi convex in x (non-negative weights on the hidden path, convex
non-decreasing activations). We fit T to the linear map x -> A x, A symmetric positive definite, whose
potential is psi(x) = x^T A x / 2, by a loss on the gradient: training goes through second order.
"""

import torch
import torch.nn.functional as Fn
from torch import nn

import innergrad as ig


class ICNN(nn.Module):
    """psi(x) = w . softplus(Wz softplus(W0 x + b0) + Wx x + b1) + |x|^2 * eps, convex in x."""

    def __init__(self, d, width=32):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.skip = nn.Linear(d, width)
        self.z = nn.Parameter(torch.rand(width, width) * 0.1)
        self.w = nn.Parameter(torch.rand(width) * 0.1)

    def forward(self, x):
        z = Fn.softplus(self.inp(x))
        z = Fn.softplus(z @ Fn.softplus(self.z).T + self.skip(x))  # softplus keeps weights >= 0
        return z @ Fn.softplus(self.w) + 0.5 * (x * x).sum(-1) * 1e-2


def main(steps=400, seed=0):
    torch.manual_seed(seed)
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    psi = ICNN(2)
    T = ig.Gradient(psi, argnums=0)  # T(x) returns (psi(x), grad psi(x))
    opt = torch.optim.Adam(psi.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(256, 2)
        opt.zero_grad()
        loss = ((T(x)[1] - x @ A) ** 2).mean()
        loss.backward()
        opt.step()
    x = torch.randn(1000, 2)
    err = ((T(x)[1] - x @ A) ** 2).mean().item() / ((x @ A) ** 2).mean().item()
    # Monotone: <T(x) - T(y), x - y> >= 0 for every pair, because psi is convex.
    y = torch.randn(1000, 2)
    mono = ((T(x)[1] - T(y)[1]) * (x - y)).sum(-1).min().item()
    return err, mono


if __name__ == "__main__":
    err, mono = main()
    print(f"relative error of the fitted map: {err:.4f}; min <T(x)-T(y), x-y> = {mono:.4f} (>= 0: monotone)")
