"""Running a gradient-RNN over time: the whole-sequence backend path, else one step at a time.

Shared by `GradRNN.forward` and the compiled path, so the masking semantics live in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.backends import Backend, check_context, choose_backend, get_backend

Tensor = torch.Tensor


def sequence_backend(model, x: Tensor, h0: Tensor) -> Backend | None:
    """The model's backend when it has a whole-sequence path (fused, triton) for F, else None."""
    name = model.backend
    if name == "auto":
        b = choose_backend(model.F, (x[0], h0), (1,))
    else:
        b = get_backend(name)
        check_context(b, model.F, (x[0], h0), (1,), "GradRNN")
    return b if type(b).run_sequence is not Backend.run_sequence else None


def eager_sequence(model, x: Tensor, h0: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """The uncompiled `(y (T,B), hs (T,B,H))`: the backend's sequence path, else the step loop."""
    b = sequence_backend(model, x, h0)
    out = b.run_sequence(model.F, x, h0, valid, model.mode) if b is not None else None
    return out if out is not None else step_loop(model.cell, x, h0, valid)


def step_loop(step: Callable, x: Tensor, h: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """`y, hs` from `step(x_t, h) -> (y_t, h_t)` with the GradRNN's masking semantics."""
    ys, hs = [], []
    for t in range(x.shape[0]):
        y_t, h_new = step(x[t], h)
        if valid is not None:
            m = valid[t]
            y_t = torch.where(m, y_t, torch.zeros_like(y_t))
            h_new = torch.where(m.unsqueeze(1), h_new, h)
        h = h_new
        ys.append(y_t)
        hs.append(h)
    return torch.stack(ys), torch.stack(hs)
