"""torch.export programs (.pt2): the GradRNN's time loop is torch's `scan` operator, not unrolled."""

from __future__ import annotations

import io

import torch
from torch import nn

from .programs import ExportError, GradRNNStep

Tensor = torch.Tensor


class GradRNNProgram(nn.Module):
    """`(x, h0) -> (y, h_last)` over the whole sequence, in the GradRNN's layout."""

    def __init__(self, F: nn.Module, batch_first: bool):
        super().__init__()
        self.step = GradRNNStep(F)
        self.batch_first = batch_first

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        from torch._higher_order_ops.scan import scan

        step = self.step

        def combine(h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
            return step(h, x_t)

        h_last, y = scan(combine, h0, x, dim=1 if self.batch_first else 0)
        return y, h_last  # scan stacks the outputs along `dim` too


def export_program(program: nn.Module, args: tuple[Tensor, ...], dynamic_shapes: tuple) -> bytes:
    """The `.pt2` bytes of `program` traced at `args`, with the named dimensions left dynamic."""
    try:
        with torch.no_grad():
            ep = torch.export.export(program.eval(), args, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch.export raises many types; all mean "cannot trace this module"
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        hint = ""
        if "aliasing" in text:
            hint = ("; torch's scan refuses parameter views taken by attribute (W.T, W.mT) inside the step: write "
                    "W.t() or W.transpose(0, 1) in value_and_input_grad")
        raise ExportError(f"export: torch.export cannot trace {type(program).__name__}: {first[:300]}{hint}") from e
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()
