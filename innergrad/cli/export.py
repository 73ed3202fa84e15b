"""`innergrad export`: a trained run's model as an ONNX file or a torch.export program."""

from __future__ import annotations

from pathlib import Path

from . import Formatter


def add_parser(sub) -> None:
    p = sub.add_parser("export", formatter_class=Formatter,
                       help="write the trained model as .onnx (ONNX Runtime) or .pt2 (torch.export)",
                       description="Export a run's model for inference without innergrad: .onnx runs in ONNX "
                                   "Runtime (needs the `export` extra to write), .pt2 loads with "
                                   "torch.export.load(FILE).module(). Inputs x (T, B, input_size) and optional "
                                   "h0; outputs y and h_last; any T and B. The file is checked against the "
                                   "model on a small input before the command returns.",
                       epilog="example:\n  innergrad export --run runs/det --out model.onnx")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder made by 'innergrad train'")
    p.add_argument("--checkpoint", metavar="FILE", help="a specific checkpoint (default: the newest)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write: *.onnx or *.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    """Exit status 1 (nothing written) when the exported file differs from the model past the tolerance."""
    from ..core.errors import InnergradError
    from ..core.files import check_output
    from ..export import FORMATS, export, verify_exported
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
    out = export(model, out, overwrite=args.overwrite, inputs=inputs,
                 verify=lambda tmp: checked.append(verify_exported(model, tmp, out.suffix.lower())))
    err, tol = checked[0]
    kind = "ONNX" if out.suffix.lower() == ".onnx" else "torch.export"
    print(f"wrote {out} ({kind}; GradRNN input_size={model.input_size}, hidden_size={model.hidden_size})")
    if err is None:
        print("not checked: onnxruntime is not installed (pip install 'innergrad[export]')")
    else:
        print(f"checked against the model at T=5, B=3: largest relative difference {err:.1e} "
              f"(tolerance {tol:.0e})")
    return 0
