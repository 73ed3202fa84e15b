"""`innergrad train`: train a gradient-RNN on sequences (built-in data by default), or resume a run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..core.errors import InnergradError
from ..core.text import fmt
from . import EPILOG, PROG, Formatter, say, warn

TRAIN_DESC = """\
Train a gradient-RNN  y_t = F(x_t, h_{t-1}),  h_t = dF/dh  on sequences.

Without --data it trains on the built-in data set: 1024 sequences of 32 steps with 4 inputs from a
random teacher GradRNN (hidden 8, F = MLP (32, 32) softplus), y standardised plus Gaussian noise of
std 0.1, so the validation MSE floor is 0.01 (R^2 ceiling ~0.99). The defaults (hidden 32, F = MLP
(128, 128) softplus, 40 epochs of batch 32) reach validation R^2 ~0.97 in about 15 s on 2 idle CPU
cores (under a minute when the CPU is shared).

Data files: .npz with x (N, T, input_size), y (N, T) and optional lengths (N,); or long-form CSV with
a header 'sequence,t,x0,...,xk,y'. The run folder (--out, a new or empty folder; default
runs/<timestamp>-<random>) gets config.json, metrics.jsonl, checkpoints/step-*.safetensors,
summary.json and report.md with PNG plots; it is locked while the run writes. Ctrl-C
saves a checkpoint and stops; --resume continues exactly. Settings can come from --config FILE
(.toml or .json with the setting names below, underscores for dashes); command-line options win.
"""


def add_parser(sub) -> None:
    from ..train._config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a gradient-RNN (built-in data by default)", description=TRAIN_DESC,
                       formatter_class=Formatter, epilog=EPILOG.split("\n\n")[0])

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
    g.add_argument("--out", metavar="DIR",
                   help="run folder, new or empty (default: runs/<YYYYmmdd-HHMMSS>-<random>)")
    g.add_argument("--overwrite", action="store_true",
                   help="use a --out folder that holds files: innergrad's own files there are removed first, "
                        "the others kept")
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
    p.set_defaults(func=run)


def _given_config(args) -> dict:
    from ..train._config import TrainConfig

    return {k: getattr(args, k) for k in TrainConfig.keys() if getattr(args, k, None) is not None}


def _plan_train(args, given: dict):
    """`(TrainConfig, RunFolder)` of a new or resumed run, with every check that needs no training.

    The folder comes locked: the caller closes it when the run ends.
    """
    from ..train._config import RESUME_OVERRIDES, TrainConfig, load_run_config
    from ..train._runs import RunFolder

    if args.resume:
        run_dir = Path(args.resume)
        if args.config:
            raise InnergradError("--config cannot be combined with --resume: a resumed run keeps its own config.json")
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise InnergradError(
                f"--out {args.out} and --resume {args.resume} name different folders; give only --resume")
        cfg, _ = load_run_config(run_dir)
        new = TrainConfig.from_mapping(given, "command line")
        changed = sorted(k for k in given if getattr(new, k) != getattr(cfg, k))
        fixed = [k for k in changed if k not in RESUME_OVERRIDES]
        if fixed:
            opts = ", ".join(f"--{k.replace('_', '-')} (run has {getattr(cfg, k)!r})" for k in fixed)
            raise InnergradError(
                f"{run_dir}: a resumed run keeps its settings, but these differ: {opts}. Drop them to "
                f"continue exactly, or start a new run with --out. Only "
                f"{', '.join(k for k in RESUME_OVERRIDES if k != 'on_nan')} may change (and on_nan)."
            )
        if args.overwrite:
            raise InnergradError("--overwrite cannot be combined with --resume: a resumed run keeps its files")
        if "threads" in changed:
            warn(f"--threads {given['threads']} differs from the run's {cfg.threads}: training goes on, but not "
                 "bit-identical to an uninterrupted run (CPU sums are split by thread count); resume with "
                 f"--threads {cfg.threads} to continue exactly")
        return cfg.replace({k: given[k] for k in changed}), RunFolder.open_for_resume(run_dir)
    cfg = _new_config(args, given)
    inputs = [f for f in (cfg.data, args.config) if f]
    return cfg, RunFolder.create(args.out, overwrite=args.overwrite, inputs=inputs)


def _new_config(args, given: dict):
    from ..train._config import TrainConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    cfg = TrainConfig.from_mapping(values, str(args.config)) if values else TrainConfig()
    cfg = cfg.replace(given, "command line")
    builtin_only = [k for k in ("n_sequences", "seq_len", "input_size", "noise") if k in given]
    if cfg.data and builtin_only:
        opts = ", ".join("--" + k.replace("_", "-") for k in builtin_only)
        raise InnergradError(
            f"{opts} describe(s) the built-in data only, but --data {cfg.data} is given: a data file brings its own "
            "sizes (input_size is x's last dimension). Drop " + opts
        )
    if cfg.data:  # an absolute path keeps eval, check and --resume working from any folder
        cfg = cfg.replace({"data": str(Path(cfg.data).resolve())})
    return cfg


def run(args) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise InnergradError(f"--max-steps must be >= 1, got {args.max_steps}")
    if not args.distributed:
        if args.dist_backend is not None:
            raise InnergradError("--dist-backend applies only with --distributed (under torchrun); drop it or add "
                            "--distributed")
        return _train(args, None)
    from ..train._distributed import QuietUserError, env_rank, init_distributed, refuse_unsupported, shutdown

    given = _given_config(args)
    device = given.get("device")
    if not args.resume:
        try:  # refuse what DDP cannot do before joining the job (every rank would say the same)
            cfg = _new_config(args, given)
            refuse_unsupported(cfg)
        except InnergradError as e:
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


def _train(args, ctx) -> int:
    import json

    from ..train._config import TrainConfig

    given = _given_config(args)
    held = []  # the locked RunFolder, in the process that writes (rank 0 under DDP)
    if ctx is None:
        cfg, folder = _plan_train(args, given)
        held.append(folder)
        run_dir = folder.path
    else:  # rank 0 decides (the default folder name is random) and tells the others
        def plan() -> bytes:
            c, f = _plan_train(args, given)
            held.append(f)
            return json.dumps({"config": c.to_dict(), "run_dir": str(f.path)}).encode()

        obj = json.loads(ctx.from_main(plan).decode())
        cfg, run_dir = TrainConfig.from_mapping(obj["config"], "config"), Path(obj["run_dir"])
        actual = "cuda" if ctx.device.type == "cuda" else "cpu"
        if cfg.device != actual:
            cfg = cfg.replace({"device": actual})
    try:
        return _train_in(args, ctx, cfg, run_dir)
    finally:
        for f in held:
            f.close()


def _train_in(args, ctx, cfg, run_dir: Path) -> int:
    import warnings

    from ..train._checkpoint import CheckpointFallbackWarning, list_checkpoints
    from ..train._report import write_report
    from ..train._sequence_task import SequenceTrainer

    main_rank = ctx is None or ctx.is_main
    trainer = SequenceTrainer(cfg, run_dir, quiet=args.quiet, dist=ctx)
    if args.resume:
        has = list_checkpoints(run_dir) if ctx is None else ctx.from_main(
            lambda: b"1" if list_checkpoints(run_dir) else b"") == b"1"
        if has:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointFallbackWarning)  # printed below as a warning line
                step = trainer.resume()
            if step > trainer.total_steps:
                raise InnergradError(
                    f"{run_dir} is at step {step}, past the end of --epochs {cfg.epochs} (step "
                    f"{trainer.total_steps}); give more epochs than the run has done "
                    f"({-(-step // trainer.steps_per_epoch)}) to train on, or drop --epochs to finish as planned"
                )
            if main_rank:
                for note in trainer.resume_notes:
                    warn(note)
                say(args, f"resuming {run_dir} at step {step} of {trainer.total_steps}"
                           + (f" on {ctx.world_size} processes" if ctx is not None else ""))
        elif main_rank:
            say(args, f"{run_dir} has no checkpoint yet; starting it from step 0")
    elif main_rank:
        say(args, f"training {trainer.describe()}; run folder {run_dir}")
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
        if importlib.util.find_spec("matplotlib") is None:  # optional: a plain install trains without it
            print(f"{PROG}: note: no report plots (matplotlib is not installed: pip install 'innergrad[train]', "
                  f"then 'innergrad report --run {run_dir}')", file=sys.stderr)
        else:
            report = write_report(run_dir)
    floor = summary.get("noise_floor_mse")
    secs = summary["train_seconds"]
    lines = [
        f"run folder   {run_dir}",
        f"validation   MSE {fmt(summary['val_mse'])}"
        + (f" (noise floor {fmt(floor)})" if floor is not None else "")
        + f"   R^2 {fmt(summary['val_r2'])}",
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
