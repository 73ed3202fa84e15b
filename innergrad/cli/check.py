"""`innergrad check`: gradcheck, gradgradcheck and backend agreement of a trained run's model."""

from __future__ import annotations

from ..core.errors import InnergradError
from ..core.schema import Opt
from . import Formatter, allow_changed_data_option, load_for_use, options, run_options


def add_parser(sub) -> None:
    p = sub.add_parser("check", formatter_class=Formatter,
                       help="verify a trained model's gradients (gradcheck, gradgradcheck, backends)",
                       description="On a float64 copy of the trained model: gradcheck and gradgradcheck of "
                                   "(y, h_T) w.r.t. x, h0 and all parameters for every backend that runs it, "
                                   "and every backend against autograd in exact and detached mode. Prints a "
                                   "pass/fail table; exit status 1 when a check fails.")
    options(p, *run_options(),
            Opt("data", "path", None, "inputs to check at; none: the run's validation split", metavar="PATH"),
            Opt("sequences", int, 3, "sequences to check on", lo=1, hi=10**4, metavar="N"),
            Opt("steps", int, 4, "time steps to check on", lo=1, hi=10**5, metavar="T"),
            allow_changed_data_option())
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.sequences import load_data
    from ..train import check_model
    from ..train._sequence_task import run_data

    run_dir, cfg, model, _ = load_for_use(args)
    data = load_data(args.data, require_y=False) if args.data else run_data(cfg).split(cfg.val_fraction, cfg.seed)[1]
    if data.input_size != model.input_size:
        raise InnergradError(
            f"{data.source}: input_size {data.input_size} does not match the model's {model.input_size}")
    rows = check_model(model, data, n_seq=args.sequences, n_steps=args.steps)
    print(f"gradient checks of {run_dir} (float64 copy, {min(args.sequences, len(data))} sequences x "
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
