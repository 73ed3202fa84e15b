"""A user's typed script: `mypy --strict` must accept it (tests/test_packaging.py runs mypy on it)."""

from __future__ import annotations

import torch

import innergrad as ig


def energy(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(-1)


def two_args(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (x * h).sum(-1)


def main() -> float:
    rnn = ig.GradRNN(input_size=3, hidden_size=8, hidden_layers=(16,))
    y, h_last = rnn(torch.randn(5, 2, 3))
    value, g = ig.value_and_grad(energy, torch.randn(4, 2))
    g_sum: torch.Tensor = g + 1.0  # one argnum: one tensor
    v2, (gx, gh) = ig.value_and_grad(two_args, torch.randn(4, 2), torch.randn(4, 2), argnums=(0, 1))
    only: torch.Tensor = ig.grad(energy, torch.randn(4, 2))
    both: tuple[torch.Tensor, ...] = ig.grad(two_args, torch.randn(4, 2), torch.randn(4, 2), argnums=(0, 1))
    hnn = ig.HamiltonianNet(2, hidden_layers=(16,))
    traj: torch.Tensor = ig.rollout(hnn, torch.randn(3, 2), torch.linspace(0.0, 1.0, 5), method="rk4")
    total = y.sum() + h_last.sum() + value.sum() + g_sum.sum() + v2.sum() + gx.sum() + gh.sum()
    total = total + only.sum() + sum(b.sum() for b in both) + traj.sum()
    return float(total)


if __name__ == "__main__":
    print(main())
