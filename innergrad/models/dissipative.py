"""Dissipative Hamiltonian neural networks: a conserved H and a Rayleigh-like dissipation D.

Sosanya & Greydanus, "Dissipative Hamiltonian Neural Networks: Learning Dissipative and
Conservative Dynamics Separately", arXiv:2201.10085 (2022). The time derivative of the state
`x = [q, p]` is the Helmholtz decomposition

    dx/dt = J grad H(x) + grad D(x)

a divergence-free part that conserves the learned H and a curl-free part that carries the
dissipation. For a damped oscillator `p' = -k q - gamma p`, `D = -gamma p^2 / 2` (minus the
Rayleigh function). Where the damped coordinates are known, `dissipation="momenta"` lets D act on
the momenta only (`dx/dt = J grad H + (0, dD/dp)`), the port-Hamiltonian form: positions then move
only as `dH/dp` says.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.checks import check_even_dim
from ..core.mlp import MLP
from ..core.primitive import _check_mode, value_and_grad
from . import integrators
from .hamiltonian import flat_state, symplectic_gradient
from .protocol import Program, closed_form, example_batch, model_dtype

Tensor = torch.Tensor

DISSIPATION = ("full", "momenta")


def _dissipative_part(grad_d: Tensor, dissipation: str) -> Tensor:
    if dissipation == "full":
        return grad_d
    n = grad_d.shape[-1] // 2
    return torch.cat((torch.zeros_like(grad_d[..., :n]), grad_d[..., n:]), -1)


class DissipativeHNN(nn.Module):
    """Scalars H(q, p) and D(q, p); `forward(x)` returns `J grad H + grad D`.

    ```python
    dhnn = ig.DissipativeHNN(2)                  # x = [q, p]; H and D: MLP 2 -> 200 -> 200 -> 1 each
    dxdt = dhnn(x)                               # (B, 2)
    cons, diss = dhnn.fields(x)                  # J grad H and grad D, each (B, 2), for plots
    H, D = dhnn.hamiltonian(x), dhnn.dissipation_function(x)
    path = dhnn.rollout(x0, t, substeps=4)       # rk4 (the flow is not symplectic)
    ```

    **Arguments:**

    - `dim`: size of the phase space, even: `x = [q, p]`.
    - `hidden_layers`, `activation`: the default H and D, two `ig.MLP`s (orthogonal init, no output
      bias, as `HamiltonianNet`'s H); their gradients are closed form under `backend="auto"`.
    - `H`, `D`: your own scalar modules `(B, dim) -> (B,)` instead (either or both).
    - `dissipation`: `"full"` (grad D on every coordinate, the paper's model) or `"momenta"`
      (grad D on the momenta only: the positions' derivative is `dH/dp` alone).
    - `shared`: one MLP with two outputs (H and D) instead of two MLPs, as in the paper: one
      forward and one backward carrying both output rows, in closed form (`TwoHeadMLP`); half the
      parameters. Not with your own `H` or `D`.
    - `mode`, `backend`: as `HamiltonianNet` (`backend` concerns the two-MLP form).

    Time per training step (`benchmarks/bench_lnn.py`, the D-HNN rows; 2x200 tanh, one thread of
    the shared 2-core machine, medians of 15 interleaved steps): at batch 256 the shared form takes
    0.78x and a two-output MLP differentiated by autograd 0.67x of the two MLPs' time; at batch 4096
    all three are within 10% (1.08x, 0.99x). Two MLPs stay the default (the separation of H and D
    the paper studies); one MLP with two outputs is no clear win here. Inputs may have any leading
    shape `(..., dim)`.
    """

    def __init__(
        self,
        dim: int,
        hidden_layers: Sequence[int] = (200, 200),
        activation: str = "tanh",
        H: nn.Module | None = None,
        D: nn.Module | None = None,
        dissipation: str = "full",
        shared: bool = False,
        mode: str = "exact",
        backend: str = "auto",
    ):
        super().__init__()
        check_even_dim(dim, "DissipativeHNN", "phase-space size", "n positions and n momenta", "damped oscillator")
        if dissipation not in DISSIPATION:
            raise ValueError(f"DissipativeHNN: dissipation must be one of {DISSIPATION} (grad D on every coordinate, "
                             f"or on the momenta only), got {dissipation!r}")
        _check_mode(mode, "DissipativeHNN")
        if shared and (H is not None or D is not None):
            raise ValueError("DissipativeHNN: shared=True builds one MLP with two outputs for H and D; it cannot take "
                             "your own H or D. Leave shared=False to use them.")
        self.dim = dim
        self.hidden_layers, self.activation = tuple(hidden_layers), activation
        self._default = (H is None, D is None)

        def mlp() -> MLP:
            return MLP(dim, hidden_layers, activation, out_bias=False, init="orthogonal")

        self.shared = bool(shared)
        self.HD = TwoHeadMLP(dim, hidden_layers, activation) if shared else None
        self.H = HeadOf(self.HD, 0) if self.HD is not None else (H if H is not None else mlp())
        self.D = HeadOf(self.HD, 1) if self.HD is not None else (D if D is not None else mlp())
        self.dissipation, self.mode, self.backend = dissipation, mode, backend

    def spec(self) -> dict:
        """The constructor's keyword arguments (the model protocol); H and D as modules when they are yours."""
        own = {name: m for name, m, default in (("H", self.H, self._default[0]), ("D", self.D, self._default[1]))
               if not default}
        layers = {"hidden_layers": list(self.hidden_layers), "activation": self.activation} if len(own) < 2 else {}
        return {"dim": self.dim, **layers, **own, "dissipation": self.dissipation, "shared": self.shared,
                "mode": self.mode, "backend": self.backend}

    def export_program(self, example=None) -> Program:
        """`x (B, dim) -> dx (B, dim)`, the learned field `J grad H + grad D` (both gradients in closed form)."""
        x = (torch.randn(2, self.dim, dtype=model_dtype(self)),) if example is None else example_batch(example, "x")
        return Program(DissipativeProgram(self.HD or (self.H, self.D), self.dissipation), x, ("x",), ("dx",))

    def _flat(self, x: Tensor) -> Tensor:
        return flat_state(x, self.dim, "DissipativeHNN")

    def hamiltonian(self, x: Tensor) -> Tensor:
        """The learned, conserved H(x), shape `x.shape[:-1]`."""
        return self.H(self._flat(x)).reshape(x.shape[:-1])

    def dissipation_function(self, x: Tensor) -> Tensor:
        """The learned D(x), shape `x.shape[:-1]` (minus a Rayleigh function: D <= 0 where energy is lost)."""
        return self.D(self._flat(x)).reshape(x.shape[:-1])

    def fields(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(J grad H, grad D)`, the conservative and the dissipative parts of the field, each shaped like `x`
        (with `dissipation="momenta"` the second is zero on the positions)."""
        xf = self._flat(x)
        if self.HD is not None:
            _, (dh, dd) = self.HD.values_and_grads(xf)
            if self.mode == "detached":
                dh, dd = dh.detach(), dd.detach()
        else:
            _, dh = value_and_grad(self.H, xf, mode=self.mode, backend=self.backend)
            _, dd = value_and_grad(self.D, xf, mode=self.mode, backend=self.backend)
        return (symplectic_gradient(dh).reshape(x.shape),
                _dissipative_part(dd, self.dissipation).reshape(x.shape))

    def forward(self, x: Tensor) -> Tensor:
        conservative, dissipative = self.fields(x)
        return conservative + dissipative

    def rollout(self, x0: Tensor, t: Tensor | Sequence[float], method: str = "rk4", substeps: int = 1) -> Tensor:
        """States at times `t` from `x0`, shape `(len(t), *x0.shape)`; see `ig.rollout`."""
        return integrators.rollout(self, x0, t, method, substeps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dissipation={self.dissipation!r}, mode={self.mode!r}, backend={self.backend!r}"


class TwoHeadMLP(nn.Module):
    """One MLP `(B, dim) -> (H, D)`: `ig.MLP`'s layers with a second output row, both input gradients in
    closed form (the forward once, then one backward pass carrying both rows: `(B, 2, width)`)."""

    def __init__(self, dim: int, hidden_layers: Sequence[int], activation: str):
        super().__init__()
        self.trunk = MLP(dim, hidden_layers, activation, out_bias=False, init="orthogonal")  # its output is H
        self.head_d = nn.Linear(self.trunk.out.in_features, 1, bias=False)
        nn.init.orthogonal_(self.head_d.weight)

    def _last(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        _, pre = self.trunk._forward_keeping((x,))
        return (self.trunk._act.fn(pre[-1]) if pre else x), pre

    def forward(self, x: Tensor) -> Tensor:
        """`(H, D)` stacked, shape `(B, 2)`."""
        z, _ = self._last(x)
        return torch.cat((self.trunk.out(z), self.head_d(z)), -1)

    def values_and_grads(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`((B, 2) values, (dH/dx, dD/dx))`, an ordinary first-order graph."""
        z, pre = self._last(x)
        rows = torch.cat((self.trunk.out.weight, self.head_d.weight), 0)  # (2, width)
        values = z @ rows.T
        u = rows
        for k in range(len(pre) - 1, -1, -1):
            u = (self.trunk._act.deriv(pre[k]).unsqueeze(-2) * u) @ self.trunk._linear(k).weight
        if not pre:
            u = u.expand(*x.shape[:-1], *u.shape)
        return values, (u[..., 0, :], u[..., 1, :])


class HeadOf(nn.Module):
    """One output of a `TwoHeadMLP` as a scalar module `(B, dim) -> (B,)` (for `hamiltonian()` and plots)."""

    def __init__(self, hd: TwoHeadMLP, index: int):
        super().__init__()
        self._hd = [hd]  # not a submodule: the parameters belong to the TwoHeadMLP once
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return self._hd[0](x)[..., self.index]


class DissipativeProgram(nn.Module):
    """`x (B, dim) -> dx (B, dim)`, the learned field `J grad H + grad D`, for export."""

    def __init__(self, parts: TwoHeadMLP | tuple[nn.Module, nn.Module], dissipation: str):
        super().__init__()
        if isinstance(parts, TwoHeadMLP):
            self.HD: TwoHeadMLP | None = parts
        else:
            self.HD = None
            self.H = closed_form(parts[0], "DissipativeHNN's H")
            self.D = closed_form(parts[1], "DissipativeHNN's D")
        self.dissipation = dissipation

    def forward(self, x: Tensor) -> Tensor:
        if self.HD is not None:
            _, (gh, gd) = self.HD.values_and_grads(x)
        else:
            _, (gh,) = self.H.value_and_input_grad(x, argnums=0)
            _, (gd,) = self.D.value_and_input_grad(x, argnums=0)
        return symplectic_gradient(gh) + _dissipative_part(gd, self.dissipation)
