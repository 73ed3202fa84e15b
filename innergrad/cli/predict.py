"""`innergrad predict`: a trained run's y for new inputs."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import InnergradError
from ..core.schema import Opt
from . import Formatter, load_for_use, options, overwrite_option, run_options


def add_parser(sub) -> None:
    p = sub.add_parser("predict", formatter_class=Formatter,
                       help="write y for new x",
                       description="Run a trained model on new inputs (y not needed) and write y (N, T) and "
                                   "lengths (.npz), or 'sequence,t,y' rows (.csv).")
    options(p, *run_options(),
            Opt("data", "path", None, ".npz with x (and optional lengths) or long-form .csv", metavar="PATH",
                required=True),
            Opt("out", "path", None, "output .npz or .csv; none: DIR/predict-<data name>.<suffix>", metavar="FILE"),
            overwrite_option())
    p.set_defaults(func=run)


def run(args) -> int:
    import io

    import numpy as np

    from ..core.files import check_output, write_output
    from ..data.sequences import load_data
    from ..train import predict
    from ..train._runs import run_inputs

    if args.out and Path(args.out).suffix.lower() not in (".npz", ".csv"):
        raise InnergradError(f"--out {args.out}: unknown format {Path(args.out).suffix or '(no suffix)'!r}; use a .npz "
                        "or .csv file name")
    run_dir, _, model, device = load_for_use(args)
    src = Path(args.data)
    out = Path(args.out) if args.out else run_dir / f"predict-{src.stem}{src.suffix.lower()}"
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise InnergradError(f"--out {out}: unknown format {suffix or '(no suffix)'!r}; use a .npz or .csv file name")
    inputs = [("--data", args.data), ("--checkpoint", args.checkpoint), *run_inputs(run_dir)]
    check_output(out, inputs=inputs, overwrite=args.overwrite)  # before the work
    data = load_data(args.data, require_y=False)
    y_pred = predict(model, data, device)
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, y=y_pred, lengths=data.lengths)
        content: bytes | str = buf.getvalue()
    else:
        rows = ["sequence,t,y"]
        for i, sid in enumerate(data.ids):
            rows += [f"{sid},{t},{float(y_pred[i, t])!r}" for t in range(int(data.lengths[i]))]
        content = "\n".join(rows) + "\n"
    write_output(out, content, inputs=inputs, overwrite=args.overwrite)
    print(f"wrote y for {len(data)} sequences ({int(data.lengths.sum())} steps) to {out}")
    return 0
