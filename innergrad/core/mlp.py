"""A scalar MLP that knows its own input-gradient in closed form.

`MLP(in_features=(8, 32))` concatenates its inputs (x first, then h), so `F(x, h)` reads like the
math. `value_and_input_grad` evaluates the value and `dF/dinputs` in one forward pass that shares
the activations: for `F = w_L . s(a_{L-1})`, `a_k = W_k s(a_{k-1}) + b_k`,

    dF/dz = W_1^T (s'(a_1) * W_2^T (s'(a_2) * ... w_L))

restricted to the columns of `W_1` that belong to the requested inputs. The result is an ordinary
first-order graph, so training through it takes one backward and `torch.compile` handles it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .activations import get_activation
from .checks import check_input_sizes

Tensor = torch.Tensor


class MLP(nn.Module):
    """Scalar-valued multilayer perceptron `F(*inputs) -> (B,)` on the concatenated inputs.

    **Arguments:**

    - `in_features`: an int (one input) or the sizes of several inputs, concatenated in order.
    - `hidden_layers`: widths of the hidden layers, e.g. `(128, 128)`.
    - `activation`: `"softplus"` (default), `"tanh"`, `"sigmoid"`, `"silu"`, `"gelu"`, `"sin"`, `"elu"`
      or `"relu"` (warns when trained through its gradient).
    - `out_bias`: bias on the scalar output (does not change the gradient).
    - `init`: `"default"` (PyTorch's) or `"orthogonal"` (as in the Hamiltonian NN paper).
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        hidden_layers: Sequence[int] = (128, 128),
        activation: str = "softplus",
        out_bias: bool = True,
        init: str = "default",
    ):
        super().__init__()
        sizes = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"MLP: in_features must be positive ints, got {in_features!r}")
        hidden = tuple(hidden_layers)
        if any(not isinstance(w, int) or w < 1 for w in hidden):
            raise ValueError(f"MLP: hidden_layers must be positive ints, got {hidden_layers!r}")
        self.in_sizes = sizes
        self.hidden_layers, self.out_bias, self.init = hidden, bool(out_bias), init
        self.activation_name = activation.lower()
        self._act = get_activation(activation)
        widths = (sum(sizes), *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], 1, bias=out_bias)
        if init == "orthogonal":
            for lin in (*self.layers, self.out):
                nn.init.orthogonal_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        elif init != "default":
            raise ValueError(f"MLP: init must be 'default' or 'orthogonal', got {init!r}")

    def spec(self) -> dict:
        """The constructor's arguments (the model protocol: `innergrad/models/protocol.py`)."""
        return {"in_features": list(self.in_sizes), "hidden_layers": list(self.hidden_layers),
                "activation": self.activation_name, "out_bias": self.out_bias, "init": self.init}

    def _concat(self, inputs: Sequence[Tensor]) -> Tensor:
        wdt = self.out.weight.dtype
        for i, t in enumerate(inputs):
            if not isinstance(t, Tensor):
                raise TypeError(f"MLP: input {i} must be a torch.Tensor, got {type(t).__name__}; wrap it with "
                                "torch.as_tensor(...)")
        check_input_sizes(self, inputs, "MLP")
        for i, t in enumerate(inputs):
            # (Under autocast, layers hand on lower-precision outputs by design.)
            if t.dtype != wdt and not torch.is_autocast_enabled(t.device.type):
                raise TypeError(f"MLP: input {i} has dtype {t.dtype}, but the weights are {wdt}; convert the "
                                f"input (.to({wdt})) or the model (.to({t.dtype}))")
            if t.shape[:-1] != inputs[0].shape[:-1]:
                raise ValueError(f"MLP: inputs 0 and {i} must agree in every dimension but the last (the batch), "
                                 f"got shapes {tuple(inputs[0].shape)} and {tuple(t.shape)}")
        return inputs[0] if len(inputs) == 1 else torch.cat(tuple(inputs), -1)

    def forward(self, *inputs: Tensor) -> Tensor:
        z = self._concat(inputs)
        fn = self._act.fn
        for lin in self.layers:
            z = fn(lin(z))
        return self.out(z).squeeze(-1)

    def _forward_keeping(self, inputs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """`(F, [a_1, ..., a_L])`: the value and the pre-activations the closed forms reuse."""
        z = self._concat(inputs)
        pre = []
        for lin in self.layers:
            a = lin(z)
            pre.append(a)
            z = self._act.fn(a)
        return self.out(z).squeeze(-1), pre

    def value_and_input_grad(
        self, *inputs: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`(F(*inputs), dF/dinputs[argnums])` in closed form; the protocol of the closed-form backend."""
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        act = self._act
        value, pre = self._forward_keeping(inputs)
        # Backward through the layers by hand: g = dF/da_k, carried down to the first layer's input.
        g = self.out.weight.squeeze(0)
        for k in range(len(self.layers) - 1, -1, -1):
            g = act.deriv(pre[k]) * g
            if k > 0:
                g = g @ self._linear(k).weight
        W1 = self._linear(0).weight if self.layers else self.out.weight
        if not self.layers:  # a linear model: the gradient is the weight itself, per sample
            g = torch.ones_like(value).unsqueeze(-1)
        offsets = self._offsets()
        grads = tuple(g @ W1[:, offsets[i] : offsets[i + 1]] for i in nums)
        return value, grads

    def _offsets(self) -> list[int]:
        offsets = [0]
        for s in self.in_sizes:
            offsets.append(offsets[-1] + s)
        return offsets

    def _columns(self, nums: Sequence[int]) -> list[int]:
        offsets = self._offsets()
        return [c for i in nums for c in range(offsets[i], offsets[i + 1])]

    def _second_order_pass(self, inputs: Sequence[Tensor]):
        """Forward and hand backward, keeping what second derivatives need.

        Returns the value, the gradient w.r.t. all the concatenated inputs (..., n_in), the first
        weight `W1` (w1, n_in), and per hidden layer k: `s'(a_k)` and `c_k = s''(a_k) * dF/ds_k`, the
        curvature weights of `d2F/dz2 = sum_k A_k^T diag(c_k) A_k` with `A_k = da_k/dz`.
        """
        act = self._act
        value, pre = self._forward_keeping(inputs)
        L = len(self.layers)
        d1: list[Tensor] = list(pre)
        curv: list[Tensor] = list(pre)
        u = self.out.weight.squeeze(0)  # dF/ds_k, carried down
        for k in range(L - 1, -1, -1):
            s1, s2 = act.d12(pre[k])
            d1[k], curv[k] = s1, s2 * u
            u = (s1 * u) @ self._linear(k).weight
        if L:
            return value, u, self._linear(0).weight, d1, curv
        # A linear model: the gradient is the weight itself, per sample; no curvature.
        W = self.out.weight
        return value, W.expand(*value.shape, W.shape[1]), W, d1, curv

    def _split(self, grad: Tensor, argnums: int | Sequence[int]) -> tuple[Tensor, ...]:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        return tuple(grad.split([self.in_sizes[i] for i in nums], -1))

    def value_grad_and_curvature(
        self, *inputs: Tensor, cols: Sequence[int], extra: Tensor | None = None, rows: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`(F, dF/dz, G)` with `G = T[:, :rows]^T (d2F/dz2) T`, z the concatenated inputs (n_in of them).

        The directions T are the unit vectors of the columns `cols` (shared by all samples), then
        the rows of `extra` (..., k, n_in) per sample: m = len(cols) + k of them; `rows` (default m)
        keeps only G's first rows. `dF/dz` is over all of z. The Jacobians `A_k T` are carried forward
        as (..., m, w) rows, one (B*m, w) @ (w, w') matmul per layer (the cost of m more rows through
        the forward pass), and contracted with `c_k`: O(B * width^2 * m), never O(B * width^3). A
        first-order graph in the parameters: training through G is one backward.
        A Lagrangian network takes `cols` = the velocities and `extra` = (0, q') to get d2L/dq'2 and
        (d2L/dq'dq) q' from n + 1 directions instead of the 2n of the whole Hessian.
        """
        value, grad, W1, d1, curv = self._second_order_pass(inputs)
        A = W1[:, list(cols)].T  # (m_shared, w1): the first layer's directions, shared by all samples
        if extra is not None:
            A = torch.cat((A.expand(*extra.shape[:-2], *A.shape), extra @ W1.T), -2)
        m = A.shape[-2]
        rows = m if rows is None else rows
        if not self.layers:
            return value, grad, value.new_zeros(*value.shape, rows, m)
        if A.dim() == 2:  # shared directions: layer 1's term is one matmul with their outer products
            outer = (A[:rows, None, :] * A[None, :, :]).reshape(rows * m, -1)
            G = (curv[0] @ outer.T).reshape(*value.shape, rows, m)
        else:
            G = _contract(A, curv[0], rows)
        At = A * d1[0].unsqueeze(-2)
        for k in range(1, len(self.layers)):
            At = At @ self._linear(k).weight.T  # (A_k T)^T
            G = G + _contract(At, curv[k], rows)
            At = At * d1[k].unsqueeze(-2)
        return value, grad, G

    def value_grad_and_hessian(
        self, *inputs: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """`(F, dF/dinputs[argnums], H)` in closed form, H the per-sample Hessian (B, n, n) over the
        concatenated requested inputs (n their total size); the closed-form backend's protocol.
        `value_grad_and_curvature` with the requested columns as directions."""
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        cols = self._columns(nums)
        value, grad, H = self.value_grad_and_curvature(*inputs, cols=cols)
        return value, self._split(grad[..., cols], nums), H

    def value_grad_and_hvp(
        self, *inputs: Tensor, tangent: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """`(F, dF/dinputs[argnums], H v)` in closed form for `v = tangent` (B, n) over the concatenated
        requested inputs: one tangent forward (`t_k = A_k v`) and one adjoint pass, O(B * width^2)."""
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        cols = self._columns(nums)
        value, grad, W1, d1, curv = self._second_order_pass(inputs)
        grads = self._split(grad[..., cols], nums)
        L = len(self.layers)
        if not L:
            return value, grads, torch.zeros_like(tangent)
        W1s = W1[:, cols]
        t = tangent @ W1s.T
        ys = []
        for k in range(L):
            if k:
                t = (d1[k - 1] * t) @ self._linear(k).weight.T
            ys.append(curv[k] * t)
        e = ys[-1]
        for k in range(L - 1, 0, -1):
            e = ys[k - 1] + d1[k - 1] * (e @ self._linear(k).weight)
        return value, grads, e @ W1s

    def _linear(self, k: int) -> nn.Linear:
        layer = self.layers[k]
        assert isinstance(layer, nn.Linear)  # for the type checker: ModuleList items are plain Modules
        return layer

    def extra_repr(self) -> str:
        return f"in_sizes={self.in_sizes}, activation={self.activation_name!r}"


def _contract(A: Tensor, c: Tensor, rows: int) -> Tensor:
    """`A[..., :rows, :] diag(c) A^T` for A (..., m, w), c (..., w). (A batched matmul of tiny blocks: measured
    end to end in an LNN step, it beat a broadcast product and a loop over directions.)"""
    return (A[..., :rows, :] * c.unsqueeze(-2)) @ A.transpose(-1, -2)
