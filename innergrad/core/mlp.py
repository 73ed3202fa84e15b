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

    def value_and_input_grad(
        self, *inputs: Tensor, argnums: int | Sequence[int] = 0
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`(F(*inputs), dF/dinputs[argnums])` in closed form; the protocol of the closed-form backend."""
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        z = self._concat(inputs)
        act = self._act
        pre = []
        for lin in self.layers:
            a = lin(z)
            pre.append(a)
            z = act.fn(a)
        value = self.out(z).squeeze(-1)
        # Backward through the layers by hand: g = dF/da_k, carried down to the first layer's input.
        g = self.out.weight.squeeze(0)
        for k in range(len(self.layers) - 1, -1, -1):
            g = act.deriv(pre[k]) * g
            if k > 0:
                g = g @ self._linear(k).weight
        W1 = self._linear(0).weight if self.layers else self.out.weight
        if not self.layers:  # a linear model: the gradient is the weight itself, per sample
            g = torch.ones_like(value).unsqueeze(-1)
        offsets = [0]
        for s in self.in_sizes:
            offsets.append(offsets[-1] + s)
        grads = tuple(g @ W1[:, offsets[i] : offsets[i + 1]] for i in nums)
        return value, grads

    def _linear(self, k: int) -> nn.Linear:
        layer = self.layers[k]
        assert isinstance(layer, nn.Linear)  # for the type checker: ModuleList items are plain Modules
        return layer

    def extra_repr(self) -> str:
        return f"in_sizes={self.in_sizes}, activation={self.activation_name!r}"
