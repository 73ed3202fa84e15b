"""`innergrad eval`: MSE and R^2 of a trained run on its validation split or on a data file."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import InnergradError
from ..core.schema import Opt
from . import Formatter, allow_changed_data_option, load_for_use, options, overwrite_option, run_options


def add_parser(sub) -> None:
    p = sub.add_parser("eval", formatter_class=Formatter,
                       help="MSE and R^2 of a trained model; writes predictions",
                       description="Print MSE and R^2 of a run's model on its validation split (or on --data) "
                                   "and write the predictions (x, y, y_pred, lengths) to --out.")
    options(p, *run_options(),
            Opt("data", "path", None, "evaluate on this .npz/.csv instead of the validation split", metavar="PATH"),
            Opt("out", "path", None, "predictions file, .npz or .csv; none: DIR/eval-<data>.npz", metavar="FILE"),
            overwrite_option("the predictions file"), allow_changed_data_option())
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.files import check_output
    from ..data.sequences import load_data
    from ..train import masked_metrics, predict
    from ..train._runs import run_inputs
    from ..train._sequence_task import run_data

    run_dir, cfg, model, device = load_for_use(args)
    if args.data:
        data = load_data(args.data, require_y=True)
        what = f"{args.data} ({len(data)} sequences)"
        name = Path(args.data).stem
    else:
        _, data = run_data(cfg).split(cfg.val_fraction, cfg.seed)
        what = f"the run's validation split ({len(data)} sequences)"
        name = "validation"
    out = Path(args.out) if args.out else run_dir / f"eval-{name}.npz"
    if out.suffix.lower() not in (".npz", ".csv"):
        raise InnergradError(
            f"--out {out}: unknown format {out.suffix or '(no suffix)'!r}; use a .npz or .csv file name")
    inputs = [("--data", args.data), ("--checkpoint", args.checkpoint), *run_inputs(run_dir)]
    check_output(out, inputs=inputs, overwrite=args.overwrite)  # before the work
    y_pred = predict(model, data, device)
    m = masked_metrics(data.y, y_pred, data.lengths)
    data.save(out, y_pred=y_pred, inputs=inputs, overwrite=args.overwrite)
    print(f"data         {what}, {m['n_steps']} steps")
    print(f"MSE          {m['mse']:.6f}   (RMSE {m['mse'] ** 0.5:.6f})")
    print(f"R^2          {m['r2']:.6f}")
    print(f"predictions  {out}")
    return 0
