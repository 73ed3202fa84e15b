"""`innergrad experiment {hnn,forces}`: the seeded experiments of innergrad/experiments/."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..core.backends import backends
    from ..experiments.hnn import ROLLOUT_DT
    from ..experiments.hnn_tasks import TASKS

    p = sub.add_parser(
        "experiment",
        help="reproducible experiments: HNN vs baseline (Greydanus et al. 2019), learned force field",
        description="Run a seeded experiment and write report.md, results.json and PNG plots to --out.",
    )
    kinds = p.add_subparsers(dest="experiment", metavar="{hnn,forces}", required=True)

    def common(q, default_out: str):
        q.add_argument("--out", default=None, metavar="DIR", help=f"output directory (default {default_out})")
        q.add_argument("--seed", type=int, default=0, help="numpy and torch seed (default 0)")
        q.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads; 0 keeps torch's default (default 1: fastest for these small nets)")
        q.add_argument("--quiet", action="store_true", help="no progress bars or summary")
        q.set_defaults(func=run)

    h = kinds.add_parser("hnn", help="baseline MLP vs Hamiltonian NN on spring, pendulum or two-body",
                         description="Baseline MLP vs Hamiltonian NN with the data, model and metrics of "
                                     "Greydanus et al. 2019.")
    h.add_argument("--task", choices=sorted(TASKS), default="spring", help="system (default spring)")
    h.add_argument("--steps", type=int, default=None,
                   help="training steps per model (default: the paper's, 2000; 10000 for two-body)")
    h.add_argument("--hidden", type=int, nargs="+", default=[200, 200], metavar="WIDTH",
                   help="hidden layer widths (default 200 200)")
    h.add_argument("--energy-trials", type=int, default=15,
                   help="initial conditions for the energy metric (default 15)")
    h.add_argument("--rollout-dt", type=float, default=ROLLOUT_DT,
                   help=f"step of the extra ig.rollout energy rows (default {ROLLOUT_DT})")
    h.add_argument("--backend", choices=backends(), default="auto", help="HNN gradient backend (default auto)")
    common(h, "runs/hnn-<task>")

    f = kinds.add_parser("forces", help="learn the Mueller-Brown potential from noisy forces",
                         description="Learn the Mueller-Brown potential from noisy force samples with "
                                     "ig.ConservativeField; report energy and force errors on a grid.")
    f.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    f.add_argument("--samples", type=int, default=1000, help="force samples (default 1000)")
    f.add_argument("--noise", type=float, default=0.1,
                   help="force noise std as a fraction of the RMS force (default 0.1)")
    f.add_argument("--energy-weight", type=float, default=0.0,
                   help="also train on exact energies with this weight (default 0: forces only)")
    f.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate, cosine-decayed (default 3e-3)")
    common(f, "runs/forces")


def run(args) -> int:
    from ..experiments.hnn import run_forces, run_hnn

    threads = args.threads or None  # 0 keeps torch's default
    if args.experiment == "hnn":
        run_hnn(task=args.task, out=args.out, steps=args.steps, seed=args.seed, quiet=args.quiet,
                hidden_layers=args.hidden, energy_trials=args.energy_trials, backend=args.backend,
                threads=threads, rollout_dt=args.rollout_dt)
    else:
        run_forces(out=args.out, steps=args.steps, seed=args.seed, samples=args.samples, noise=args.noise,
                   energy_weight=args.energy_weight, quiet=args.quiet, threads=threads, lr=args.lr)
    return 0
