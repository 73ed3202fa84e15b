"""A training run's settings, in one place: `TrainConfig` (saved as config.json), whose fields are
the rows of the option schema (`SCHEMA`: each setting's type, range, default and help; the command
line's options, `--config` files and `ig.train.fit`'s arguments (`FIT_SCHEMA`) are checked by it),
the one resume-compatibility check (`check_resume`), config files, a run folder's config, the device
a setting names, and the memory a setting would need (`check_memory`, before anything is allocated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..core.errors import InnergradError
from ..core.files import regular_file
from ..core.schema import Opt, Schema
from ..core.text import shorten
from ._runs import read_run_json

# Settings a resumed run may change: they do not alter what a step computes. `epochs` stretches the
# learning-rate schedule, so the continuation follows the new plan from the resume point on;
# `on_nan` only matters for a batch whose loss is not finite (resume a diverged run with "skip").
RESUME_OVERRIDES = ("epochs", "device", "threads", "on_nan")
_SAME = object()  # a setting whose fit default is the command line's

# ------------------------------------------------------------------------------- configuration


def setting(default, help: str, fit=_SAME, **rule):
    """A `TrainConfig` field whose metadata is its schema row (`core.schema.Opt`: type, range, help);
    `fit`: the default `ig.train.fit` uses where it differs from the command line's."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help, "fit": fit})


def _activations():
    from ..core.activations import ACTIVATIONS

    return sorted(ACTIVATIONS)


def _backends():
    from ..core.backends import backends

    return backends()


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as `config.json`; `--config` takes the same keys).

    Each field is one row of the option schema (`SCHEMA`): its type, range, default and help, from
    which the command line's options, config files and `ig.train.fit`'s arguments are checked.
    The defaults train the issue's learner (hidden 32, F = MLP (128, 128) softplus) on the built-in
    teacher data to validation R^2 ~0.97 in about 15 s on 2 idle CPU cores (1040 steps).
    """

    # data
    data: str | None = setting(None, "a .npz or long-form .csv data file; without it, the built-in teacher data",
                               kind="path", metavar="PATH", group="data")
    n_sequences: int = setting(1024, "built-in data: number of sequences", lo=1, hi=10**8, metavar="N",
                               group="data", excludes=("data",))
    seq_len: int = setting(32, "built-in data: steps per sequence", lo=1, hi=10**7, metavar="T", group="data",
                           excludes=("data",))
    input_size: int = setting(4, "built-in data: inputs per step", lo=1, hi=10**6, metavar="D", group="data",
                              excludes=("data",))
    noise: float = setting(0.1, "built-in data: std of the observation noise on standardised y", lo=0, hi=1e6,
                           metavar="STD", group="data", excludes=("data",))
    val_fraction: float = setting(0.2, "share of sequences held out for validation (split by sequence, seeded; "
                                  "at least one sequence on each side)", lo=0, hi=1, open="both", metavar="F",
                                  group="data")
    # model
    hidden_size: int = setting(32, "size of the hidden state h", lo=1, metavar="H",
                               group="model")  # bounded by memory: check_memory
    hidden_layers: tuple[int, ...] = setting((128, 128), "widths of F's hidden layers, e.g. 128 128 or 64,64",
                                             kind="widths", metavar="W", group="model")
    activation: str = setting("softplus", "F's activation (smooth ones keep second-order training informative)",
                              choices=_activations, group="model")
    mode: str = setting("exact", "exact: train through dh/dtheta (second order); detached: h as a constant "
                        "by-product", choices=("exact", "detached"), group="model")
    backend: str = setting("auto", "how dF/dh is computed; auto picks the fastest that supports the model",
                           choices=_backends, group="model")
    learn_h0: bool = setting(False, "learn the initial hidden state instead of zeros", group="model")
    dtype: str = setting("float32", "float32, or float64 for exact comparisons (slower)",
                         choices=("float32", "float64"), group="model")
    # optimisation
    epochs: int = setting(40, "passes over the training sequences", fit=None, lo=1, hi=10**7, metavar="N",
                          group="optimisation")
    batch_size: int = setting(32, "sequences per step", fit=None, lo=1, hi=10**8, metavar="B", group="optimisation")
    lr: float = setting(5e-3, "Adam learning rate (peak of the schedule)", fit=1e-3, lo=0, open="lo", hi=1e3,
                        why="Adam's step size; 1e-4 to 1e-2 is usual", group="optimisation")
    lr_schedule: str = setting("cosine", "cosine decay to 2% of --lr over the run, or constant", fit="constant",
                               choices=("cosine", "constant"), group="optimisation")
    weight_decay: float = setting(0.0, "Adam weight decay", lo=0, hi=1e3, metavar="WD", group="optimisation")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: off)", fit=0.0, lo=0, hi=1e30,
                               metavar="NORM", group="optimisation")
    tbptt: int = setting(0, "truncated backprop through time: an update every K steps, h carried over "
                         "(0: full sequences)", lo=0, hi=10**7, metavar="K", group="optimisation")
    on_nan: str = setting("stop", "a batch with a NaN/inf loss or gradient: stop (saving the last good state) or "
                          "skip it (no update; 10 in a row still stop)", choices=("stop", "skip"),
                          group="optimisation")
    # system
    device: str = setting("cpu", "cpu, cuda, cuda:N, mps or auto", group="run")
    threads: int = setting(1, "torch CPU threads; 0 keeps torch's default. 1 is fastest for these small "
                           "matrices and robust on a shared CPU", lo=0, hi=4096, metavar="N", group="run")
    seed: int = setting(0, "seed for data, split, initialisation and batch order", lo=0, hi=2**32 - 1,
                        why="numpy and torch seeds are 32-bit", group="run")
    checkpoint_every: int = setting(0, "checkpoint every N steps (0: at each epoch's end)", lo=0, hi=10**9,
                                    metavar="N", group="run")
    keep_checkpoints: int = setting(2, "checkpoints to keep (>= 2)", lo=2, hi=10**6,
                                    why="the previous good one is always kept", metavar="N", group="run")

    # ---- construction and validation
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping, where: str = "config") -> TrainConfig:
        """Build from a mapping of known keys (unknown keys are an error naming the closest one)."""
        return cls().replace(values, where)

    def replace(self, values: Mapping, where: str = "config") -> TrainConfig:
        new = dataclasses.replace(self, **SCHEMA.check(values, where))
        new.validate(where)
        return new

    def validate(self, where: str = "config") -> None:
        """Every field by its schema row, then the rules between fields; InnergradError names the first bad one."""
        for name in self.keys():
            SCHEMA[name].check(getattr(self, name), where)
        if not _DEVICE.match(self.device):
            raise InnergradError(f"{where}: unknown device {shorten(repr(self.device), 60)}; use cpu, cuda, "
                                 "cuda:N, mps or auto")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_layers"] = list(self.hidden_layers)
        return d

    def model_spec(self, input_size: int) -> dict:
        return {
            "input_size": int(input_size), "hidden_size": self.hidden_size,
            "hidden_layers": list(self.hidden_layers), "activation": self.activation, "mode": self.mode,
            "backend": self.backend, "learn_h0": self.learn_h0,
        }


def _schema_of(cls) -> Schema:
    rows = []
    for f in fields(cls):
        rule = dict(f.metadata["rule"])
        kind = rule.pop("kind", type(f.default))
        rows.append(Opt(f.name, kind, f.default, f.metadata["help"], **rule))
    return Schema(rows)


#: The option schema of a training run: one row per `TrainConfig` field.
SCHEMA = _schema_of(TrainConfig)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

#: `ig.train.fit`'s settings: the same rows with fit's defaults, and fit's own (`steps`, `optimizer`).
FIT_SCHEMA = Schema([
    Opt("steps", int, None, "optimizer updates (or epochs=)", lo=1, hi=10**9, optional=True),
    *SCHEMA.subset(["epochs", "batch_size", "lr", "weight_decay", "grad_clip", "lr_schedule", "on_nan", "seed",
                    "device"],
                   **{f.name: f.metadata["fit"] for f in fields(TrainConfig) if f.metadata["fit"] is not _SAME}),
])


def check_resume(saved: Mapping, now: Mapping, may_change: Sequence[str], where: str,
                 option: Callable[[str], str] | None = None) -> None:
    """The one resume-compatibility check: refuse to continue a run whose settings (`saved`) differ from
    `now` in anything but `may_change`. `option` names a setting as the command line spells it."""
    skip = {*may_change, "model_spec"}  # the Trainer compares whole model specs (run identity) first
    if saved.get("model_spec") is not None and now.get("model_spec") is not None:
        skip |= {"model", "n_params"}  # (a run written before fits recorded specs compares class and size)
    keys = [k for k in dict.fromkeys([*now, *saved]) if k not in skip and saved.get(k) != now.get(k)]
    if not keys:
        return
    if option is not None:
        opts = ", ".join(f"{option(k)} (run has {shorten(repr(saved.get(k)), 60)})" for k in keys)
        raise InnergradError(f"{where}: a resumed run keeps its settings, but these differ: {opts}. Drop them to "
                             f"continue exactly, or start a new run with --out. Only {', '.join(may_change)} may "
                             "change.")
    diff = {k: (saved.get(k), now.get(k)) for k in keys}
    raise InnergradError(f"{where}: the checkpoint was made with other settings {shorten(diff, 300)} (then, now); "
                         "give the same settings to continue it, or start a new run (another out=)")


def read_config_file(path: str | Path) -> dict:
    """Settings from a TOML (Python 3.11+, or with `tomli`) or JSON file.

    A run's `config.json` works too (its `train` table is used), so `--config runs/X/config.json`
    repeats a run's settings.
    """
    p = regular_file(path, "the config file")
    if p.is_dir():
        raise InnergradError(f"{p}: is a directory; --config needs a .toml or .json file")
    if not p.is_file():
        raise InnergradError(f"{p}: config file not found; check the path given to --config")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InnergradError(
            f"{p}: not a UTF-8 text file ({e}); save the config as UTF-8 text (TOML or JSON)") from None
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InnergradError(f"{p}: invalid JSON ({e})") from None
    elif p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise InnergradError(
                    f"{p}: reading TOML needs Python 3.11+ or the 'tomli' package; install tomli or "
                    "write the same settings as a .json file"
                ) from None
        try:
            obj = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InnergradError(f"{p}: invalid TOML ({e})") from None
    else:
        raise InnergradError(f"{p}: config files must end in .toml or .json, got {p.suffix or 'no suffix'!r}")
    if not isinstance(obj, dict):
        raise InnergradError(f"{p}: expected a table of settings at the top level")
    if "train" in obj and isinstance(obj["train"], dict):
        obj = obj["train"]
    return obj


def resolve_device(name: str) -> torch.device:
    """`"auto"` (CUDA if available, else CPU), `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`; checked for availability."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InnergradError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla...: no numbers come back from those
        raise InnergradError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InnergradError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InnergradError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InnergradError(f"device {name!r} asked for, but MPS is not available here; use --device cpu")
    return dev


def load_run_config(run_dir: str | Path) -> tuple[TrainConfig, dict]:
    """`(TrainConfig, whole config.json)` of a run folder."""
    p = Path(run_dir) / "config.json"
    if not p.exists() or p.is_dir():
        raise InnergradError(f"{run_dir}: not a run folder (no config.json); give a folder made by `innergrad train`")
    obj = read_run_json(p)
    if "train" not in obj and "fit" in obj:  # a run of ig.train.fit: no sequence data or settings to evaluate on
        raise InnergradError(f"{run_dir}: a run of ig.train.fit, not of `innergrad train`; eval, predict, check and "
                             "report work on `innergrad train` runs (sequence data); use model = ig.load(run) in "
                             "Python, or innergrad export --run to deploy it")
    train = obj.get("train", {})
    if not isinstance(train, dict):
        raise InnergradError(
            f"{p}: damaged config: 'train' must be a JSON object of settings, got {type(train).__name__}")
    return TrainConfig.from_mapping(train, str(p)), obj


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


# ------------------------------------------------------------------------------- memory


def training_bytes(cfg, input_size: int) -> dict[str, int]:
    """About how many bytes training `cfg`'s model on `input_size` inputs needs, by what they hold.

    Weights, gradients and Adam's two moments are 4 copies of the parameters; the activations kept
    for the second-order backward are about 4 values per unit, step and sequence of a batch; the
    built-in data set (x and y, made in float64 then kept) is counted when there is no data file.
    """
    widths = [input_size + cfg.hidden_size, *cfg.hidden_layers, 1]
    params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:])) + (cfg.hidden_size if cfg.learn_h0 else 0)
    item = 8 if cfg.dtype == "float64" else 4
    steps = cfg.tbptt or cfg.seq_len
    parts = {
        f"weights, gradients and Adam state of F ({params:.3g} parameters; --hidden-size, --hidden-layers)":
            4 * params * item,
        f"activations of a batch (--batch-size {cfg.batch_size}, {steps} steps, layers up to {max(widths)} wide)":
            4 * sum(widths) * steps * cfg.batch_size * item,
    }
    if not cfg.data:
        parts["the built-in data set (--n-sequences, --seq-len, --input-size)"] = (
            cfg.n_sequences * cfg.seq_len * (input_size + 1) * 2 * item)
    return parts


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process could still get on `device` (None where it cannot be told)."""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, ValueError, AssertionError):
            return None
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(cfg, input_size: int, where: str = "config") -> None:
    """Refuse a run whose training would not fit in memory, before anything is allocated."""
    parts = training_bytes(cfg, input_size)
    need = sum(parts.values())
    have = available_bytes("cpu" if cfg.device in ("auto", "mps") else cfg.device)
    if have is not None and need > have:
        biggest = sorted(parts.items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{_gb(n)} for {what}" for what, n in biggest if n >= need / 100)
        raise InnergradError(f"{where}: training this would need about {_gb(need)} ({detail}), but {_gb(have)} are "
                        f"free here; make the largest part smaller")



__all__ = [
    "FIT_SCHEMA", "RESUME_OVERRIDES", "SCHEMA", "TrainConfig", "available_bytes", "check_memory", "check_resume",
    "load_run_config",
    "read_config_file", "resolve_device", "training_bytes",
]
