"""The `innergrad` command: train, evaluate, check and use gradient-RNNs (and run experiments).

`main(argv)` returns the exit status: 0 success, 1 a failed check or a diverged run, 2 a user error
(bad option, path, data or config: one paragraph on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from ..core.errors import UserError

PROG = "innergrad"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, so `main()` (and tests) get a status, not an exit."""

    def error(self, message):
        raise _UsageError(f"{message}. Run '{self.prog} --help' for the options.")


class _UsageError(UserError):
    pass


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


# ------------------------------------------------------------------------------- helpers


def _defaults():
    from ..train.trainer import TrainConfig

    return TrainConfig()


def _out_dir(out: str | None) -> Path:
    if out:
        return Path(out)
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    p, k = base, 1
    while p.exists():
        k += 1
        p = Path(f"{base}-{k}")
    return p


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _fmt(v: float | None, d: int = 4) -> str:
    return "-" if v is None else f"{v:.{d}f}"


# ------------------------------------------------------------------------------- train

def _given_config(args) -> dict:
    from ..train.trainer import TrainConfig

    return {k: getattr(args, k) for k in TrainConfig.keys() if getattr(args, k, None) is not None}


def _plan_train(args, given: dict):
    """`(TrainConfig, run folder)` of a new or resumed run, with every check that needs no training."""
    from ..train.trainer import RESUME_OVERRIDES, TrainConfig, load_run_config

    if args.resume:
        run_dir = Path(args.resume)
        if args.config:
            raise UserError("--config cannot be combined with --resume: a resumed run keeps its own config.json")
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UserError(f"--out {args.out} and --resume {args.resume} name different folders; give only --resume")
        cfg, _ = load_run_config(run_dir)
        new = TrainConfig.from_mapping(given, "command line")
        changed = sorted(k for k in given if getattr(new, k) != getattr(cfg, k))
        fixed = [k for k in changed if k not in RESUME_OVERRIDES]
        if fixed:
            opts = ", ".join(f"--{k.replace('_', '-')} (run has {getattr(cfg, k)!r})" for k in fixed)
            raise UserError(
                f"{run_dir}: a resumed run keeps its settings, but these differ: {opts}. Drop them to "
                f"continue exactly, or start a new run with --out. Only "
                f"{', '.join(k for k in RESUME_OVERRIDES if k != 'on_nan')} may change (and on_nan)."
            )
        return cfg.replace({k: given[k] for k in changed}), run_dir
    cfg = _new_config(args, given)
    run_dir = _out_dir(args.out)
    if (run_dir / "config.json").exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with 'innergrad train --resume {run_dir}' or "
            "choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; give a folder for the run")
    return cfg, run_dir


def _new_config(args, given: dict):
    from ..train.trainer import TrainConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    cfg = TrainConfig.from_mapping(values, str(args.config)) if values else TrainConfig()
    cfg = cfg.replace(given, "command line")
    builtin_only = [k for k in ("n_sequences", "seq_len", "input_size", "noise") if k in given]
    if cfg.data and builtin_only:
        opts = ", ".join("--" + k.replace("_", "-") for k in builtin_only)
        raise UserError(
            f"{opts} describe(s) the built-in data only, but --data {cfg.data} is given: a data file brings its own "
            "sizes (input_size is x's last dimension). Drop " + opts
        )
    if cfg.data:  # an absolute path keeps eval, check and --resume working from any folder
        cfg = cfg.replace({"data": str(Path(cfg.data).resolve())})
    return cfg


def cmd_train(args) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    if not args.distributed:
        if args.dist_backend is not None:
            raise UserError("--dist-backend applies only with --distributed (under torchrun); drop it or add "
                            "--distributed")
        return _train(args, None)
    from ..train.distributed import QuietUserError, env_rank, init_distributed, refuse_unsupported, shutdown

    given = _given_config(args)
    device = given.get("device")
    if not args.resume:
        try:  # refuse what DDP cannot do before joining the job (every rank would say the same)
            cfg = _new_config(args, given)
            refuse_unsupported(cfg)
        except UserError as e:
            if env_rank() != 0:
                raise QuietUserError(str(e)) from None
            raise
        device = cfg.device
    elif device is None:
        device = _run_device(Path(args.resume))
    ctx = init_distributed(device=device, backend=args.dist_backend or "auto")
    try:
        status = _train(args, ctx)
        # Leave together: a rank that tears its gloo connections down while rank 0 still writes the
        # report can be aborted at exit ("terminate called without an active exception").
        ctx.barrier()
        return status
    finally:
        shutdown(ctx)


def _run_device(run_dir: Path) -> str:
    """The device setting of a run folder, when this machine can read it (else "auto")."""
    import json

    try:
        return str(json.loads((run_dir / "config.json").read_text())["train"]["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return "auto"


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def _train(args, ctx) -> int:
    import json
    import warnings

    from ..train.checkpoint import CheckpointFallbackWarning, list_checkpoints
    from ..train.report import write_report
    from ..train.trainer import TrainConfig, Trainer

    given = _given_config(args)
    main_rank = ctx is None or ctx.is_main
    if ctx is None:
        cfg, run_dir = _plan_train(args, given)
    else:  # rank 0 decides (the default folder name has a timestamp) and tells the others
        def plan() -> bytes:
            c, r = _plan_train(args, given)
            return json.dumps({"config": c.to_dict(), "run_dir": str(r)}).encode()

        obj = json.loads(ctx.from_main(plan).decode())
        cfg, run_dir = TrainConfig.from_mapping(obj["config"], "config"), Path(obj["run_dir"])
        actual = "cuda" if ctx.device.type == "cuda" else "cpu"
        if cfg.device != actual:
            cfg = cfg.replace({"device": actual})

    trainer = Trainer(cfg, run_dir, quiet=args.quiet, dist=ctx)
    if args.resume:
        has = list_checkpoints(run_dir) if ctx is None else ctx.from_main(
            lambda: b"1" if list_checkpoints(run_dir) else b"") == b"1"
        if has:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointFallbackWarning)  # printed below as a warning line
                step = trainer.resume()
            if main_rank:
                for note in trainer.resume_notes:
                    _warn(note)
                _say(args, f"resuming {run_dir} at step {step} of {trainer.total_steps}"
                           + (f" on {ctx.world_size} processes" if ctx is not None else ""))
        elif main_rank:
            _say(args, f"{run_dir} has no checkpoint yet; starting it from step 0")
    elif main_rank:
        _say(args, f"training {trainer.describe()}; run folder {run_dir}")
    try:
        summary = trainer.fit(max_steps=args.max_steps)
    finally:
        trainer.close()
    status = summary["status"]
    if ctx is not None and not ctx.is_main:
        return 130 if status == "interrupted" else 0
    resume_cmd = f"{PROG} train --resume {run_dir}"
    if ctx is not None:
        resume_cmd = f"torchrun ... -m {PROG} train --distributed --resume {run_dir} (the same torchrun options)"
    if status == "interrupted":
        print(f"interrupted by {summary['signal']} at step {summary['step']} of {summary['total_steps']}; "
              f"checkpoint saved. Continue with: {resume_cmd}", file=sys.stderr)
        return 130
    report = None
    if status == "completed" and not args.no_report:
        report = write_report(run_dir)
    floor = summary.get("noise_floor_mse")
    secs = summary["train_seconds"]
    lines = [
        f"run folder   {run_dir}",
        f"validation   MSE {_fmt(summary['val_mse'])}"
        + (f" (noise floor {_fmt(floor)})" if floor is not None else "")
        + f"   R^2 {_fmt(summary['val_r2'])}",
        f"training     {summary['step']} steps in {secs:.1f} s ({summary['step'] / max(secs, 1e-9):.1f} steps/s)"
        + (f" on {ctx.world_size} processes" if ctx is not None else ""),
    ]
    if summary.get("skipped_steps"):
        sk = summary["skipped_steps"]
        lines.append(f"skipped      {len(sk)} batch(es) with a non-finite loss (--on-nan skip): steps "
                     f"{', '.join(map(str, sk[:10]))}{' ...' if len(sk) > 10 else ''}")
    if report is not None:
        lines.append(f"report       {report}")
    if status == "stopped":
        lines.append(f"stopped at step {summary['step']} of {summary['total_steps']} (--max-steps); "
                     f"continue with: {resume_cmd}")
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------------------- eval / predict / check


def _load_for_use(args):
    import torch

    from ..train.checkpoint import load
    from ..train.trainer import load_run_config, resolve_device

    run = Path(args.run)
    cfg, whole = load_run_config(run)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load(run, checkpoint=args.checkpoint, device=device)
    return run, cfg, model, device


def cmd_eval(args) -> int:
    from ..data.sequences import load_data
    from ..train.trainer import masked_metrics, predict, run_data

    run, cfg, model, device = _load_for_use(args)
    if args.data:
        data = load_data(args.data, require_y=True)
        what = f"{args.data} ({len(data)} sequences)"
        name = Path(args.data).stem
    else:
        _, data = run_data(cfg).split(cfg.val_fraction, cfg.seed)
        what = f"the run's validation split ({len(data)} sequences)"
        name = "validation"
    out = Path(args.out) if args.out else run / f"eval-{name}.npz"
    if out.suffix.lower() not in (".npz", ".csv"):
        raise UserError(f"--out {out}: unknown format {out.suffix or '(no suffix)'!r}; use a .npz or .csv file name")
    if args.data and out.exists() and out.resolve() == Path(args.data).resolve():
        raise UserError(f"--out {out} is the input file given to --data; writing there would replace your data. "
                        "Give another --out")
    y_pred = predict(model, data, device)
    m = masked_metrics(data.y, y_pred, data.lengths)
    data.save(out, y_pred=y_pred)
    print(f"data         {what}, {m['n_steps']} steps")
    print(f"MSE          {m['mse']:.6f}   (RMSE {m['mse'] ** 0.5:.6f})")
    print(f"R^2          {m['r2']:.6f}")
    print(f"predictions  {out}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from ..train.checkpoint import write_atomic
    from ..data.sequences import load_data
    from ..train.trainer import predict

    if args.out and Path(args.out).suffix.lower() not in (".npz", ".csv"):
        raise UserError(f"--out {args.out}: unknown format {Path(args.out).suffix or '(no suffix)'!r}; use a .npz "
                        "or .csv file name")
    run, _, model, device = _load_for_use(args)
    data = load_data(args.data, require_y=False)
    y_pred = predict(model, data, device)
    src = Path(args.data)
    out = Path(args.out) if args.out else run / f"predict-{src.stem}{src.suffix.lower()}"
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise UserError(f"--out {out}: unknown format {suffix or '(no suffix)'!r}; use a .npz or .csv file name")
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the input file given to --data; writing there would replace your data. "
                        "Give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez(out, y=y_pred, lengths=data.lengths)
    elif suffix == ".csv":
        rows = ["sequence,t,y"]
        for i, sid in enumerate(data.ids):
            rows += [f"{sid},{t},{float(y_pred[i, t])!r}" for t in range(int(data.lengths[i]))]
        write_atomic(out, "\n".join(rows) + "\n")
    else:
        raise UserError(f"--out {out}: unknown format {suffix!r}; use a .npz or .csv file name")
    print(f"wrote y for {len(data)} sequences ({int(data.lengths.sum())} steps) to {out}")
    return 0


def cmd_check(args) -> int:
    from ..data.sequences import load_data
    from ..train.trainer import check_model, run_data

    for opt, v in (("--sequences", args.sequences), ("--steps", args.steps)):
        if v < 1:
            raise UserError(f"{opt} must be >= 1, got {v}")
    run, cfg, model, _ = _load_for_use(args)
    data = load_data(args.data, require_y=False) if args.data else run_data(cfg).split(cfg.val_fraction, cfg.seed)[1]
    if data.input_size != model.input_size:
        raise UserError(f"{data.source}: input_size {data.input_size} does not match the model's {model.input_size}")
    rows = check_model(model, data, n_seq=args.sequences, n_steps=args.steps)
    print(f"gradient checks of {run} (float64 copy, {min(args.sequences, len(data))} sequences x "
          f"{min(args.steps, data.seq_len)} steps; trained in {model.mode} mode)")
    if model.mode == "detached":
        print("note: detached training uses a deliberately truncated gradient; these checks verify the "
              "exact gradient of the same F.")
    print(format_table(rows))
    failed = sum(not r["passed"] for r in rows)
    skipped = sum(bool(r.get("skipped")) for r in rows)
    ran = len(rows) - skipped
    print(f"\n{'PASS' if not failed else 'FAIL'}: {ran - failed} of {ran} checks passed"
          + (f", {skipped} skipped" if skipped else ""))
    return 0 if not failed else 1


def format_table(rows: list[dict]) -> str:
    head = ("check", "backend", "max error", "tolerance", "result")
    body = []
    for r in rows:
        err = "-" if r["error"] is None else f"{r['error']:.2e}"
        res = "SKIP" if r.get("skipped") else "PASS" if r["passed"] else "FAIL"
        if r["note"]:
            res += f" ({r['note']})"
        body.append((r["check"], r["backend"], err, r["tolerance"] or "-", res))
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 6)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def cmd_report(args) -> int:
    from ..train.report import compare_runs, write_report

    if args.compare:
        print(compare_runs([args.run, *args.compare], plot=args.plot))
        if args.plot:
            print(f"\nwrote {args.plot}")
        return 0
    print(f"wrote {write_report(args.run)}")
    return 0


# ------------------------------------------------------------------------------- the parser

EPILOG = """\
examples:
  innergrad train                                  # built-in data, default model (~15 s on 2 cores)
  innergrad train --mode detached --out runs/det   # the cheap first-order variant, for comparison
  innergrad train --data seqs.npz --epochs 100 --hidden-size 64
  innergrad train --resume runs/det                # continue a stopped or interrupted run exactly
  innergrad eval --run runs/det                    # MSE / R^2 on the run's validation split
  innergrad predict --run runs/det --data new_x.npz --out y.npz
  innergrad check --run runs/det                   # gradcheck, gradgradcheck, backends agree

'innergrad COMMAND --help' shows each command's options.
"""

TRAIN_DESC = """\
Train a gradient-RNN  y_t = F(x_t, h_{t-1}),  h_t = dF/dh  on sequences.

Without --data it trains on the built-in data set: 1024 sequences of 32 steps with 4 inputs from a
random teacher GradRNN (hidden 8, F = MLP (32, 32) softplus), y standardised plus Gaussian noise of
std 0.1, so the validation MSE floor is 0.01 (R^2 ceiling ~0.99). The defaults (hidden 32, F = MLP
(128, 128) softplus, 40 epochs of batch 32) reach validation R^2 ~0.97 in about 15 s on 2 idle CPU
cores (under a minute when the CPU is shared).

Data files: .npz with x (N, T, input_size), y (N, T) and optional lengths (N,); or long-form CSV with
a header 'sequence,t,x0,...,xk,y'. The run folder (--out, default runs/<timestamp>) gets config.json,
metrics.jsonl, checkpoints/step-*.safetensors, summary.json and report.md with PNG plots. Ctrl-C
saves a checkpoint and stops; --resume continues exactly. Settings can come from --config FILE
(.toml or .json with the setting names below, underscores for dashes); command-line options win.
"""


def _add_train(sub) -> None:
    d = _defaults()
    p = sub.add_parser("train", help="train a gradient-RNN (built-in data by default)", description=TRAIN_DESC,
                       formatter_class=_Formatter, epilog=EPILOG.split("\n\n")[0])

    def opt(group, name, help, default_key=None, **kw):
        key = default_key or name.lstrip("-").replace("-", "_")
        dv = getattr(d, key, None)
        if isinstance(dv, tuple):
            dv = " ".join(str(v) for v in dv)
        shown = "none" if dv is None else dv
        group.add_argument(name, default=None, help=f"{help} (default: {shown})", **kw)

    g = p.add_argument_group("data")
    opt(g, "--data", "a .npz or long-form .csv data file; without it, the built-in teacher data", metavar="PATH")
    opt(g, "--val-fraction", "share of sequences held out for validation (split by sequence, seeded)",
        type=float, metavar="F")
    opt(g, "--n-sequences", "built-in data: number of sequences", type=int, metavar="N")
    opt(g, "--seq-len", "built-in data: steps per sequence", type=int, metavar="T")
    opt(g, "--input-size", "built-in data: inputs per step", type=int, metavar="D")
    opt(g, "--noise", "built-in data: std of the observation noise on standardised y", type=float, metavar="STD")

    from ..core.activations import ACTIVATIONS
    from ..core.backends import backends

    g = p.add_argument_group("model")
    opt(g, "--hidden-size", "size of the hidden state h", type=int, metavar="H")
    opt(g, "--hidden-layers", "widths of F's hidden layers, e.g. 128 128 or 64,64", nargs="+", metavar="W")
    opt(g, "--activation", "F's activation (smooth ones keep second-order training informative)",
        choices=sorted(ACTIVATIONS))
    opt(g, "--mode", "exact: train through dh/dtheta (second order); detached: h as a constant by-product",
        choices=["exact", "detached"])
    opt(g, "--backend", "how dF/dh is computed; auto picks the fastest that supports the model",
        choices=backends())
    g.add_argument("--learn-h0", action="store_const", const=True, default=None,
                   help="learn the initial hidden state instead of zeros (default: off)")
    opt(g, "--dtype", "float32, or float64 for exact comparisons (slower)", choices=["float32", "float64"])

    g = p.add_argument_group("optimisation")
    opt(g, "--epochs", "passes over the training sequences", type=int, metavar="N")
    opt(g, "--batch-size", "sequences per step", type=int, metavar="B")
    opt(g, "--lr", "Adam learning rate (peak of the schedule)", type=float)
    opt(g, "--lr-schedule", "cosine decay to 2%% of --lr over the run, or constant", choices=["cosine", "constant"])
    opt(g, "--weight-decay", "Adam weight decay", type=float, metavar="WD")
    opt(g, "--grad-clip", "clip the gradient norm to this (0: off)", type=float, metavar="NORM")
    opt(g, "--tbptt", "truncated backprop through time: an update every K steps, h carried over "
        "(0: full sequences)", type=int, metavar="K")
    opt(g, "--on-nan", "a batch with a NaN/inf loss or gradient: stop (saving the last good state) or skip it "
        "(no update; 10 in a row still stop)", choices=["stop", "skip"])

    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="run folder (default: runs/<YYYYmmdd-HHMMSS>)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint")
    g.add_argument("--config", metavar="FILE", help="settings from a .toml or .json file (a run's config.json works)")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after global step N, checkpointed; continue later with --resume")
    opt(g, "--checkpoint-every", "checkpoint every N steps (0: at each epoch's end)", type=int, metavar="N")
    opt(g, "--keep-checkpoints", "checkpoints to keep (>= 2)", type=int, metavar="N")
    opt(g, "--device", "cpu, cuda, cuda:N, mps or auto")
    opt(g, "--threads", "torch CPU threads; 0 keeps torch's default. 1 is fastest for these small "
        "matrices and robust on a shared CPU", type=int, metavar="N")
    opt(g, "--seed", "seed for data, split, initialisation and batch order", type=int)
    g.add_argument("--quiet", action="store_true", help="no progress output (the final summary still prints)")
    g.add_argument("--no-report", action="store_true", help="skip report.md and the plots")
    g = p.add_argument_group("distributed (DDP, under torchrun)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training with torch.distributed DDP; start with "
                        "'torchrun --nproc-per-node N -m innergrad train --distributed ...'")
    g.add_argument("--dist-backend", choices=["auto", "gloo", "nccl"], default=None,
                   help="process-group backend: nccl for CUDA, gloo for CPU (default: auto picks by --device)")
    p.set_defaults(func=cmd_train)


def _add_use(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run", required=True, metavar="DIR", help="a run folder made by 'innergrad train'")
    common.add_argument("--checkpoint", metavar="FILE", help="a specific checkpoint (default: the newest)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    common.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch CPU threads; 0 keeps torch's default (default: 1)")

    p = sub.add_parser("eval", parents=[common], formatter_class=_Formatter,
                       help="MSE and R^2 of a trained model; writes predictions",
                       description="Print MSE and R^2 of a run's model on its validation split (or on --data) "
                                   "and write the predictions (x, y, y_pred, lengths) to --out.")
    p.add_argument("--data", metavar="PATH", help="evaluate on this .npz/.csv instead of the validation split")
    p.add_argument("--out", metavar="FILE", help="predictions file, .npz or .csv (default: DIR/eval-<data>.npz)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", parents=[common], formatter_class=_Formatter,
                       help="write y for new x",
                       description="Run a trained model on new inputs (y not needed) and write y (N, T) and "
                                   "lengths (.npz), or 'sequence,t,y' rows (.csv).")
    p.add_argument("--data", required=True, metavar="PATH", help=".npz with x (and optional lengths) or long-form .csv")
    p.add_argument("--out", metavar="FILE", help="output .npz or .csv (default: DIR/predict-<data name>.<suffix>)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("check", parents=[common], formatter_class=_Formatter,
                       help="verify a trained model's gradients (gradcheck, gradgradcheck, backends)",
                       description="On a float64 copy of the trained model: gradcheck and gradgradcheck of "
                                   "(y, h_T) w.r.t. x, h0 and all parameters for every backend that runs it, "
                                   "and every backend against autograd in exact and detached mode. Prints a "
                                   "pass/fail table; exit status 1 when a check fails.")
    p.add_argument("--data", metavar="PATH", help="inputs to check at (default: the run's validation split)")
    p.add_argument("--sequences", type=int, default=3, metavar="N", help="sequences to check on (default: 3)")
    p.add_argument("--steps", type=int, default=4, metavar="T", help="time steps to check on (default: 4)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", formatter_class=_Formatter, help="(re)draw a run's report, or compare runs",
                       description="Write report.md, loss.png, predictions.png and hidden.png for a run folder; "
                                   "with --compare, print a Markdown table of several finished runs instead.",
                       epilog="example:\n  innergrad report --run runs/exact --compare runs/detached "
                              "--plot compare.png")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder made by 'innergrad train'")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="other finished runs to put side by side")
    p.add_argument("--plot", metavar="PNG", help="with --compare: also draw their validation curves here")
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="innergrad: models whose forward pass contains the gradient of a learned scalar function.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_use(sub)
    for mod in ("experiments.hnn", "bench.harness"):
        try:
            module = __import__(f"innergrad.{mod}", fromlist=["add_parser"])
        except ImportError:
            continue  # that command is not installed in this build
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    from ..train.trainer import TrainingDiverged

    args = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except TrainingDiverged as e:
        if not _other_rank(args):  # every rank diverges alike; rank 0 says so
            print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except UserError as e:
        if getattr(e, "quiet", False):
            return 2  # rank 0 of a distributed run reports it
        msg = str(e)
        first, _, rest = msg.partition("\n")
        prog = f"{PROG} [rank {_rank()}]" if _other_rank(args) else PROG
        print("\n".join([*textwrap.wrap(f"{prog}: error: {first}", 100), *([rest] if rest else [])]),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _rank() -> int:
    from ..train.distributed import env_rank

    return env_rank()


def _other_rank(args) -> bool:
    """True in a `--distributed` process other than rank 0 (which does the talking)."""
    return bool(getattr(args, "distributed", False)) and _rank() != 0


if __name__ == "__main__":
    sys.exit(main())
