"""The gradient-RNN: `y_t = F(x_t, h_{t-1})`, `h_t = dF/dh (x_t, h_{t-1})`, F a learned scalar function."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.checks import check_input_sizes, warn_if_kinked
from ..core.errors import ExportError, ShapeError
from ..core.mlp import MLP
from ..core.primitive import _check_mode, value_and_grad
from .compiled import CompiledSequence
from .protocol import Program, closed_form, model_dtype
from .sequence import eager_sequence

Tensor = torch.Tensor


class GradRNNCell(nn.Module):
    """One step: `(x_t, h_{t-1}) -> (y_t, h_t)` with `y_t = F(x_t, h_{t-1})`, `h_t = dF/dh`.

    **Arguments:**

    - `input_size`, `hidden_size`: sizes of x_t and h_t.
    - `hidden_layers`, `activation`: the default F, an `ig.MLP` on `concat([x, h], -1)`.
    - `F`: your own module `F(x, h) -> (B,)` instead of the default (then the sizes only document).
    - `mode`: `"exact"` (train through every second-order term) or `"detached"` (h_t is a constant
      by-product; gradients reach F only through y_t's direct dependence on its parameters).
    - `backend`: a name from `ig.backends()`, or `"auto"`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        hidden_layers: Sequence[int] = (128, 128),
        activation: str = "softplus",
        F: nn.Module | None = None,
        mode: str = "exact",
        backend: str = "auto",
    ):
        super().__init__()
        _check_mode(mode, "GradRNNCell")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.F = F if F is not None else MLP((self.input_size, self.hidden_size), hidden_layers, activation)
        sizes = getattr(self.F, "in_sizes", None)
        if sizes is not None and tuple(sizes) != (self.input_size, self.hidden_size):
            raise ShapeError(
                f"GradRNN: F.in_sizes={tuple(sizes)} must be (input_size, hidden_size) = "
                f"{(self.input_size, self.hidden_size)}: F reads [x, h] and its gradient in h is the next h. "
                f"Build F as ig.MLP(({self.input_size}, {self.hidden_size}), ...) or give sizes that match F"
            )
        self.mode, self.backend = mode, backend
        if mode == "exact":
            warn_if_kinked(self.F, "GradRNN")

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return value_and_grad(self.F, x, h, argnums=1, mode=self.mode, backend=self.backend)

    def export_program(self, example=None) -> Program:
        raise ExportError("export: got a GradRNNCell; export the GradRNN around it (the time loop is part of the "
                          "exported program), e.g. ig.export(rnn, 'model.onnx')")

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, mode={self.mode!r}"


class GradRNNStep(nn.Module):
    """`(h, x_t) -> (h_t, y_t)`: one exported step of the gradient-RNN, F's h-gradient in closed form.

    State first, then the scanned input, outputs likewise: the argument order of both torch's
    `scan` and ONNX's Scan body.
    """

    def __init__(self, F: nn.Module):
        super().__init__()
        self.F = closed_form(F, "GradRNN's F")

    def forward(self, h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        y, (g,) = self.F.value_and_input_grad(x_t, h, argnums=1)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y.squeeze(1)
        # scan refuses outputs that alias its inputs or each other; clones keep it a pure function.
        return g.clone(), y.clone()


class GradRNN(nn.Module):
    """Gradient-RNN over a sequence.

    ```python
    rnn = ig.GradRNN(input_size=8, hidden_size=32)
    y, h_last = rnn(x)                      # x: (T, B, 8) -> y: (T, B), h_last: (B, 32)
    y, h_last, hs = rnn(x, lengths=lengths, return_hidden=True)   # hs: (T, B, 32)
    ```

    Takes the arguments of `GradRNNCell`, plus `batch_first` (x is `(B, T, input_size)` and y, hs
    are batch-first too), `learn_h0` (a trained initial state instead of zeros) and `compile`
    (compiled steps, and on CUDA the training step replayed as CUDA graphs: see `ig.compile`).

    `forward(x, h0=None, lengths=None, mask=None, return_hidden=False)`: `lengths` (B,) or `mask`
    (T, B) marks valid steps; past a sequence's end its h is held and its y is 0 (no loss, no
    gradient). Under `torch.no_grad()` / `inference_mode()` the hidden states are still computed.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        hidden_layers: Sequence[int] = (128, 128),
        activation: str = "softplus",
        F: nn.Module | None = None,
        mode: str = "exact",
        backend: str = "auto",
        batch_first: bool = False,
        learn_h0: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.cell = GradRNNCell(input_size, hidden_size, hidden_layers, activation, F, mode, backend)
        self.batch_first = batch_first
        self.h0 = nn.Parameter(torch.zeros(hidden_size)) if learn_h0 else None
        # `compile=True`: compiled steps, CUDA graphs on CUDA (see `ig.compile`); None runs eagerly.
        self.compiled = CompiledSequence() if compile else None

    def spec(self) -> dict:
        """The constructor's arguments (the model protocol, `models/protocol.py`); F as its sizes and
        activation when it is the default MLP, else as the module (which must describe itself too)."""
        f_args: dict = {"F": self.F}
        if isinstance(self.F, MLP):
            default = MLP((self.input_size, self.hidden_size), self.F.hidden_layers, self.F.activation_name)
            if self.F.spec() == default.spec():
                f_args = {"hidden_layers": list(self.F.hidden_layers), "activation": self.F.activation_name}
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, **f_args, "mode": self.mode,
                "backend": self.backend, "batch_first": self.batch_first, "learn_h0": self.h0 is not None,
                "compile": self.compiled is not None}

    def export_program(self, example=None) -> Program:
        """The step `(h, x_t) -> (h_t, y_t)` scanned over time; h0 optional (the learned one, else zeros)."""
        dtype = model_dtype(self)
        shape = (2, 3, self.input_size) if self.batch_first else (3, 2, self.input_size)
        h0 = self.h0.detach() if self.h0 is not None else torch.zeros(self.hidden_size)
        return Program(GradRNNStep(self.F), (torch.randn(shape, dtype=dtype),), ("x", "h0"), ("y", "h_last"),
                       time_axis=1 if self.batch_first else 0, initial_state=h0.to(dtype))

    @property
    def F(self) -> nn.Module:
        return self.cell.F

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    @property
    def mode(self) -> str:
        return self.cell.mode

    @mode.setter
    def mode(self, value: str) -> None:
        _check_mode(value, "GradRNN")
        self.cell.mode = value

    @property
    def backend(self) -> str:
        return self.cell.backend

    @backend.setter
    def backend(self, value: str) -> None:
        self.cell.backend = value

    def step_mask(self, T: int, B: int, lengths: Tensor | None, mask: Tensor | None, device) -> Tensor | None:
        """(T, B) bool mask of valid steps, or None when every step is valid."""
        if lengths is not None and mask is not None:
            raise ValueError("GradRNN: give lengths or mask, not both")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=device)
            if lengths.shape != (B,):
                raise ValueError(f"GradRNN: lengths must have shape ({B},), got {tuple(lengths.shape)}")
            if lengths.dtype.is_floating_point or bool((lengths < 0).any()) or bool((lengths > T).any()):
                raise ValueError(f"GradRNN: lengths must be integers in [0, T={T}], got {lengths.tolist()}")
            return torch.arange(T, device=device).unsqueeze(1) < lengths.unsqueeze(0)
        if mask is not None:
            mask = torch.as_tensor(mask, device=device)
            if self.batch_first:
                mask = mask.transpose(0, 1)
            if mask.shape != (T, B):
                raise ValueError(f"GradRNN: mask must have shape {(T, B)} (time-major), got {tuple(mask.shape)}")
            return mask.bool()
        return None

    def _run_sequence(self, x: Tensor, h: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """`(y, hs)` over all T steps: compiled if asked, else a whole-sequence backend, else step by step."""
        if self.compiled is not None:
            out = self.compiled(self, x, h, valid)
            if out is not None:
                return out
        return eager_sequence(self, x, h, valid)

    def forward(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        lengths: Tensor | None = None,
        mask: Tensor | None = None,
        return_hidden: bool = False,
    ):
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"GradRNN: x must have shape {layout}, got {got}")
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, D = x.shape
        if D != self.input_size:
            raise ValueError(f"GradRNN: x's last dimension must be input_size={self.input_size}, got {D}")
        if h0 is None:
            h = (self.h0.to(x.dtype).expand(B, -1) if self.h0 is not None
                 else x.new_zeros(B, self.hidden_size))
        else:
            if h0.shape != (B, self.hidden_size):
                raise ValueError(f"GradRNN: h0 must have shape {(B, self.hidden_size)}, got {tuple(h0.shape)}")
            h = h0
        # F may have been replaced since construction; no backend or kernel runs on sizes F does not take.
        check_input_sizes(self.F, (x, h), "GradRNN", ("x", "h"))
        valid = self.step_mask(T, B, lengths, mask, x.device)
        if T == 0:
            y, H = x.new_zeros(0, B), x.new_zeros(0, B, self.hidden_size)
        else:
            y, H = self._run_sequence(x, h, valid)
            h = H[-1]
        if self.batch_first:
            y, H = y.transpose(0, 1), H.transpose(0, 1)
        return (y, h, H) if return_hidden else (y, h)
