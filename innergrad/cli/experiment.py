"""`innergrad experiment {hnn,lnn,dhnn,forces,table}`: the seeded experiments of innergrad/experiments/."""

from __future__ import annotations

from ..core.schema import Opt
from . import options


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _common(q, default_out: str) -> None:
    """The options every experiment takes: where, which seed(s), how many processes and threads."""
    q.add_argument("--out", default=None, metavar="DIR", help=f"output directory (default {default_out})")
    options(q, Opt("seed", int, 0, "numpy and torch seed", lo=0, hi=2**32 - 1, why="numpy and torch seeds are "
                   "32-bit"))
    options(q, Opt("seeds", str, None, "several seeds, e.g. 0-9 or 0,3,7: one run each in OUT/seed-<s>, summarised "
                   "as median [min, max] and mean ± std in OUT/summary.md (rewritten after every seed)",
                   metavar="SPEC"))
    options(q, Opt("jobs", int, None, "parallel processes for --seeds; none: the CPU cores, at most the seeds",
                   lo=1, hi=1024, metavar="N", requires=("seeds",)),
            Opt("threads", int, 1, "torch CPU threads; 0 keeps torch's default (1: fastest for these small nets)",
                lo=0, hi=4096, metavar="N"))
    q.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    q.set_defaults(func=run)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="reproducible experiments: HNN vs baseline (Greydanus et al. 2019), learned force field",
        description="Run a seeded experiment and write report.md, results.json and PNG plots to --out.",
    )
    kinds = p.add_subparsers(dest="experiment", metavar="{hnn,lnn,dhnn,forces,table}", required=True)
    _add_hnn(kinds)
    _add_lnn(kinds)
    _add_dhnn(kinds)
    _add_forces(kinds)
    _add_table(kinds)


def _add_hnn(kinds) -> None:
    from ..core.backends import backends
    from ..experiments.hnn import ROLLOUT_DT
    from ..experiments.hnn_tasks import TASKS

    h = kinds.add_parser("hnn", help="baseline MLP vs Hamiltonian NN on spring, pendulum, two-body or your data",
                         description="Baseline MLP vs Hamiltonian NN with the data, model and metrics of "
                                     "Greydanus et al. 2019, or on your own trajectories with --data.")
    h.add_argument("--task", choices=sorted(TASKS), default=None, help="system (default spring)")
    options(h, Opt("steps", int, None, "training steps per model; none: the paper's, 2000 (10000 for two-body)",
                   lo=1, hi=10**8, metavar="N"),
            Opt("hidden", "widths", (200, 200), "hidden layer widths", metavar="WIDTH"),
            Opt("energy_trials", int, 15, "initial conditions for our energy protocol", lo=1, hi=10**5, metavar="N"),
            Opt("rollout_dt", float, ROLLOUT_DT, "step of the extra ig.rollout energy rows", lo=0, open="lo",
                hi=1e3, metavar="DT"))
    h.add_argument("--backend", choices=backends(), default="auto", help="HNN gradient backend (default auto)")
    _add_data_options(h, "q,p", "positions then momenta",
                      "baseline,hnn", "baseline, hnn, dhnn (dissipative HNN), lnn (Lagrangian NN)")
    _common(h, "runs/hnn-<task> or runs/hnn-<data file>")


def _add_data_options(q, state: str, state_help: str, models: str, choices: str) -> None:
    """`--data FILE` and what reads it: columns, split, the true energy, finite differences, models."""
    d = q.add_argument_group("your own trajectories (instead of --task)")
    d.add_argument("--data", default=None, metavar="FILE", help="a CSV (header line of names) or .npz file")
    d.add_argument("--time", default="t", metavar="COL", help="time column (default t); steps may be uneven")
    d.add_argument("--state", default=state, metavar="COLS", help=f"state columns, {state_help} (default {state})")
    d.add_argument("--trajectory", default=None, metavar="COL", help="trajectory id column, when there are several")
    split = d.add_mutually_exclusive_group()
    # a fraction that leaves data on both sides: strictly between 0 and 1
    options(q, Opt("test_fraction", float, None, "the last F of the trajectories (or of one trajectory's time "
                   "span) for testing; none: 0.25", lo=0, hi=1, open="both", metavar="F"), into=split)
    split.add_argument("--test-trajectories", nargs="+", default=None, metavar="ID", help="test trajectory ids")
    energy = d.add_mutually_exclusive_group()
    energy.add_argument("--energy-column", default=None, metavar="COL", help="true energy column")
    energy.add_argument("--energy", default=None, metavar="EXPR",
                        help="true energy as an expression in the state names, e.g. 'p**2/2 - cos(q)'")
    d.add_argument("--scheme", choices=("central", "forward"), default="central",
                   help="finite differences for dx/dt (default central: second order on uneven steps)")
    d.add_argument("--models", default=None, metavar="LIST",
                   help=f"the models to compare, any subset of {choices} (default {models})")


def _add_lnn(kinds) -> None:
    from ..experiments.lnn import TASKS

    q = kinds.add_parser("lnn", help="baseline MLP vs Lagrangian NN (vs HNN) on the double pendulum or your data",
                         description="Baseline MLP vs ig.LagrangianNet (and an HNN in canonical coordinates) on the "
                                     "double pendulum as in Cranmer et al. 2020, or on your own trajectories.")
    q.add_argument("--task", choices=TASKS, default=None, help="system (default double-pendulum)")
    options(q, Opt("steps", int, None, "training steps per model; none: 2000", lo=1, hi=10**8, metavar="N"),
            Opt("hidden", "widths", None, "hidden layer widths; none: 128 128 (200 200 with --data)",
                metavar="WIDTH"))
    _add_data_options(q, "q,v", "positions then velocities", "baseline,lnn (--task: baseline,lnn,hnn)",
                      "baseline, lnn, hnn (canonical coordinates, --task only; with --data also dhnn)")
    _common(q, "runs/lnn-<task> or runs/lnn-<data file>")


def _add_dhnn(kinds) -> None:
    from ..experiments.dhnn import TASKS

    q = kinds.add_parser("dhnn", help="baseline vs HNN vs dissipative HNN on the damped spring",
                         description="Baseline MLP, HNN and ig.DissipativeHNN on a damped mass-spring as in Sosanya & "
                                     "Greydanus 2022: the learned friction against the true Rayleigh function, and "
                                     "a prediction for an unseen friction coefficient. For your own data: "
                                     "`innergrad experiment hnn --data FILE --models baseline,hnn,dhnn`.")
    q.add_argument("--task", choices=TASKS, default="damped-spring", help="system (default damped-spring)")
    options(q, Opt("steps", int, 1500, "training steps per model", lo=1, hi=10**8, metavar="N"),
            Opt("hidden", "widths", (64, 64), "hidden layer widths", metavar="WIDTH"),
            Opt("rho", float, 0.2, "friction coefficient of the training data", lo=0, hi=1e3),
            Opt("rho_unseen", float, 0.4, "friction coefficient of the prediction test", lo=0, hi=1e3))
    _common(q, "runs/dhnn-<task>")


def _add_forces(kinds) -> None:
    f = kinds.add_parser("forces", help="learn an energy from forces: Mueller-Brown, or your data",
                         description="Learn the Mueller-Brown potential from noisy force samples with "
                                     "ig.ConservativeField and report energy and force errors on a grid; or "
                                     "fit your positions with energies and/or forces (--data).")
    options(f, Opt("steps", int, 3000, "training steps", lo=1, hi=10**8, metavar="N"),
            Opt("samples", int, 1000, "force samples", lo=2, hi=10**8, metavar="N"),
            Opt("noise", float, 0.1, "force noise std as a fraction of the RMS force", lo=0, hi=1e3, metavar="F"),
            Opt("energy_weight", float, None, "weight of the energy term; none: 0 for Mueller-Brown (forces only), "
                "1 with --data", lo=0, hi=1e6, metavar="W"),
            Opt("lr", float, 3e-3, "Adam learning rate, cosine-decayed", lo=0, open="lo", hi=1e3))
    fd = f.add_argument_group("your own data")
    fd.add_argument("--data", default=None, metavar="FILE", help="a CSV or .npz file with positions and targets")
    fd.add_argument("--positions", default="x,y", metavar="COLS", help="position columns (default x,y)")
    fd.add_argument("--energy-column", default=None, metavar="COL", help="energy column")
    fd.add_argument("--forces", default=None, metavar="COLS", help="force columns, one per position")
    options(f, Opt("test_fraction", float, 0.2, "held-out rows (strictly between 0 and 1: data on both sides)",
                   lo=0, hi=1, open="both", metavar="F"), into=fd)
    _common(f, "runs/forces or runs/forces-<data file>")


def _add_table(kinds) -> None:
    t = kinds.add_parser("table", help="the README's HNN table from multi-seed runs or a results file",
                         description="Collect the summary.json of `experiment hnn --task T --seeds ...` runs (or "
                                     "read a saved results file), print the table, optionally save the results "
                                     "and rewrite the README's generated block.")
    t.add_argument("inputs", nargs="+", metavar="DIR_OR_JSON", help="--out folders of seed runs, or results/hnn.json")
    options(t, Opt("save", "path", None, "write the collected results here", metavar="JSON"),
            Opt("readme", "path", None, "rewrite this README's generated HNN table (an edit in place: the rest is "
                "kept)", metavar="FILE"),
            Opt("overwrite", bool, False, "replace the --save file if it exists", requires=("save",)))
    t.set_defaults(func=run)


def _check_data_only(args, names) -> None:
    from ..core.errors import InnergradError

    given = [n for n in names if getattr(args, n.replace("-", "_")) not in (None, False)]
    if given:
        raise InnergradError(f"--{', --'.join(given)} only apply with --data FILE; add --data or drop them")


def _table(args) -> int:
    import json

    from ..core.files import check_output, strict_json, write_output
    from ..experiments import results

    inputs = [("DIR_OR_JSON", p) for p in args.inputs]
    if args.save:
        check_output(args.save, inputs=[*inputs, ("--readme", args.readme)], overwrite=args.overwrite,
                     option="--save")
    res = results.collect(args.inputs)
    if args.readme:  # refused before --save writes: a README that is an input, or one without the markers
        check_output(args.readme, inputs=inputs, overwrite=True, option="--readme")
        results.readme_text(args.readme, res.get("block", "hnn"))
    if args.save:
        write_output(args.save, json.dumps(strict_json(res), indent=2, allow_nan=False) + "\n",
                     inputs=[*inputs, ("--readme", args.readme)], overwrite=args.overwrite, option="--save")
    print(results.table(res))
    if args.readme:
        changed = results.update_readme(args.readme, res, inputs=inputs)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    return 0


DATA_ONLY = ("trajectory", "test-fraction", "test-trajectories", "energy-column", "energy", "models")


def _data_options(args, default_steps: int, default_hidden) -> dict:
    from ..core.errors import InnergradError

    if args.task is not None:
        raise InnergradError("--task and --data exclude each other: --task runs the paper's system, "
                             "--data your trajectories")
    opts = dict(data=args.data, time_column=args.time, state=_names(args.state), trajectory=args.trajectory,
                test_fraction=args.test_fraction, test_trajectories=args.test_trajectories,
                energy_column=args.energy_column, energy=args.energy, scheme=args.scheme,
                steps=default_steps if args.steps is None else args.steps,
                hidden_layers=default_hidden if args.hidden is None else args.hidden)
    if args.models is not None:
        opts["models"] = _names(args.models)
    return opts


def _hnn(args) -> tuple[str, dict]:
    if args.data is not None:
        return "hnn-data", dict(_data_options(args, 2000, [200, 200]), backend=args.backend)
    _check_data_only(args, DATA_ONLY)
    return "hnn", dict(task=args.task or "spring", steps=args.steps, hidden_layers=args.hidden,
                       energy_trials=args.energy_trials, backend=args.backend, rollout_dt=args.rollout_dt)


def _lnn(args) -> tuple[str, dict]:
    if args.data is not None:
        return "lnn-data", _data_options(args, 2000, [200, 200])
    _check_data_only(args, DATA_ONLY[:-1])  # --models also chooses among the task's models
    opts = dict(task=args.task or "double-pendulum", steps=2000 if args.steps is None else args.steps,
                hidden_layers=[128, 128] if args.hidden is None else args.hidden)
    if args.models is not None:
        opts["models"] = _names(args.models)
    return "lnn", opts


def _dhnn(args) -> tuple[str, dict]:
    return "dhnn", dict(task=args.task, steps=args.steps, hidden_layers=args.hidden, rho=args.rho,
                        rho_unseen=args.rho_unseen)


def _forces(args) -> tuple[str, dict]:
    if args.data is not None:
        return "forces-data", dict(
            data=args.data, positions=_names(args.positions), energy_column=args.energy_column,
            forces=_names(args.forces) if args.forces else None, test_fraction=args.test_fraction,
            energy_weight=1.0 if args.energy_weight is None else args.energy_weight, steps=args.steps, lr=args.lr)
    _check_data_only(args, ("energy-column", "forces"))
    return "forces", dict(steps=args.steps, samples=args.samples, noise=args.noise,
                          energy_weight=0.0 if args.energy_weight is None else args.energy_weight, lr=args.lr)


def run(args) -> int:
    from ..core.errors import InnergradError
    from ..experiments import registry, runner, seeds

    if args.experiment == "table":
        return _table(args)
    name, options = {"hnn": _hnn, "lnn": _lnn, "dhnn": _dhnn, "forces": _forces}[args.experiment](args)
    seed_list = seeds.parse_seeds(args.seeds) if args.seeds is not None else None
    experiment = registry.build(name, options)  # options are checked (and data read) before any folder is made
    if seed_list is not None:
        jobs = args.jobs if args.jobs is not None else max(1, min(len(seed_list), seeds.max_jobs()))
        seeds.run_seeds(experiment, seed_list, args.out, jobs=jobs, quiet=args.quiet)
        return 0
    if args.jobs is not None:
        raise InnergradError("--jobs applies with --seeds; add --seeds 0-4 (for example) or drop --jobs")
    runner.run(experiment, out=args.out, seed=args.seed, quiet=args.quiet, threads=args.threads or None)
    return 0
