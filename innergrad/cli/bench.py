"""`innergrad bench`: one training step of a model of the family (GradRNN, HNN, force field, dissipative
HNN, Lagrangian NN) timed every way (the harness is innergrad/bench/harness.py)."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.errors import InnergradError
from ..core.schema import Opt
from . import options


def _ints(s) -> list[int]:
    if isinstance(s, (list, tuple)):  # checked by the option schema (cli.options): positive integers
        return [int(v) for w in s for v in str(w).split(",") if v]
    return [int(v) for v in str(s).split(",") if v]


def add_parser(sub) -> argparse.ArgumentParser:
    from ..bench import harness, single_call

    p = sub.add_parser(
        "bench",
        help="time one training step every way (naive, torch.func, innergrad backends, compiled, JAX)",
        description=harness.__doc__.split("\n\n")[0],
    )
    default_dev = "cuda" if harness.torch.cuda.is_available() else "cpu"
    sizes = "; ".join(f"{k}: " + ", ".join(f"{a}={v}" for a, v in m.defaults.items())
                      for k, m in single_call.MODELS.items())
    p.add_argument("--model", default="gradrnn", choices=list(harness.MODEL_NAMES),
                   help="gradrnn (a sequence) or a single-call model: hnn (J grad H), field (-grad E), dhnn "
                        "(J grad H + grad D), lnn (Lagrangian, Hessian + solve) (default: gradrnn)")
    p.add_argument("--device", default=default_dev, help=f"cpu or cuda (default: {default_dev})")
    sweep = ("sweep",)  # --sweep brings its own grid: sizes given with it would be ignored, so they are refused
    options(p, Opt("T", "ints", (64,), "sequence length(s), comma-separated (gradrnn)", lo=1, hi=10**6,
                excludes=sweep),
            Opt("B", "ints", None, "batch size(s), comma-separated; none: 256 for gradrnn, the model's default "
                "otherwise", lo=1, hi=10**7, excludes=sweep),
            Opt("dim", "ints", None, f"state size(s) of a single-call model; none: {sizes}", lo=1, hi=10**5,
                excludes=sweep),
            Opt("width", "ints", None, "hidden width(s) of the MLP, comma-separated; none: 128 for gradrnn, the "
                "model's default otherwise", lo=1, hi=10**5, excludes=sweep),
            Opt("layers", int, 2, "hidden layers of F", lo=1, hi=64, metavar="N"),
            Opt("sweep", bool, False, f"the full grid: T in {harness.SWEEP_T}, B in {harness.SWEEP_B}, width in "
                f"{harness.SWEEP_WIDTH}"))
    p.add_argument("--activation", default=None, help="activation (default: softplus; the model's otherwise)")
    p.add_argument("--ways", default="all",
                   help=f"comma-separated subset of {','.join(harness.WAY_FUNCS)} (default: all that exist here)")
    options(p, Opt("reps", int, 10, "timed steps per way; the median is reported", lo=1, hi=10**6, metavar="N"),
            Opt("warmup", int, 2, "untimed steps after the first call", lo=0, hi=10**6, metavar="N"))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default: float32")
    options(p, Opt("threads", int, None, "torch CPU threads; none: torch's choice", lo=1, hi=4096, metavar="N"))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall (default): host clock per step; cpu: the process's CPU time per step, which on a "
                        "machine shared with other jobs leaves out the waits for a core (use with --threads 1)")
    p.add_argument("--interleave", action="store_true",
                   help="time the steps round-robin over the ways (spreads slow drifts in the load of a "
                        "shared machine; but thread pools of one way can then slow the next)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write all results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.set_defaults(func=run)
    return p


def configs_from_args(args):
    from dataclasses import replace

    from ..bench import harness, single_call

    model = getattr(args, "model", "gradrnn")
    d = single_call.MODELS[model].defaults if model != "gradrnn" else {"B": 256, "width": 128,
                                                                         "activation": "softplus"}
    base = harness.Config(device=args.device, layers=args.layers, activation=args.activation or d["activation"],
                          dtype=args.dtype, reps=args.reps, warmup=args.warmup, memory=not args.no_memory,
                          interleave=args.interleave, model=model, dim=d.get("dim", 2),
                          clock=getattr(args, "clock", "wall"))
    if args.sweep:
        return harness.grid(base, harness.SWEEP_T, harness.SWEEP_B, harness.SWEEP_WIDTH)
    Bs, widths = _ints(args.B or str(d["B"])), _ints(args.width or str(d["width"]))
    if model == "gradrnn":
        return harness.grid(base, _ints(args.T), Bs, widths)
    return [replace(c, dim=D) for D in _ints(args.dim or str(d["dim"]))
            for c in harness.grid(replace(base, T=1), [1], Bs, widths)]


def run(args) -> int:
    """Exit status 1 (CheckFailed) if some way disagrees with the reference way past the stated tolerance."""
    import torch

    from ..bench import harness, report
    from ..core.errors import CheckFailed
    from ..core.files import check_output

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InnergradError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    model = getattr(args, "model", "gradrnn")
    funcs = harness.ways_for(model)
    ways = harness.available_ways(args.device, model) if args.ways == "all" else [w for w in args.ways.split(",") if w]
    bad = [w for w in ways if w not in funcs]
    if bad:
        raise InnergradError(f"unknown way(s) {bad} for --model {model}; choose from {list(funcs)}")
    if model != "gradrnn" and args.sweep:
        raise InnergradError("--sweep is the gradient-RNN's T x B x width grid; for --model "
                             f"{model} give --B, --dim and --width lists instead")
    cfgs = configs_from_args(args)
    if args.json:
        check_output(args.json, overwrite=args.overwrite, option="--json")  # before minutes of timing
    what = "forward over T" if model == "gradrnn" else "the model's output for every state"
    print(f"# innergrad bench --model {model}: one training step ({what}, MSE, backward) on "
          f"{report.device_name(args.device)}")
    from ..core.settings import settings

    with settings(**({"threads": args.threads} if args.threads else {})):  # restored afterwards
        results = harness.run(cfgs, ways)
    if args.json:
        report.save_json(args.json, args.device, results, overwrite=args.overwrite)
    failed: list[Any] = [r for r in results if r.agrees is False]
    if failed:
        worst: Any = max(failed, key=lambda r: r.max_rel_diff if r.max_rel_diff == r.max_rel_diff else float("inf"))
        raise CheckFailed(
            f"{len(failed)} way(s) disagree with the reference past the tolerance: {worst.way} at "
            f"T={worst.config['T']}, B={worst.config['B']}, width={worst.config['width']} differs by "
            f"{worst.max_rel_diff:.1e} (tolerance {report.agreement_tolerance(worst.config['dtype']):.0e}, "
            f"{worst.config['dtype']}); see the table above")
    return 0
