"""The `innergrad` command: train, evaluate, check and use gradient-RNNs (and run experiments).

`main(argv)` returns the exit status: 0 success, 1 a failed check or a diverged run, 2 a user error
(innergrad's own `InnergradError`, or an OS error about a file: one line on stderr, no traceback),
3 a bug (any other exception: one line saying so, the traceback in a fresh file whose path the line
gives, or on stderr with `--debug`), 130 interrupted.

Each command is one module in this package with `add_parser(sub)` and `run(args)`; this module
assembles the parser and is the only place that turns exceptions into a message and an exit status.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import warnings
from pathlib import Path

from ..core.errors import CheckFailed, InnergradError
from ..core.schema import Opt, Schema
from ..core.text import shorten

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


def options(p: argparse.ArgumentParser, *opts: Opt, into=None) -> Schema:
    """Add `opts` (rows of the option schema, `core/schema.py`) to a command's parser. `main` checks them
    before the command runs: types and ranges, options that cannot apply (`requires` / `excludes`),
    then fills in the defaults of those not given. `into`: an argument group of `p` (mutually exclusive or
    not) that shows them."""
    schema = Schema(opts)
    schema.add_arguments(into if into is not None else p)
    p.set_defaults(**{o.name: _plain(o.default) for o in schema if o.cli and not o.required})
    before = p.get_default("_schema")  # several calls on one parser (shared options, then its own) add up
    p.set_defaults(_schema=Schema([*before, *schema]) if before is not None else schema)
    return schema


def _apply_schema(args: argparse.Namespace) -> None:
    schema = getattr(args, "_schema", None)
    if schema is None:
        return
    # Given: what differs from the default (a default needs no check, and does not count as given).
    given = {k: v for k, v in schema.given(args).items() if v is not False and v != _plain(schema[k].default)}
    schema.refuse_inapplicable(given)
    for name, value in schema.check(given, "", as_options=True).items():
        setattr(args, name, _plain(value))
    for o in schema:  # rows added to an argument group by hand have no parser default
        if getattr(args, o.name, None) is None and o.default is not None:
            setattr(args, o.name, _plain(o.default))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def run_options() -> list[Opt]:
    """The options of the commands that use a trained run (eval, predict, check)."""
    return [
        Opt("run", "path", None, "a run folder made by 'innergrad train'", metavar="DIR", required=True),
        Opt("checkpoint", "path", None, "a specific checkpoint; none: the newest", metavar="FILE"),
        Opt("device", str, "cpu", "cpu, cuda, cuda:N, mps or auto"),
        Opt("threads", int, 1, "torch CPU threads; 0 keeps torch's default", lo=0, hi=4096, metavar="N"),
    ]


def allow_changed_data_option(excludes: tuple[str, ...] = ("data",)) -> Opt:
    return Opt("allow_changed_data", bool, False, "use the run's data file even if it changed since training (its "
               "sha256 differs): the validation split is then other sequences, so figures are not comparable",
               excludes=excludes)


def overwrite_option(what: str = "the output file", requires: tuple[str, ...] = ()) -> Opt:
    """--overwrite for a command that writes output files (core/files.write_output refuses an existing one)."""
    return Opt("overwrite", bool, False, f"replace {what} if it exists (never an input of the command: that stays "
               "refused)", requires=requires)


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
    parser.add_argument("--debug", action="store_true",
                        help="on an internal error, print the traceback instead of writing it to a file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = _command_module(name)
        if module is not None:
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    from ..train import TrainingDiverged

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, before or after the command
    argv = [a for a in argv if a != "--debug"]
    args = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _note
            args = build_parser().parse_args(argv)
            _apply_schema(args)
            return int(args.func(args) or 0)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except CheckFailed as e:  # a verification found a difference: not a user error, not a bug
        print(f"{PROG}: check failed: {e}", file=sys.stderr)
        return 1
    except TrainingDiverged as e:
        if not _other_rank(args):  # every rank diverges alike; rank 0 says so
            print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _user_error(e):
            return _bug(e, debug)
        if getattr(e, "quiet", False):
            return 2  # rank 0 of a distributed run reports it
        prog = f"{PROG} [rank {_rank()}]" if _other_rank(args) else PROG
        first, _, rest = _message(e).partition("\n")
        print("\n".join([f"{prog}: error: {first}", *([rest] if rest else [])]), file=sys.stderr)
        return 2


#: OS errors that are about the user's machine or files (a path, permissions, space), not innergrad's code.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
                errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE,
                errno.EXDEV, errno.EBUSY, errno.ENOTEMPTY, errno.EFBIG, errno.EIO}


def _user_error(e: BaseException) -> bool:
    """innergrad's own errors and OS errors about files are the user's to fix; anything else is a bug."""
    if isinstance(e, InnergradError):
        return True
    return isinstance(e, OSError) and (e.filename is not None or e.errno in _USER_ERRNOS)


def _bug(e: BaseException, debug: bool) -> int:
    """One line saying innergrad failed (not the user), the traceback kept in a fresh file; exit 3."""
    import traceback

    text = "".join(traceback.format_exception(e))
    what = f"{type(e).__name__}: {shorten(str(e), 160)}"
    if debug:
        sys.stderr.write(text)
        print(f"{PROG}: internal error (a bug in innergrad, not in your input): {what}", file=sys.stderr)
        return 3
    path = crash_report(text)
    where = (f"the traceback is in {path}; please send it with the command you ran" if path is not None
             else "rerun with --debug to see the traceback")
    print(f"{PROG}: internal error (a bug in innergrad, not in your input): {what}; {where}", file=sys.stderr)
    return 3


def crash_report(text: str) -> Path | None:
    """Write `text` to a new file `crash-<time>-<pid>-<random>.txt` (created exclusively, never over another
    file) in ~/.cache/innergrad, else the temp folder; None when neither can take it."""
    import os
    import secrets
    import tempfile
    import time

    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}.txt"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "innergrad"
    for folder in (cache, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{PROG} {' '.join(sys.argv)}\n\n{text}")
        return folder / name
    return None


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
