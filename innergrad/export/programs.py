"""The inference programs that get exported: plain first-order modules, no autograd inside.

A model's forward pass differentiates F; an exported program cannot (torch.export does not trace
`autograd.grad`, ONNX has no gradient operator). So each program evaluates F's input gradient in
closed form (`value_and_input_grad`, which `ig.MLP` provides), an ordinary forward graph that both
torch.export and the ONNX converter can follow. The GradRNN's time loop is not here: it is torch's
`scan` for .pt2 (`pt2.py`) and an ONNX Scan for .onnx (`onnx_graph.py`), so T stays dynamic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.errors import InnergradError
from ..models.conservative import ConservativeField, _squeeze
from ..models.gradrnn import GradRNN, GradRNNCell
from ..models.hamiltonian import HamiltonianNet, symplectic_gradient

Tensor = torch.Tensor


class ExportError(InnergradError):
    """A model (or part of one) that cannot be exported; the message says what and what to do."""


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


class GradRNNStep(nn.Module):
    """`(h, x_t) -> (h_t, y_t)`: one step of the gradient-RNN, F's h-gradient in closed form.

    State first, then the scanned input, outputs likewise: the argument order of both torch's
    `scan` and ONNX's Scan body.
    """

    def __init__(self, F: nn.Module):
        super().__init__()
        self.F = closed_form(F, "GradRNN's F")

    def forward(self, h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        y, (g,) = self.F.value_and_input_grad(x_t, h, argnums=1)
        # scan refuses outputs that alias its inputs or each other; clones keep it a pure function.
        return g.clone(), _squeeze(y).clone()


class HamiltonianProgram(nn.Module):
    """`x (B, dim) -> dx (B, dim)`, the learned vector field `J grad H`."""

    def __init__(self, model: HamiltonianNet):
        super().__init__()
        self.H = closed_form(model.H, "HamiltonianNet's H")

    def forward(self, x: Tensor) -> Tensor:
        _, (g,) = self.H.value_and_input_grad(x, argnums=0)
        return symplectic_gradient(g)


class ConservativeProgram(nn.Module):
    """`(x, *context) -> (energy (B,), forces shaped like x)`."""

    def __init__(self, model: ConservativeField):
        super().__init__()
        self.E = closed_form(model.energy_module, "ConservativeField's energy")

    def forward(self, x: Tensor, *context: Tensor) -> tuple[Tensor, Tensor]:
        e, (g,) = self.E.value_and_input_grad(x, *context, argnums=0)
        return _squeeze(e), -g


def kind_of(model: nn.Module) -> str:
    """Which exported program a model becomes, or an `ExportError` naming the models that export."""
    for cls, kind in ((GradRNN, "gradrnn"), (HamiltonianNet, "hamiltonian"), (ConservativeField, "conservative")):
        if isinstance(model, cls):
            return kind
    if isinstance(model, GradRNNCell):
        raise ExportError("export: got a GradRNNCell; export the GradRNN around it (the time loop is part of the "
                          "exported program), e.g. ig.export(rnn, 'model.onnx')")
    raise ExportError(f"export: cannot export a {type(model).__name__}; expected an ig.GradRNN, ig.HamiltonianNet "
                      "or ig.ConservativeField")
