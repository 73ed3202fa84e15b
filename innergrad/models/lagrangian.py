"""Lagrangian neural networks: a learned scalar L(q, q') whose Euler-Lagrange equation is the dynamics.

Cranmer, Greydanus, Hoyer, Battaglia, Spergel & Ho, "Lagrangian Neural Networks", ICLR 2020 workshop
(arXiv:2003.04630). The state is `x = (q, q')` in any coordinates (no canonical momenta needed); the
Euler-Lagrange equation `d/dt dL/dq' = dL/dq` gives

    q'' = (d2L/dq'2)^-1 (dL/dq - (d2L/dq' dq) q')

so the forward pass holds a per-sample gradient, a per-sample Hessian and a per-sample linear solve,
and training differentiates through all three (third derivatives of L). The flow conserves the
learned energy `E = q' . dL/dq' - L`.

What makes it train is where L starts. A network at PyTorch's initialisation has d2L/dq'2 near zero
and indefinite (eigenvalues ~ +-0.01 of both signs), so q'' is huge and of random sign wherever the
matrix is near singular, and the loss is dominated by those samples. Here L = kinetic/2 |q'|^2 +
L_theta(q, q') with L_theta at its default initialisation: d2L/dq'2 starts at ~kinetic * I, positive
definite for every sample (a free particle), and L_theta learns the rest; the extra term is part of
L (no bias: L_theta can cancel it), so the energy and the solve use it exactly. Measured (softplus
2x128, Adam 1e-3, batch 256, relative MSE of q'' over 3 seeds): pendulum after 400 steps 4e-4..1e-3
with it, 0.07..0.35 without it, 0.07..0.39 with Cranmer et al.'s weight initialisation (`init="lnn"`)
and L1 loss; double pendulum after 1,000 steps 0.16..0.21 with it, > 1 (worse than predicting zero)
without it or with `init="lnn"`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.backends import functorch_active
from ..core.checks import check_even_dim
from ..core.errors import SingularMatrixError
from ..core.mlp import MLP
from ..core.primitive import _check_mode, value_and_grad, value_grad_and_hessian
from . import integrators

Tensor = torch.Tensor

INITS = ("default", "lnn")


def lnn_init_(mlp: MLP) -> MLP:
    """Cranmer et al.'s initialisation (their Section "Initialization"), in place; returns `mlp`.

    Biases zero; weights normal with std `1/sqrt(n)` times 2.2 (first layer), 0.58 * i (hidden layer
    i = 1, 2, ...) and n (output layer), n the layer's hidden width. They fitted it so that q'' and
    the parameter gradients start at unit scale on average; d2L/dq'2 still starts indefinite for
    about half of the samples (measured), which is why `LagrangianNet` defaults to the kinetic term.
    """
    layers = [*mlp.layers, mlp.out]
    with torch.no_grad():
        for i, lin in enumerate(layers):
            n = lin.in_features if lin is mlp.out else lin.out_features
            scale = 2.2 if i == 0 else (n if lin is mlp.out else 0.58 * i)
            lin.weight.normal_(0.0, scale / math.sqrt(n))
            if lin.bias is not None:
                lin.bias.zero_()
    return mlp


class LagrangianNet(nn.Module):
    """A scalar L(q, q'); `forward(x)` returns `dx/dt = (q', q'')` from the Euler-Lagrange equation.

    ```python
    lnn = ig.LagrangianNet(4)                     # x = [q1, q2, q1', q2']; L: MLP 4 -> 128 -> 128 -> 1
    dxdt = lnn(x)                                 # (B, 4) -> (B, 4) = (q', q'')
    loss = ((lnn(x) - dxdt_target) ** 2).mean()  # trains L through third derivatives
    path = lnn.rollout(x0, torch.linspace(0, 10, 101), substeps=4)   # rk4
    ```

    **Arguments:**

    - `dim`: size of the state, even: `x = (q, q')`, `dim // 2` coordinates then their velocities.
    - `hidden_layers`, `activation`: the learned part of the default L, an `ig.MLP` on the state
      (`(128, 128)`, softplus as in the paper: L needs a non-zero third derivative to train).
    - `L`: your own scalar module `(B, dim) -> (B,)` instead (then the two above are unused).
    - `kinetic`: the fixed term `kinetic/2 |q'|^2` of L (see the module docstring): the default
      (None) is 1.0 with the default L and 0 with yours. Use the data's units: a unit mass for
      velocities of order one. It also keeps d2L/dq'2 away from singular; with `kinetic=0` a
      singular d2L/dq'2 raises `SingularMatrixError` naming the samples, never a silent NaN.
    - `init`: the default L's weights: `"default"` (PyTorch's) or `"lnn"` (Cranmer et al.'s,
      see `lnn_init_`).
    - `mode`, `backend`: as `ig.hessian` (`"exact"` trains through the second derivatives).
      The default L gets the closed-form Hessian.

    Inputs may have any leading shape `(..., dim)`, including a single state `(dim,)`.
    """

    def __init__(
        self,
        dim: int,
        hidden_layers: Sequence[int] = (128, 128),
        activation: str = "softplus",
        L: nn.Module | None = None,
        kinetic: float | None = None,
        init: str = "default",
        mode: str = "exact",
        backend: str = "auto",
    ):
        super().__init__()
        check_even_dim(dim, "LagrangianNet", "state size", "n coordinates q and their n velocities q'", "oscillator")
        if init not in INITS:
            raise ValueError(f"LagrangianNet: init must be one of {INITS}, got {init!r}")
        if kinetic is None:
            kinetic = 1.0 if L is None else 0.0
        if not isinstance(kinetic, (int, float)) or isinstance(kinetic, bool) or not math.isfinite(kinetic):
            raise ValueError(f"LagrangianNet: kinetic must be a finite float (the mass of the term kinetic/2 |q'|^2 "
                             f"in L), got {kinetic!r}")
        _check_mode(mode, "LagrangianNet")
        self.dim = dim
        self.hidden_layers, self.activation, self.init = tuple(hidden_layers), activation, init
        self._default_L = L is None
        if L is None:
            L = MLP(dim, hidden_layers, activation, out_bias=False)
            if init == "lnn":
                lnn_init_(L)
        self.L = L
        self.kinetic, self.mode, self.backend = float(kinetic), mode, backend

    def spec(self) -> dict:
        """The constructor's keyword arguments (the model protocol); L as the module when it is the user's."""
        L_args: dict = ({"hidden_layers": list(self.hidden_layers), "activation": self.activation, "init": self.init}
                        if self._default_L else {"L": self.L})
        return {"dim": self.dim, **L_args, "kinetic": self.kinetic, "mode": self.mode, "backend": self.backend}

    def _flat(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"LagrangianNet: expected a state (q, q') of shape (..., {self.dim}), got {got}")
        return x.reshape(-1, self.dim)

    def _kinetic_term(self, v: Tensor) -> Tensor:
        return 0.5 * self.kinetic * (v * v).sum(-1)

    def lagrangian(self, x: Tensor) -> Tensor:
        """L(x) = kinetic/2 |q'|^2 + L_theta(x), shape `x.shape[:-1]`."""
        xf = self._flat(x)
        return (self.L(xf).reshape(-1) + self._kinetic_term(xf[:, self.dim // 2:])).reshape(x.shape[:-1])

    def energy(self, x: Tensor) -> Tensor:
        """The learned energy `E = q' . dL/dq' - L` (conserved by the learned flow), shape `x.shape[:-1]`."""
        n = self.dim // 2
        xf = self._flat(x)
        value, g = value_and_grad(self.L, xf, mode=self.mode, backend=self.backend)
        v = xf[:, n:]
        # The kinetic term contributes q' . (k q') - k/2 |q'|^2 = k/2 |q'|^2.
        return ((v * g[:, n:]).sum(-1) - value + self._kinetic_term(v)).reshape(x.shape[:-1])

    def mass_matrix(self, x: Tensor) -> Tensor:
        """`d2L/dq'2` (the kinetic term included), shape `(*x.shape[:-1], n, n)`: what the solve inverts."""
        n = self.dim // 2
        return self._second_order(self._flat(x))[1].reshape(*x.shape[:-1], n, n)

    def _second_order(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(dL/dq, d2L/dq'2 + kinetic I, (d2L/dq'dq) q')` for states x (B, dim)."""
        n = self.dim // 2
        v = x[:, n:]
        curvature = getattr(self.L, "value_grad_and_curvature", None)  # the closed form (ig.MLP)
        if self.backend in ("auto", "closed_form") and callable(curvature):
            # n + 1 directions (the velocities' unit vectors and (q', 0)) instead of the whole Hessian's 2n.
            extra = torch.cat((v, torch.zeros_like(v)), -1).unsqueeze(-2)
            _, g, G = curvature(x, cols=range(n, 2 * n), extra=extra, rows=n)
            if self.mode == "detached":
                g, G = g.detach(), G.detach()
            M, coupling = G[..., :n], G[..., n]
        else:
            _, g, H = value_grad_and_hessian(self.L, x, mode=self.mode, backend=self.backend)
            M, coupling = H[:, n:, n:], (H[:, n:, :n] @ v.unsqueeze(-1)).squeeze(-1)
        return g[:, :n], self._with_kinetic(M), coupling

    def _with_kinetic(self, M: Tensor) -> Tensor:
        if not self.kinetic:
            return M
        return M + self.kinetic * torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)

    def acceleration(self, x: Tensor) -> Tensor:
        """`q''`, shape `(*x.shape[:-1], n)`."""
        n = self.dim // 2
        xf = self._flat(x)
        dLdq, M, coupling = self._second_order(xf)  # the kinetic term adds nothing to dL/dq or d2L/dq'dq
        qdd, info = torch.linalg.solve_ex(M, dLdq - coupling)
        if not (torch.compiler.is_compiling() or functorch_active()):  # data-dependent: eager only
            self._check_solve(xf, M, qdd, info)
        return qdd.reshape(*x.shape[:-1], n)

    def _check_solve(self, x: Tensor, M: Tensor, qdd: Tensor, info: Tensor) -> None:
        bad = (info != 0) | ~torch.isfinite(qdd).all(-1)
        if not bool(bad.any()):
            return
        idx = bad.nonzero().flatten()
        first = int(idx[0])
        if not torch.isfinite(x[first]).all():
            raise ValueError(f"LagrangianNet: the state holds NaN or inf (sample {first} of {len(x)}: "
                             f"{x[first].tolist()}); clean the input")
        cond = float(torch.linalg.cond(M[first].detach()))
        raise SingularMatrixError(
            f"LagrangianNet: d2L/dq'2 is singular for {len(idx)} of {len(x)} sample(s) (first: sample {first}, "
            f"condition number {cond:.3g}), so q'' = (d2L/dq'2)^-1 (...) has no value there. Give L a kinetic term "
            "(kinetic=1.0, in the data's units; the default with the built-in L) so that d2L/dq'2 starts "
            "positive definite, or check that your L is convex in q'."
        )

    def forward(self, x: Tensor) -> Tensor:
        n = self.dim // 2
        return torch.cat((x[..., n:], self.acceleration(x)), -1)

    def rollout(self, x0: Tensor, t: Tensor | Sequence[float], method: str = "rk4", substeps: int = 1) -> Tensor:
        """States at times `t` from `x0`, shape `(len(t), *x0.shape)`; see `ig.rollout` (`"rk4"` or
        `"euler"`: the state holds velocities, not canonical momenta, so the leapfrog does not apply)."""
        if method == "leapfrog":
            raise ValueError("LagrangianNet.rollout: method='leapfrog' needs canonical coordinates (q, p); the "
                             "state holds (q, q'). Use method='rk4'.")
        return integrators.rollout(self, x0, t, method, substeps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kinetic={self.kinetic}, mode={self.mode!r}, backend={self.backend!r}"
