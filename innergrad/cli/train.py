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


def _cli_schema():
    """The options of `innergrad train` that are not settings of the run (how to run it)."""
    from ..core.schema import Opt, Schema

    return Schema([
        Opt("out", "path", None, "run folder, new or empty; none: runs/<YYYYmmdd-HHMMSS>-<random>", metavar="DIR"),
        Opt("overwrite", bool, False, "use a --out folder that holds files: innergrad's own files there are removed "
            "first, the others kept", excludes=("resume",)),
        Opt("resume", "path", None, "continue the run in DIR from its newest checkpoint", metavar="DIR"),
        Opt("config", "path", None, "settings from a .toml or .json file (a run's config.json works)",
            metavar="FILE", excludes=("resume",)),
        Opt("max_steps", int, None, "stop after global step N, checkpointed; continue later with --resume",
            lo=1, metavar="N", optional=True),
        Opt("quiet", bool, False, "no progress output (the final summary still prints)"),
        Opt("no_report", bool, False, "skip report.md and the plots"),
        Opt("distributed", bool, False, "data-parallel training with torch.distributed DDP; start with "
            "'torchrun --nproc-per-node N -m innergrad train --distributed ...'", group="distributed (DDP, under "
            "torchrun)"),
        Opt("dist_backend", str, None, "process-group backend: nccl for CUDA, gloo for CPU (default: auto picks by "
            "--device)", choices=("auto", "gloo", "nccl"), requires=("distributed",),
            group="distributed (DDP, under torchrun)"),
    ])


def add_parser(sub) -> None:
    from ..train._config import SCHEMA

    p = sub.add_parser("train", help="train a gradient-RNN (built-in data by default)", description=TRAIN_DESC,
                       formatter_class=Formatter, epilog=EPILOG.split("\n\n")[0])
    groups = SCHEMA.add_arguments(p)
    cli = _cli_schema()
    for o in cli:
        o.add_to(groups["run"] if not o.group else groups.setdefault(o.group, p.add_argument_group(o.group)))
    p.set_defaults(func=run)


def _given(args) -> tuple[dict, dict]:
    """`(settings of the run, options about running it)` given on the command line, the latter checked."""
    from ..train._config import SCHEMA

    cli = _cli_schema()
    how = cli.given(args)
    cli.refuse_inapplicable(how)
    cli.check(how, "", as_options=True)
    return SCHEMA.given(args), how


def _plan_train(args, given: dict):
    """`(TrainConfig, RunFolder)` of a new or resumed run, with every check that needs no training.

    The folder comes locked: the caller closes it when the run ends.
    """
    from ..train._config import RESUME_OVERRIDES, SCHEMA, check_resume, load_run_config
    from ..train._runs import open_run_folder

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise InnergradError(
                f"--out {args.out} and --resume {args.resume} name different folders; give only --resume")
        saved, _ = load_run_config(run_dir)
        cfg = saved.replace(given, "command line")
        check_resume(saved.to_dict(), cfg.to_dict(), RESUME_OVERRIDES, str(run_dir), option=lambda k: SCHEMA[k].option)
        if cfg.threads != saved.threads:
            warn(f"--threads {cfg.threads} differs from the run's {saved.threads}: training goes on, but not "
                 "bit-identical to an uninterrupted run (CPU sums are split by thread count); resume with "
                 f"--threads {saved.threads} to continue exactly")
        return cfg, open_run_folder(run_dir, resume=True)
    cfg = _new_config(args, given)
    return cfg, open_run_folder(args.out, overwrite=args.overwrite, inputs=[f for f in (cfg.data, args.config) if f])


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
    given, _ = _given(args)
    if not args.distributed:
        return _train(args, given, None)
    from ..train._distributed import QuietUserError, env_rank, init_distributed, refuse_unsupported, shutdown

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
        status = _train(args, given, ctx)
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


def _train(args, given: dict, ctx) -> int:
    import json

    from ..train._config import TrainConfig

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

    from ..train._build import sequence_trainer
    from ..train._checkpoint import CheckpointFallbackWarning, list_checkpoints
    from ..train._report import write_report

    main_rank = ctx is None or ctx.is_main
    trainer = sequence_trainer(cfg, run_dir, quiet=args.quiet, dist=ctx)
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
        say(args, f"training {trainer.task.describe(trainer.ctx)}; run folder {run_dir}")
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
