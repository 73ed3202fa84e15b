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
    from ..core.errors import InnergradError
    from ..export import FORMATS, check_exported, export
    from ..train import load

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise InnergradError(f"--out {out}: unknown format {out.suffix or '(no suffix)'!r}; name the file *.onnx "
                        "(ONNX Runtime) or *.pt2 (torch.export)")
    if out.exists() and not args.overwrite:
        raise InnergradError(f"--out {out} exists; give another file name, or --overwrite to replace it")
    model = load(Path(args.run), checkpoint=args.checkpoint, device="cpu")
    out = export(model, out, overwrite=args.overwrite)
    err = check_exported(model, out)
    kind = "ONNX" if out.suffix.lower() == ".onnx" else "torch.export"
    print(f"wrote {out} ({kind}; GradRNN input_size={model.input_size}, hidden_size={model.hidden_size})")
    if err is None:
        print("not checked: onnxruntime is not installed (pip install 'innergrad[export]')")
    else:
        print(f"checked against the model at T=5, B=3: largest relative difference {err:.1e}")
    return 0
