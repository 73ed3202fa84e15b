"""Export a trained model to a file that runs without innergrad: ONNX (.onnx) or torch.export (.pt2).

```python
ig.export(rnn, "model.onnx")     # onnxruntime: sess.run(None, {"x": x})  -> [y, h_last]
ig.export(rnn, "model.pt2")      # torch.export.load("model.pt2").module()(x) -> (y, h_last)
```

What gets exported is the model's own `export_program()` (the model protocol,
`innergrad/models/protocol.py`): inference only, batch and sequence length dynamic.

| model                 | inputs                                   | outputs            |
|-----------------------|------------------------------------------|--------------------|
| `GradRNN`             | `x` (T, B, in) or (B, T, in) if batch_first; optional `h0` (B, hidden) | `y`, `h_last` |
| `HamiltonianNet`, `DissipativeHNN` | `x` (B, dim)                | `dx`               |
| `ConservativeField`   | `x` (B, ...), then any context inputs    | `energy`, `forces` |

A recurrent model's initial state is optional in both formats; left out, it is the learned `h0`
(`learn_h0=True`) or zeros. The .onnx file has one graph with an optional input `h0`. A torch.export
program has a fixed signature, so the .pt2 file holds two: `"model"` (what `torch.export.load` returns)
takes `x` alone, and `"with_h0"` takes `(x, h0)`:
`torch.export.pt2_archive._package.load_pt2(f).exported_programs["with_h0"].module()(x, h0)`, or
`innergrad.export.load_pt2(f)` where innergrad is installed (one callable taking `x` and optionally `h0`).

The gradient inside the forward pass is evaluated in closed form, whatever backend the model was
trained with: F must be an `ig.MLP` or define `value_and_input_grad`. `lengths`/`mask` are not part of
the exported programs: run each sequence at its own length (T is dynamic) or pad at the end and read
`y` up to each length (masking affects only the steps past a sequence's end).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import ExportError
from ..models.protocol import Program, model_dtype
from ..models.registry import MODELS

Tensor = torch.Tensor

FORMATS = (".onnx", ".pt2")

# The largest relative difference (to the largest output) an exported model may show against it:
# float32 sums in another order differ by a few ulps per step (about 1e-6 seen at T=5), float64 by
# ~1e-15; these bounds leave a margin of 10-100x and still catch a wrong weight or a missing step.
EXPORT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def program_of(model: nn.Module, example=None) -> Program:
    """The model's inference program (its `export_program`), or an `ExportError` naming the models that export."""
    make = getattr(model, "export_program", None)
    if not callable(make):
        names = [f"ig.{k}" for k, c in MODELS.items() if callable(getattr(c, "export_program", None))]
        raise ExportError(f"export: cannot export a {type(model).__name__}; expected an {', '.join(names[:-1])} or "
                          f"{names[-1]}, or a model of your own with export_program(example=None) -> Program (see "
                          "innergrad/models/protocol.py)")
    program = make(example)
    if not isinstance(program, Program):
        raise ExportError(f"export: {type(model).__name__}.export_program() must return an "
                          f"innergrad.models.protocol.Program, got {type(program).__name__}")
    return program


def export(model: nn.Module, path: str | Path, *, example: Tensor | tuple[Tensor, ...] | None = None,
           overwrite: bool = False, aoti: bool = False, aoti_batch: int | None = None, inputs=(),
           verify=None) -> Path:
    """Write `model` to `path` as ONNX (`.onnx`) or a torch.export program (`.pt2`); returns the path.

    `example`: inputs to trace with, needed only where the model cannot tell its input shape (a
    `ConservativeField` whose energy is not an `ig.MLP`); its batch size does not matter. An
    existing file is replaced only with `overwrite=True`. The file is written by
    `core/files.write_output`: atomically and exclusively, never onto one of `inputs` (the files the
    caller read the model from); `verify(tmp_path)` checks the finished file before it gets its name
    (see `verify_exported`), so a failed export or check leaves nothing behind.

    `aoti=True` (`.pt2` only): the program compiled ahead of time by AOTInductor (a C++ compiler is
    needed, and tens of seconds); load it with `torch._inductor.aoti_load_package`. Measured faster
    than the plain `.pt2` (benchmarks/README.md). A recurrent model (GradRNN) compiles only at a fixed
    batch, `aoti_batch=B` (T stays dynamic; see `pt2.aoti_bytes`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"export: unknown format {suffix or '(no suffix)'!r} in {path}; name the file *.onnx "
                          "(ONNX Runtime) or *.pt2 (torch.export)")
    if path.exists() and not overwrite:
        raise ExportError(f"export: {path} exists; choose another file name or pass overwrite=True to replace it")
    if aoti_batch is not None and not aoti:
        raise ExportError("export: aoti_batch applies with aoti=True (an AOTInductor package); pass both, or neither")
    if aoti and suffix != ".pt2":
        raise ExportError(f"export: aoti=True compiles a .pt2 package; name the file *.pt2, not {path.name}")
    program = program_of(model, example)
    if aoti:
        from .pt2 import aoti_bytes

        data = aoti_bytes(program, aoti_batch)
    elif suffix == ".onnx":
        from .onnx_graph import onnx_bytes

        data = onnx_bytes(program)
    else:
        from .pt2 import pt2_bytes

        data = pt2_bytes(program)
    from ..core.files import write_output

    return write_output(path, data, inputs=inputs, overwrite=overwrite, verify=verify)


def load_pt2(path: str | Path):
    """A `.pt2` file of `ig.export` as one callable: `f(*inputs)`, and for a recurrent model `f(x, h0=None)`."""
    from .pt2 import load

    return load(path)


def check_inputs(program: Program, B: int = 3, T: int = 5, seed: int = 0) -> tuple[Tensor, ...]:
    """Fresh inputs shaped like the program's example, at batch `B` (and `T` steps for a recurrent model)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in program.example:
        shape = list(a.shape)
        if program.recurrent:
            t_axis, b_axis = program.axes()
            shape[t_axis], shape[b_axis] = T, B
        else:
            shape[0] = B
        if a.is_floating_point():
            out.append(torch.randn(shape, generator=g, dtype=a.dtype))
        else:  # integer context (species, indices): the example's first row, repeated
            out.append(a[:1].expand(B, *a.shape[1:]).contiguous())
    return tuple(out)


def verify_exported(model: nn.Module, path: str | Path, fmt: str | None = None, T: int = 5, B: int = 3,
                    example=None) -> tuple[float | None, float]:
    """`(difference, tolerance)` of the exported file against `model` (`check_exported`); raises
    `CheckFailed` past `EXPORT_TOLERANCE` (difference None: the runtime is not installed)."""
    from ..core.errors import CheckFailed

    tol = EXPORT_TOLERANCE.get(model_dtype(model), 1e-2)
    err = check_exported(model, path, T, B, fmt=fmt, example=example)
    if err is not None and not err <= tol:  # NaN fails too
        raise CheckFailed(f"the exported {fmt or Path(path).suffix} program differs from the model by {err:.1e} "
                          f"(largest relative difference at T={T}, B={B}), past the tolerance {tol:.0e}; "
                          "nothing was written. Please report this with the run folder")
    return err, tol


def check_exported(model: nn.Module, path: str | Path, T: int = 5, B: int = 3, fmt: str | None = None,
                   example=None) -> float | None:
    """Largest relative difference between the exported file and `model` on fresh inputs (a recurrent
    model: with h0 left out and with h0 given).

    `fmt` (".onnx" or ".pt2") defaults to the file's suffix. None where the file's runtime
    (onnxruntime for .onnx) is not installed.
    """
    path = Path(path)
    fmt = (fmt or path.suffix).lower()
    program = program_of(model, example)
    args = check_inputs(program, B, T)
    calls = [args]
    if program.recurrent:
        h0 = torch.randn(B, program.state0().shape[-1], generator=torch.Generator().manual_seed(1),
                         dtype=model_dtype(model))
        calls.append((*args, h0))
    if fmt == ".pt2":
        run = load_pt2(path)
    else:
        try:
            import onnxruntime
        except ImportError:
            return None
        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(*inputs):
            return [torch.from_numpy(a) for a in sess.run(list(program.outputs), {
                n: t.numpy() for n, t in zip(program.inputs, inputs)})]
    worst = 0.0
    with torch.no_grad():
        for call in calls:
            ref, got = _flat(model(*call)), _flat(run(*call))
            worst = max(worst, float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)))
    return worst


def _flat(out) -> Tensor:
    parts = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([t.reshape(-1).to(torch.float64) for t in parts])


__all__ = ["EXPORT_TOLERANCE", "ExportError", "FORMATS", "check_exported", "export", "load_pt2", "program_of",
           "verify_exported"]
