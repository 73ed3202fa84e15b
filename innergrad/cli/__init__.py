"""The `innergrad` command: train, evaluate, check and use gradient-RNNs (and run experiments).

`main(argv)` returns the exit status: 0 success, 1 a failed check or a diverged run, 2 a user error
(bad option, path, data or config: one line on stderr, no traceback), 130 interrupted.

Each command is one module in this package with `add_parser(sub)` and `run(args)`; this module
assembles the parser and is the only place that turns exceptions into a message and an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from ..core.errors import InnergradError

PROG = "innergrad"

# In the order `innergrad --help` lists them. A module that is not there (a command another part of
# the build adds) is skipped, so the parser never depends on every command being installed.
COMMANDS = ("train", "eval", "predict", "check", "report", "experiment", "bench", "export", "build_kernels")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, so `main()` (and tests) get a status, not an exit."""

    def error(self, message):
        raise _UsageError(f"{message}. Run '{self.prog} --help' for the options.")


class _UsageError(InnergradError):
    pass


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


# ------------------------------------------------------------------------------- helpers shared by commands


def say(args, msg: str) -> None:
    """Progress talk on stderr, silenced by --quiet."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr, flush=True)


def run_options() -> argparse.ArgumentParser:
    """The options of the commands that use a trained run (eval, predict, check)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run", required=True, metavar="DIR", help="a run folder made by 'innergrad train'")
    common.add_argument("--checkpoint", metavar="FILE", help="a specific checkpoint (default: the newest)")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    common.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch CPU threads; 0 keeps torch's default (default: 1)")
    return common


def allow_changed_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-changed-data", action="store_true",
                   help="use the run's data file even if it changed since training (its sha256 differs): the "
                        "validation split is then other sequences, so figures are not comparable")


def load_for_use(args):
    """`(run folder, TrainConfig, model, device)` for eval, predict and check.

    Where the run's own data is used (no --data), it must be the file the run trained on.
    """
    import torch

    from ..train import load
    from ..train._config import load_run_config, resolve_device
    from ..train._runs import check_data_unchanged, recorded_sha256

    run = Path(args.run)
    cfg, whole = load_run_config(run)
    if not getattr(args, "data", None):
        check_data_unchanged(cfg.data, recorded_sha256(whole), getattr(args, "allow_changed_data", False), warn)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load(run, checkpoint=args.checkpoint, device=device)
    return run, cfg, model, device


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


def _command_module(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__

    parser = _Parser(
        prog=PROG,
        description="innergrad: models whose forward pass contains the gradient of a learned scalar function.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = _command_module(name)
        if module is not None:
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    from ..train import TrainingDiverged

    args = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _note
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except TrainingDiverged as e:
        if not _other_rank(args):  # every rank diverges alike; rank 0 says so
            print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except (InnergradError, ValueError, TypeError, OSError) as e:
        if getattr(e, "quiet", False):
            return 2  # rank 0 of a distributed run reports it
        prog = f"{PROG} [rank {_rank()}]" if _other_rank(args) else PROG
        first, _, rest = _message(e).partition("\n")
        print("\n".join([f"{prog}: error: {first}", *([rest] if rest else [])]), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _message(e: BaseException) -> str:
    """innergrad's own messages as they are; other errors with their kind (from the library, a file system)."""
    if isinstance(e, InnergradError):
        return str(e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e} ({type(e).__name__}); check the path and its permissions"
    return f"{e} ({type(e).__name__})"


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line on stderr (where and which class are for developers, not users)."""
    text = " ".join(str(message).split())
    print(f"{PROG}: note: {text}", file=sys.stderr, flush=True)


def _rank() -> int:
    from ..train._distributed import env_rank

    return env_rank()


def _other_rank(args) -> bool:
    """True in a `--distributed` process other than rank 0 (which does the talking)."""
    return bool(getattr(args, "distributed", False)) and _rank() != 0


if __name__ == "__main__":
    sys.exit(main())
