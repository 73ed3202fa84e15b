"""What every model says about itself: its spec (how to rebuild it) and its inference program (how to export it).

A model class implements

- `spec(self) -> dict`: its constructor's keyword arguments, JSON-able (a module-valued argument may be
  given as the module itself when that module describes itself too, e.g. an `ig.MLP`);
- `from_spec(cls, spec) -> model` (optional classmethod; the default is `cls(**spec)`);
- `export_program(self, example=None) -> Program` (optional; without it the model does not export).

The table of models (`registry.MODELS`, extended by `ig.register_model`) adds the `kind`; nothing
else in innergrad names a model class. Exported programs are plain first-order modules: a model's
forward pass differentiates a learned scalar, which neither torch.export (no `autograd.grad`) nor ONNX
(no gradient operator) can follow, so each program evaluates that gradient in closed form
(`value_and_input_grad`, which `ig.MLP` provides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import ExportError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Program:
    """What `ig.export` writes for a model.

    **Feed-forward** (`time_axis=None`): `module(*example) -> outputs`; every input's dim 0 is the batch.

    **Recurrent** (`time_axis` 0 or 1): `module(state, x_t) -> (state_next, y_t)` is one step, run over
    `x`'s time axis (the batch is the other of axes 0, 1); `inputs` are `(x, state0)` and `outputs`
    `(y, state_last)`. `state0` is optional in the exported file: left out, it is `initial_state`
    (the model's learned one, or zeros) broadcast to the batch. `example` holds `x` alone.
    """

    module: nn.Module
    example: tuple[Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    time_axis: int | None = None
    initial_state: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module) or not all(isinstance(a, Tensor) for a in self.example):
            raise ExportError("export: a Program needs an nn.Module and a tuple of example tensors")
        if self.time_axis is not None and (self.time_axis not in (0, 1) or self.initial_state is None
                                           or len(self.example) != 1):
            raise ExportError("export: a recurrent Program has time_axis 0 or 1, an initial_state (hidden,) and the "
                              "example x alone")

    @property
    def recurrent(self) -> bool:
        return self.time_axis is not None

    def axes(self) -> tuple[int, int]:
        """`(time axis, batch axis)` of a recurrent program's x."""
        if self.time_axis is None:
            raise ExportError("export: a feed-forward program has no time axis")
        return self.time_axis, 1 - self.time_axis

    def state0(self) -> Tensor:
        """A recurrent program's initial state `(hidden,)` in the example's dtype."""
        if self.initial_state is None:
            raise ExportError("export: a feed-forward program has no initial state")
        return self.initial_state.detach().to(self.example[0].dtype)


def closed_form(f: nn.Module, role: str) -> Any:
    """`f` itself when its input gradient is available in closed form, else an `ExportError`."""
    if callable(getattr(f, "value_and_input_grad", None)):
        return f
    raise ExportError(
        f"export: the {role} ({type(f).__name__}) has no closed-form input gradient; an exported program cannot "
        "call autograd (torch.export does not trace torch.autograd.grad and ONNX has no gradient operator). "
        f"Use ig.MLP as the {role}, or give your module a method value_and_input_grad(*inputs, argnums) -> "
        "(value, (grad, ...)) written with ordinary tensor operations (see ig.MLP.value_and_input_grad)"
    )


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (the default dtype if it has none)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.get_default_dtype()


def example_batch(example, what: str) -> tuple[Tensor, ...]:
    """A user's `example` (a tensor or tuple of tensors, batch on dim 0) as a batch of 2.

    torch.export specialises a batch of 1 to the constant 1, so the example always has 2 rows.
    """
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not args or not all(isinstance(a, Tensor) and a.dim() >= 1 for a in args):
        raise ExportError(f"export: example must be a tensor with the batch on dim 0, or a tuple of such tensors "
                          f"({what})")
    return tuple(torch.cat([a[:1], a[:1]]) for a in args)


__all__ = ["Program", "closed_form", "example_batch", "model_dtype"]
