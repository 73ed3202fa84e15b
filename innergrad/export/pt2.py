"""torch.export programs (.pt2), and AOTInductor packages of them. A recurrent model's time loop is torch's
`scan` operator, not unrolled.

A torch.export program has one fixed signature (a None input is specialised away), so a recurrent
model's file holds two programs: `"model"` (what `torch.export.load` returns) takes `x` alone and
starts from the model's initial state; `"with_h0"` takes `(x, h0)`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ExportError
from ..models.protocol import Program

Tensor = torch.Tensor

WITH_STATE = "with_h0"


class ScanProgram(nn.Module):
    """`(x, h0) -> (y, h_last)`: the program's step scanned over x's time axis."""

    def __init__(self, step: nn.Module, time_axis: int):
        super().__init__()
        self.step, self.time_axis = step, time_axis

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        from torch._higher_order_ops.scan import scan

        step = self.step

        def combine(h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
            return step(h, x_t)

        h_last, y = scan(combine, h0, x, dim=self.time_axis)
        return y, h_last  # scan stacks the outputs along `dim` too


class FromInitialState(nn.Module):
    """`x -> (y, h_last)` from the model's initial state (learned, or zeros), broadcast to the batch."""

    def __init__(self, scan: ScanProgram, h0: Tensor):
        super().__init__()
        self.scan = scan
        self.h0: Tensor
        self.register_buffer("h0", h0.detach().clone().reshape(1, -1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[1 - self.scan.time_axis]
        return self.scan(x, self.h0.expand(batch, -1).contiguous())


def exported(program: Program) -> dict[str, torch.export.ExportedProgram]:
    """The program's torch.export programs by name, the named dimensions left dynamic."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    if not program.recurrent:
        return {"model": _trace(program.module, program.example, tuple({0: batch} for _ in program.example))}
    (x,) = program.example
    axis, b_axis = program.axes()
    x_dims = {axis: Dim("T", min=1), b_axis: batch}
    scan = ScanProgram(program.module, axis)
    h0 = program.state0().reshape(1, -1).expand(x.shape[b_axis], -1).contiguous()
    return {"model": _trace(FromInitialState(scan, program.state0()), (x,), (x_dims,)),
            WITH_STATE: _trace(scan, (x, h0), (x_dims, {0: batch}))}


def pt2_bytes(program: Program) -> bytes:
    """The `.pt2` archive of the program (one or two torch.export programs)."""
    from torch.export.pt2_archive._package import package_pt2

    buf = io.BytesIO()
    package_pt2(buf, exported_programs=exported(program))
    return buf.getvalue()


def aoti_bytes(program: Program, batch: int | None = None) -> bytes:
    """The program compiled ahead of time by AOTInductor, as a `.pt2` package that
    `torch._inductor.aoti_load_package(FILE)` loads (needs a C++ compiler, and tens of seconds).

    Feed-forward programs: the batch stays dynamic. Recurrent programs need a fixed `batch` (T stays
    dynamic): torch 2.13's inductor cannot lower a `scan` with a dynamic batch (a KeyError on the batch
    symbol). The package then holds `"model"` (x alone) and `"with_h0"` ((x, h0)), as the plain `.pt2`
    does: `torch._inductor.package.load_package(FILE, "with_h0")`.
    """
    import tempfile

    if not program.recurrent:
        if batch is not None:
            raise ExportError("export: aoti_batch applies to a recurrent model (a GradRNN); this model's compiled "
                              "program takes any batch, so leave aoti_batch out")
        with tempfile.TemporaryDirectory(prefix="innergrad-aoti-") as d, _compiling(program):
            path = torch._inductor.aoti_compile_and_package(exported(program)["model"],
                                                            package_path=str(Path(d) / "model.pt2"))
            return Path(path).read_bytes()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"export: a recurrent model compiles with AOTInductor only at a fixed batch size (torch "
                          f"2.13 cannot lower its scan with a dynamic one); give aoti_batch=B (--aoti-batch B), the "
                          f"batch you will run, a positive int, got {batch!r}; or export a plain .pt2")
    from torch._inductor.package import package_aoti
    from torch.export import Dim

    (x,) = program.example
    axis, b_axis = program.axes()
    shape = list(x.shape)
    shape[b_axis] = batch
    x = torch.randn(shape, dtype=x.dtype)
    h0 = program.state0().reshape(1, -1).expand(batch, -1).contiguous()
    scan = ScanProgram(program.module, axis)
    t_dim = {axis: Dim("T", min=1)}
    eps = {"model": _trace(FromInitialState(scan, program.state0()), (x,), (t_dim,)),
           WITH_STATE: _trace(scan, (x, h0), (t_dim, None))}
    with tempfile.TemporaryDirectory(prefix="innergrad-aoti-") as d, _compiling(program):
        files: dict[str, Any] = {name: torch._inductor.aot_compile(ep.module(), ep.example_inputs[0],
                                                                   options={"aot_inductor.package": True})
                                 for name, ep in eps.items()}
        target = Path(d) / "model.pt2"
        package_aoti(str(target), files)
        return target.read_bytes()


@contextmanager
def _compiling(program: Program):
    try:
        yield
    except ExportError:
        raise
    except Exception as e:  # inductor and the C++ compiler raise many types; all mean "cannot compile"
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise ExportError(f"export: AOTInductor cannot compile {type(program.module).__name__}: {first[:300]}; "
                          "export without aoti (a plain .pt2), or check that a C++ compiler is installed") from e


def _trace(module: nn.Module, args: tuple[Tensor, ...], dynamic_shapes: tuple) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch.export raises many types; all mean "cannot trace this module"
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        hint = ""
        if "aliasing" in text:
            hint = ("; torch's scan refuses parameter views taken by attribute (W.T, W.mT) inside the step: write "
                    "W.t() or W.transpose(0, 1) in value_and_input_grad")
        raise ExportError(f"export: torch.export cannot trace {type(module).__name__}: {first[:300]}{hint}") from e


class Loaded:
    """A `.pt2` file of `ig.export` as one callable; a recurrent one takes `(x, h0=None)`."""

    model: Callable[..., Any]
    with_h0: Callable[..., Any] | None

    def __init__(self, path: str | Path):
        from torch.export.pt2_archive._package import load_pt2

        contents = load_pt2(str(path))
        programs = contents.exported_programs
        if "model" in contents.aoti_runners:  # an AOTInductor package (aoti=True)
            self.model, self.with_h0 = contents.aoti_runners["model"], contents.aoti_runners.get(WITH_STATE)
            return
        if "model" not in programs:
            raise ExportError(f"{path}: no program named 'model' in this .pt2 file; give a file written by ig.export "
                              "or innergrad export")
        self.model = torch.no_grad()(programs["model"].module())
        self.with_h0 = torch.no_grad()(programs[WITH_STATE].module()) if WITH_STATE in programs else None

    def __call__(self, *inputs: Tensor, h0: Tensor | None = None):
        if h0 is None and self.with_h0 is not None and len(inputs) == 2:
            h0, inputs = inputs[1], inputs[:1]
        if h0 is None:
            return self.model(*inputs)
        if self.with_h0 is None:
            raise ExportError("this .pt2 program takes no initial state h0 (it is not a recurrent model's)")
        return self.with_h0(*inputs, h0)


def load(path: str | Path) -> Loaded:
    return Loaded(path)
