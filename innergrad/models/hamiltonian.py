"""Hamiltonian neural networks: a learned scalar H(q, p) whose symplectic gradient is the dynamics.

Greydanus, Dzamba & Yosinski, "Hamiltonian Neural Networks", NeurIPS 2019. The network outputs one
number, H; the time derivative of the state `x = [q, p]` is `J grad H = (dH/dp, -dH/dq)`, so the
learned flow conserves the learned H exactly (up to the integrator) and is time-reversible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.checks import check_even_dim
from ..core.mlp import MLP
from ..core.primitive import _check_mode, value_and_grad
from . import integrators
from .protocol import Program, closed_form, example_batch, model_dtype

Tensor = torch.Tensor


def symplectic_gradient(grad_h: Tensor) -> Tensor:
    """`J grad H` for `grad_h = (dH/dq, dH/dp)` of shape `(..., 2n)`: returns `(dH/dp, -dH/dq)`.

    `J = [[0, I], [-I, 0]]` is the canonical symplectic matrix; applying it is a swap and a sign.
    """
    n = grad_h.shape[-1] // 2
    return torch.cat((grad_h[..., n:], -grad_h[..., :n]), -1)


def flat_state(x: Tensor, dim: int, who: str) -> Tensor:
    """A state `(..., dim)` as `(B, dim)` (a single state `(dim,)` stays as it is), or a ValueError."""
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: expected a state of shape (..., {dim}), got {got}")
    return x if x.dim() <= 2 else x.reshape(-1, dim)


class HamiltonianNet(nn.Module):
    """A scalar H(q, p); `forward(x)` returns the time derivative `(dH/dp, -dH/dq)`.

    ```python
    hnn = ig.HamiltonianNet(2)                 # x = [q, p], H: MLP 2 -> 200 -> 200 -> 1, tanh
    dxdt = hnn(x)                              # x: (B, 2) -> (B, 2)
    H, dxdt = hnn.value_and_time_derivative(x)
    traj = hnn.rollout(x0, t, method="leapfrog")   # (len(t), B, 2)
    ```

    **Arguments:**

    - `dim`: size of the phase space, even: `x = [q, p]` with `dim // 2` positions then as many
      momenta (e.g. `[x1, x2, y1, y2, vx1, vx2, vy1, vy2]` for two bodies in a plane).
    - `hidden_layers`, `activation`: the default H, an `ig.MLP` with orthogonal initialisation and no
      output bias (the paper's network). Its input gradient is closed form, so `backend="auto"`
      trains it with a single first-order backward.
    - `H`: your own scalar module `(B, dim) -> (B,)` instead (then `hidden_layers` is unused).
    - `mode`: `"exact"` (train through the second derivatives of H: what an HNN needs) or
      `"detached"` (the derivative is a constant: inference only).
    - `backend`: a name from `ig.backends()`, or `"auto"`.

    Inputs may have any leading shape `(..., dim)`, including a single state `(dim,)`.
    """

    def __init__(
        self,
        dim: int,
        hidden_layers: Sequence[int] = (200, 200),
        activation: str = "tanh",
        H: nn.Module | None = None,
        mode: str = "exact",
        backend: str = "auto",
    ):
        super().__init__()
        check_even_dim(dim, "HamiltonianNet", "phase-space size", "n positions and n momenta", "oscillator")
        _check_mode(mode, "HamiltonianNet")
        self.dim = dim
        self.H = H if H is not None else MLP(dim, hidden_layers, activation, out_bias=False, init="orthogonal")
        self.mode, self.backend = mode, backend

    def spec(self) -> dict:
        """The constructor's arguments (the model protocol, `models/protocol.py`); H as its widths and
        activation when it is the default MLP, else as the module (which must describe itself too)."""
        h_args: dict = {"H": self.H}
        if isinstance(self.H, MLP):
            default = MLP(self.dim, self.H.hidden_layers, self.H.activation_name, out_bias=False, init="orthogonal")
            if self.H.spec() == default.spec():
                h_args = {"hidden_layers": list(self.H.hidden_layers), "activation": self.H.activation_name}
        return {"dim": self.dim, **h_args, "mode": self.mode, "backend": self.backend}

    def export_program(self, example=None) -> Program:
        """`x (B, dim) -> dx (B, dim)`, the learned vector field `J grad H` (H's gradient in closed form)."""
        x = (torch.randn(2, self.dim, dtype=model_dtype(self)),) if example is None else example_batch(example, "x")
        return Program(HamiltonianProgram(self.H), x, ("x",), ("dx",))

    def _flat(self, x: Tensor) -> Tensor:
        return flat_state(x, self.dim, "HamiltonianNet")

    def hamiltonian(self, x: Tensor) -> Tensor:
        """The learned energy H(x), shape `x.shape[:-1]`."""
        return self.H(self._flat(x)).reshape(x.shape[:-1])

    def value_and_time_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(H(x), J grad H(x))`, shapes `x.shape[:-1]` and `x.shape`."""
        h, dh = value_and_grad(self.H, self._flat(x), mode=self.mode, backend=self.backend)
        return h.reshape(x.shape[:-1]), symplectic_gradient(dh).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.value_and_time_derivative(x)[1]

    def rollout(
        self,
        x0: Tensor,
        t: Tensor | Sequence[float],
        method: str = "leapfrog",
        substeps: int = 1,
        implicit_iters: int = 0,
    ) -> Tensor:
        """States at times `t` from `x0`, shape `(len(t), *x0.shape)`; see `ig.rollout`.

        The leapfrog is symplectic for separable H; a learned H is generally not separable, so pass
        `implicit_iters` (e.g. 2-3) for the generalised Stormer-Verlet, or use `method="rk4"`.
        """
        return integrators.rollout(self, x0, t, method, substeps, implicit_iters)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}, backend={self.backend!r}"


class HamiltonianProgram(nn.Module):
    """`x (B, dim) -> dx (B, dim)`, the learned vector field `J grad H`, for export."""

    def __init__(self, H: nn.Module):
        super().__init__()
        self.H = closed_form(H, "HamiltonianNet's H")

    def forward(self, x: Tensor) -> Tensor:
        _, (g,) = self.H.value_and_input_grad(x, argnums=0)
        return symplectic_gradient(g)
