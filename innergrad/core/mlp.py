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

    def _second_order_pass(self, inputs: Sequence[Tensor], argnums: int | Sequence[int]):
        """Forward and hand backward, keeping what second derivatives need.

        Returns the value, the gradient w.r.t. the concatenated columns of `inputs[argnums]` (B, n),
        those columns of the first weight `W1s` (w1, n), and per hidden layer k: `s'(a_k)` and
        `c_k = s''(a_k) * dF/ds_k`, the curvature weights of `d2F/dz2 = sum_k A_k^T diag(c_k) A_k`
        with `A_k = da_k/dz`.
        """
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        cols = self._columns(nums)
        act = self._act
        value, pre = self._forward_keeping(inputs)
        L = len(self.layers)
        d1: list[Tensor] = list(pre)
        curv: list[Tensor] = list(pre)
        u = self.out.weight.squeeze(0)  # dF/ds_k, carried down
        for k in range(L - 1, -1, -1):
            s1, s2 = act.d12(pre[k])
            d1[k], curv[k] = s1, s2 * u
            g = s1 * u
            u = g @ self._linear(k).weight
        if L:
            W1s = self._linear(0).weight[:, cols]
            grad = u[..., cols]
        else:  # a linear model: the gradient is the weight itself, per sample; no curvature
            W1s = self.out.weight[:, cols]
            grad = W1s.expand(*value.shape, len(cols))
        return value, grad, W1s, d1, curv

    def _split(self, grad: Tensor, argnums: int | Sequence[int]) -> tuple[Tensor, ...]:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        return tuple(grad.split([self.in_sizes[i] for i in nums], -1))

    def value_grad_and_hessian(
        self, *inputs: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """`(F, dF/dinputs[argnums], H)` in closed form, H the per-sample Hessian (B, n, n) over the
        concatenated requested inputs (n their total size); the closed-form backend's protocol.

        `H = sum_k A_k^T diag(c_k) A_k`, `A_1 = W1[:, cols]`, `A_k = W_k diag(s'(a_{k-1})) A_{k-1}`:
        the Jacobians are carried forward projected on the n requested columns, so the cost is
        O(B * width^2 * n) (n tangents through the layers), never O(B * width^3). An ordinary
        first-order graph in the parameters: training through H is one backward.
        """
        value, grad, W1s, d1, curv = self._second_order_pass(inputs, argnums)
        n = W1s.shape[1]
        if not self.layers:
            return value, self._split(grad, argnums), value.new_zeros(*value.shape, n, n)
        # Layer 1: A_1 is shared by all samples, so H_1 = c_1 @ (A_1 outer A_1) is one matmul.
        outer = (W1s.unsqueeze(-1) * W1s.unsqueeze(-2)).reshape(W1s.shape[0], n * n)
        H = (curv[0] @ outer).reshape(*value.shape, n, n)
        # Carried as A^T (..., n, w): then each layer is one (B*n, w) @ (w, w') matmul, the cost of n
        # more rows through the forward pass (a broadcast W @ A would be a batched matmul instead).
        At = W1s.T * d1[0].unsqueeze(-2)  # (diag(s'(a_1)) A_1)^T
        for k in range(1, len(self.layers)):
            At = At @ self._linear(k).weight.T  # A_k^T
            H = H + (At * curv[k].unsqueeze(-2)) @ At.transpose(-1, -2)
            At = At * d1[k].unsqueeze(-2)
        return value, self._split(grad, argnums), H

    def value_grad_and_hvp(
        self, *inputs: Tensor, tangent: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """`(F, dF/dinputs[argnums], H v)` in closed form for `v = tangent` (B, n) over the concatenated
        requested inputs: one tangent forward (`t_k = A_k v`) and one adjoint pass, O(B * width^2)."""
        value, grad, W1s, d1, curv = self._second_order_pass(inputs, argnums)
        L = len(self.layers)
        if not L:
            return value, self._split(grad, argnums), torch.zeros_like(tangent)
        t = tangent @ W1s.T
        ys = []
        for k in range(L):
            if k:
                t = (d1[k - 1] * t) @ self._linear(k).weight.T
            ys.append(curv[k] * t)
        e = ys[-1]
        for k in range(L - 1, 0, -1):
            e = ys[k - 1] + d1[k - 1] * (e @ self._linear(k).weight)
        return value, self._split(grad, argnums), e @ W1s

    def _linear(self, k: int) -> nn.Linear:
        layer = self.layers[k]
        assert isinstance(layer, nn.Linear)  # for the type checker: ModuleList items are plain Modules
        return layer

    def extra_repr(self) -> str:
        return f"in_sizes={self.in_sizes}, activation={self.activation_name!r}"
