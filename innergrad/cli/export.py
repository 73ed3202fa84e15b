"""`innergrad export`: a trained run's model as an ONNX file or a torch.export program."""

from __future__ import annotations

from pathlib import Path

from ..core.schema import Opt
from . import Formatter, options

DESCRIPTION = """\
Export a run's model for inference without innergrad; any batch size and sequence length.

.onnx   ONNX Runtime (writing it needs the `export` extra). Inputs x (T, B, input_size) and h0
        (B, hidden_size), h0 optional: left out, the model's learned initial state (--learn-h0) or
        zeros. Outputs y (T, B) and h_last (B, hidden_size).
.pt2    torch.export. torch.export.load(FILE).module()(x) -> (y, h_last), from the model's initial
        state (learned, or zeros); a given h0 goes to the file's second program, "with_h0":
        torch.export.pt2_archive._package.load_pt2(FILE).exported_programs["with_h0"].module()(x, h0).
.pt2 with --aoti --aoti-batch B: compiled by AOTInductor for batch B (T free);
        torch._inductor.aoti_load_package(FILE)(x), and with h0:
        torch._inductor.package.load_package(FILE, "with_h0")(x, h0).

The file is checked against the model on a small input (with h0 left out and given) before the
command returns; a difference past the stated tolerance is a failed check (exit 1, nothing written).
A run of another model (ig.train.fit(out=...): HamiltonianNet, ConservativeField, a registered
model of your own) exports that model's program (its inputs and outputs: README, "Deploy")."""


def add_parser(sub) -> None:
    p = sub.add_parser("export", formatter_class=Formatter,
                       help="write the trained model as .onnx (ONNX Runtime) or .pt2 (torch.export)",
                       description=DESCRIPTION,
                       epilog="example:\n  innergrad export --run runs/det --out model.onnx")
    options(p, Opt("run", "path", None, "a run folder made by 'innergrad train' or ig.train.fit(out=...)",
                   metavar="DIR", required=True),
            Opt("checkpoint", "path", None, "a specific checkpoint; none: the newest", metavar="FILE"),
            Opt("out", "path", None, "the file to write: *.onnx or *.pt2", metavar="FILE", required=True),
            Opt("overwrite", bool, False, "replace FILE if it exists"),
            Opt("aoti", bool, False, ".pt2 compiled ahead of time by AOTInductor (needs a C++ compiler; tens of "
                "seconds): load with torch._inductor.aoti_load_package(FILE). Faster than the plain .pt2 "
                "(benchmarks/README.md). A GradRNN needs --aoti-batch"),
            Opt("aoti_batch", int, None, "with --aoti, a GradRNN: the batch size the compiled program takes (fixed; "
                "T stays free)", lo=1, hi=10**6, metavar="B", requires=("aoti",)))
    p.set_defaults(func=run)


def run(args) -> int:
    """Exit status 1 (nothing written) when the exported file differs from the model past the tolerance."""
    from ..core.errors import InnergradError
    from ..core.files import check_output
    from ..export import FORMATS, export, program_of, verify_exported
    from ..models.registry import spec_of
    from ..train import load
    from ..train._runs import run_inputs

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise InnergradError(f"--out {out}: unknown format {out.suffix or '(no suffix)'!r}; name the file *.onnx "
                             "(ONNX Runtime) or *.pt2 (torch.export)")
    inputs = [*run_inputs(args.run), ("--checkpoint", args.checkpoint)]
    check_output(out, inputs=inputs, overwrite=args.overwrite)  # before the model is loaded and exported
    model = load(Path(args.run), checkpoint=args.checkpoint, device="cpu")
    checked = []
    B = args.aoti_batch if args.aoti_batch else 3
    out = export(model, out, overwrite=args.overwrite, aoti=args.aoti, aoti_batch=args.aoti_batch, inputs=inputs,
                 verify=lambda tmp: checked.append(verify_exported(model, tmp, out.suffix.lower(), B=B)))
    err, tol = checked[0]
    kind = "ONNX" if out.suffix.lower() == ".onnx" else "AOTInductor" if args.aoti else "torch.export"
    spec = spec_of(model)
    shown = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "kind" and not isinstance(v, dict))
    print(f"wrote {out} ({kind}; {spec['kind']} {shown})")
    if err is None:
        print("not checked: onnxruntime is not installed (pip install 'innergrad[export]')")
    else:
        both = ", with h0 left out and given" if program_of(model).recurrent else ""
        print(f"checked against the model at T=5, B={B}{both}: largest relative difference {err:.1e} "
              f"(tolerance {tol:.0e})")
    return 0
