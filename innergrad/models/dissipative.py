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
    - `mode`, `backend`: as `HamiltonianNet`.

    Two MLPs rather than one with two outputs: measured in `benchmarks/bench_lnn.py` (the D-HNN
    rows), two closed-form MLPs train faster per step than one shared trunk whose two gradients
    come from autograd. Inputs may have any leading shape `(..., dim)`.
    """

    def __init__(
        self,
        dim: int,
        hidden_layers: Sequence[int] = (200, 200),
        activation: str = "tanh",
        H: nn.Module | None = None,
        D: nn.Module | None = None,
        dissipation: str = "full",
        mode: str = "exact",
        backend: str = "auto",
    ):
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(
                f"DissipativeHNN: dim is the phase-space size and must be an even int >= 2 (n positions and n "
                f"momenta), got {dim!r}. For a 1-D damped oscillator use dim=2."
            )
        if dissipation not in DISSIPATION:
            raise ValueError(f"DissipativeHNN: dissipation must be one of {DISSIPATION} (grad D on every coordinate, "
                             f"or on the momenta only), got {dissipation!r}")
        _check_mode(mode, "DissipativeHNN")
        self.dim = dim
        self.hidden_layers, self.activation = tuple(hidden_layers), activation
        self._default = (H is None, D is None)

        def mlp() -> MLP:
            return MLP(dim, hidden_layers, activation, out_bias=False, init="orthogonal")

        self.H = H if H is not None else mlp()
        self.D = D if D is not None else mlp()
        self.dissipation, self.mode, self.backend = dissipation, mode, backend

    def spec(self) -> dict:
        """The constructor's keyword arguments (the model protocol); H and D as modules when they are yours."""
        own = {name: m for name, m, default in (("H", self.H, self._default[0]), ("D", self.D, self._default[1]))
               if not default}
        layers = {"hidden_layers": list(self.hidden_layers), "activation": self.activation} if len(own) < 2 else {}
        return {"dim": self.dim, **layers, **own, "dissipation": self.dissipation, "mode": self.mode,
                "backend": self.backend}

    def export_program(self, example=None) -> Program:
        """`x (B, dim) -> dx (B, dim)`, the learned field `J grad H + grad D` (both gradients in closed form)."""
        x = (torch.randn(2, self.dim, dtype=model_dtype(self)),) if example is None else example_batch(example, "x")
        return Program(DissipativeProgram(self.H, self.D, self.dissipation), x, ("x",), ("dx",))

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


class DissipativeProgram(nn.Module):
    """`x (B, dim) -> dx (B, dim)`, the learned field `J grad H + grad D`, for export."""

    def __init__(self, H: nn.Module, D: nn.Module, dissipation: str):
        super().__init__()
        self.H = closed_form(H, "DissipativeHNN's H")
        self.D = closed_form(D, "DissipativeHNN's D")
        self.dissipation = dissipation

    def forward(self, x: Tensor) -> Tensor:
        _, (gh,) = self.H.value_and_input_grad(x, argnums=0)
        _, (gd,) = self.D.value_and_input_grad(x, argnums=0)
        return symplectic_gradient(gh) + _dissipative_part(gd, self.dissipation)
