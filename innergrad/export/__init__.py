"""Export a trained model to a file that runs without innergrad: ONNX (.onnx) or torch.export (.pt2).

```python
ig.export(rnn, "model.onnx")     # onnxruntime: sess.run(None, {"x": x})  -> [y, h_last]
ig.export(rnn, "model.pt2")      # torch.export.load("model.pt2").module()(x, h0) -> (y, h_last)
```

What gets exported (inference only; batch and sequence length stay dynamic):

| model                 | inputs                                   | outputs            |
|-----------------------|------------------------------------------|--------------------|
| `GradRNN`             | `x` (T, B, in) or (B, T, in) if batch_first, `h0` (B, hidden) | `y`, `h_last` |
| `HamiltonianNet`      | `x` (B, dim)                             | `dx`               |
| `ConservativeField`   | `x` (B, ...), then any context inputs    | `energy`, `forces` |

`h0` is optional in the .onnx file (omitted: zeros, or the learned initial state) and required by the
.pt2 program (pass `torch.zeros(B, hidden)` for the default). The gradient inside the forward pass is
F's input gradient in closed form, whatever backend the model was trained with: F must be an `ig.MLP`
or define `value_and_input_grad` (see `programs.py`). `lengths`/`mask` are not part of the exported
programs: run each sequence at its own length (T is dynamic) or pad at the end and read `y` up to
each length (masking affects only the steps past a sequence's end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .programs import ConservativeProgram, ExportError, HamiltonianProgram, kind_of

Tensor = torch.Tensor

FORMATS = (".onnx", ".pt2")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.get_default_dtype()


def _example(model: Any, kind: str, example, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Tracing inputs with a batch of 2 (a batch of 1 would be specialised to 1 by torch.export)."""
    if example is None:
        if kind == "hamiltonian":
            return (torch.randn(2, model.dim, dtype=dtype),)
        f = model.energy_module
        sizes = getattr(f, "in_sizes", None)
        if sizes is None or len(sizes) != 1:
            raise ExportError(f"export: cannot tell the input shape of the energy {type(f).__name__}; pass "
                              "example=x (one batch of inputs, or a tuple (x, *context))")
        return (torch.randn(2, sizes[0], dtype=dtype),)
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not args or not all(isinstance(a, Tensor) and a.dim() >= 1 for a in args):
        raise ExportError("export: example must be a tensor with the batch on dim 0, or a tuple of such tensors")
    return tuple(torch.cat([a[:1], a[:1]]) for a in args)


def export(model: nn.Module, path: str | Path, *, example: Tensor | tuple[Tensor, ...] | None = None,
           overwrite: bool = False, inputs=(), verify=None) -> Path:
    """Write `model` to `path` as ONNX (`.onnx`) or a torch.export program (`.pt2`); returns the path.

    `example`: inputs to trace with, needed only for a `ConservativeField` whose energy is not an
    `ig.MLP` (its input shape is unknown); its batch size does not matter. An existing file is
    replaced only with `overwrite=True`. The file is written by `core/files.write_output`: atomically
    and exclusively, never onto one of `inputs` (the files the caller read the model from);
    `verify(tmp_path)` checks the finished file before it gets its name (see `verify_exported`), so a
    failed export or check leaves nothing behind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"export: unknown format {suffix or '(no suffix)'!r} in {path}; name the file *.onnx "
                          "(ONNX Runtime) or *.pt2 (torch.export)")
    if path.exists() and not overwrite:
        raise ExportError(f"export: {path} exists; choose another file name or pass overwrite=True to replace it")
    kind = kind_of(model)
    dtype = _dtype(model)
    if suffix == ".onnx":
        data = _onnx_bytes(model, kind, example, dtype)
    else:
        data = _pt2_bytes(model, kind, example, dtype)
    from ..core.files import write_output

    return write_output(path, data, inputs=inputs, overwrite=overwrite, verify=verify)


# The largest relative difference (to the largest output) an exported GradRNN may show against its
# model: float32 sums in another order differ by a few ulps per step (about 1e-6 seen at T=5), float64
# by ~1e-15; these bounds leave a margin of 10-100x and still catch a wrong weight or a missing step.
EXPORT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def verify_exported(model: Any, path: str | Path, fmt: str | None = None, T: int = 5, B: int = 3
                    ) -> tuple[float | None, float]:
    """`(difference, tolerance)` of the exported file against the GradRNN `model` (`check_exported`);
    raises `CheckFailed` past `EXPORT_TOLERANCE` (difference None: the runtime is not installed)."""
    from ..core.errors import CheckFailed

    tol = EXPORT_TOLERANCE.get(_dtype(model), 1e-2)
    err = check_exported(model, path, T, B, fmt=fmt)
    if err is not None and not err <= tol:  # NaN fails too
        raise CheckFailed(f"the exported {fmt or Path(path).suffix} program differs from the model by {err:.1e} "
                          f"(largest relative difference at T={T}, B={B}), past the tolerance {tol:.0e}; "
                          "nothing was written. Please report this with the run folder")
    return err, tol


def check_exported(model: Any, path: str | Path, T: int = 5, B: int = 3, fmt: str | None = None
                   ) -> float | None:
    """Largest relative difference between the exported file and the GradRNN `model` on a random input.

    `fmt` (".onnx" or ".pt2") defaults to the file's suffix. None where the file's runtime
    (onnxruntime for .onnx) is not installed.
    """
    path = Path(path)
    fmt = (fmt or path.suffix).lower()
    x = torch.randn((B, T, model.input_size) if model.batch_first else (T, B, model.input_size),
                    generator=torch.Generator().manual_seed(0), dtype=_dtype(model))
    with torch.no_grad():
        ref = torch.cat([t.reshape(-1) for t in model(x)])
        if fmt == ".pt2":
            h0 = model.h0 if model.h0 is not None else torch.zeros(model.hidden_size, dtype=x.dtype)
            got = torch.export.load(str(path)).module()(x, h0.detach().expand(B, -1).contiguous())
        else:
            try:
                import onnxruntime
            except ImportError:
                return None
            sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = [torch.from_numpy(a) for a in sess.run(["y", "h_last"], {"x": x.numpy()})]
        got = torch.cat([t.reshape(-1) for t in got])
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _program(model: Any, kind: str) -> nn.Module:
    return HamiltonianProgram(model) if kind == "hamiltonian" else ConservativeProgram(model)


def _pt2_bytes(model: Any, kind: str, example, dtype: torch.dtype) -> bytes:
    from torch.export import Dim

    from .pt2 import GradRNNProgram, export_program

    batch = Dim("batch", min=1)
    if kind == "gradrnn":
        T = Dim("T", min=1)
        if model.batch_first:
            x, x_dims = torch.randn(2, 3, model.input_size, dtype=dtype), {0: batch, 1: T}
        else:
            x, x_dims = torch.randn(3, 2, model.input_size, dtype=dtype), {0: T, 1: batch}
        h0 = torch.zeros(2, model.hidden_size, dtype=dtype)
        program = GradRNNProgram(model.F, model.batch_first)
        return export_program(program, (x, h0), (x_dims, {0: batch}))
    args = _example(model, kind, example, dtype)
    return export_program(_program(model, kind), args, tuple({0: batch} for _ in args))


def _onnx_bytes(model: Any, kind: str, example, dtype: torch.dtype) -> bytes:
    from .onnx_graph import convert, gradrnn_model

    if kind == "gradrnn":
        h0 = model.h0 if model.h0 is not None else torch.zeros(model.hidden_size, dtype=dtype)
        return gradrnn_model(model.F, h0.detach().to(dtype), model.input_size, model.batch_first).SerializeToString()
    args = _example(model, kind, example, dtype)
    names = ["x"] + [f"context{i}" for i in range(1, len(args))]
    outs = ["dx"] if kind == "hamiltonian" else ["energy", "forces"]
    axes = {n: {0: "batch"} for n in names + outs}
    return convert(_program(model, kind), args, names, outs, axes).SerializeToString()


__all__ = ["EXPORT_TOLERANCE", "ExportError", "FORMATS", "check_exported", "export", "verify_exported"]
