"""The sequence runs' settings, in one place: `TrainConfig` (saved as config.json; `--config` files
and the command line give the same keys), each setting's type and range (`RANGES`, `CHOICES`,
`validate_config`), config files, a run folder's config, the device a setting names, and the memory a
setting would need (`check_memory`, before anything is allocated).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..core.errors import InnergradError
from ..core.files import regular_file
from ._runs import read_run_json

# Settings a resumed run may change: they do not alter what a step computes. `epochs` stretches the
# learning-rate schedule, so the continuation follows the new plan from the resume point on;
# `on_nan` only matters for a batch whose loss is not finite (resume a diverged run with "skip").
RESUME_OVERRIDES = ("epochs", "device", "threads", "on_nan")

# ------------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as `config.json`; `--config` takes the same keys).

    The defaults train the issue's learner (hidden 32, F = MLP (128, 128) softplus) on the built-in
    teacher data to validation R^2 ~0.97 in about 15 s on 2 idle CPU cores (1040 steps).
    """

    # data
    data: str | None = None
    n_sequences: int = 1024
    seq_len: int = 32
    input_size: int = 4
    noise: float = 0.1
    val_fraction: float = 0.2
    # model
    hidden_size: int = 32
    hidden_layers: tuple[int, ...] = (128, 128)
    activation: str = "softplus"
    mode: str = "exact"
    backend: str = "auto"
    learn_h0: bool = False
    dtype: str = "float32"
    # optimisation
    epochs: int = 40
    batch_size: int = 32
    lr: float = 5e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    tbptt: int = 0
    on_nan: str = "stop"
    # system
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2

    # ---- construction and validation
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping, where: str = "config") -> TrainConfig:
        """Build from a mapping of known keys (unknown keys are an error naming the closest one)."""
        return cls().replace(values, where)

    def replace(self, values: Mapping, where: str = "config") -> TrainConfig:
        known = {f.name: f for f in fields(self)}
        out = {}
        for k, v in values.items():
            key = str(k).replace("-", "_")
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InnergradError(f"{where}: unknown setting {k!r}{hint}; valid settings are {sorted(known)}")
            out[key] = _coerce(key, v, getattr(self, key), where)
        new = dataclasses.replace(self, **out)
        new.validate(where)
        return new

    def validate(self, where: str = "config") -> None:
        validate_config(self, where)

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


def _coerce(key: str, v, default, where: str):
    def bad(expected):
        return InnergradError(f"{where}: {key} must be {expected}, got {v!r}")

    if key == "data":
        if v is None or v == "":
            return None
        if not isinstance(v, (str, os.PathLike)):
            raise bad("a file path")
        return str(v)
    if key == "hidden_layers":
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):  # "128,128", ["128", "128"] and [128, 128] all work
            v = [p for w in v for p in (w.replace(",", " ").split() if isinstance(w, str) else [w])]
        if not isinstance(v, (list, tuple)):
            raise bad("a list of widths such as [128, 128]")
        try:
            return tuple(_as_int(w) for w in v)
        except (TypeError, ValueError):
            raise bad("a list of integer widths such as [128, 128]") from None
    if isinstance(default, bool):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
        raise bad("true or false")
    if isinstance(default, int):
        try:
            return _as_int(v)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if isinstance(default, float):
        if isinstance(v, bool):
            raise bad("a number")
        try:
            out = float(v)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(out):
            raise bad("a finite number")
        return out
    if isinstance(default, str):
        if not isinstance(v, str):
            raise bad("a string")
        return v
    return v


def _as_int(v) -> int:
    if isinstance(v, bool):
        raise TypeError("bool")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("not integral")
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    if isinstance(v, int):
        return v
    raise TypeError(type(v).__name__)


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


# ------------------------------------------------------------------------------- ranges

# name: (lowest, highest, why the limit). Bounds are inclusive; None is no bound. Upper bounds are
# where a value stops being a setting and becomes a typo (or a number no float32 step survives).
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "n_sequences": (1, 10**8, ""),
    "seq_len": (1, 10**7, ""),
    "input_size": (1, 10**6, ""),
    "hidden_size": (1, None, ""),  # bounded by memory: check_memory
    "epochs": (1, 10**7, ""),
    "batch_size": (1, 10**8, ""),
    "tbptt": (0, 10**7, ""),
    "threads": (0, 4096, ""),
    "seed": (0, 2**32 - 1, "numpy and torch seeds are 32-bit"),
    "checkpoint_every": (0, None, ""),
    "keep_checkpoints": (2, 10**6, "the previous good one is always kept"),
    "noise": (0, 1e6, ""),
    "lr": (None, 1e3, "Adam's step size; 1e-4 to 1e-2 is usual"),
    "weight_decay": (0, 1e3, ""),
    "grad_clip": (0, 1e30, ""),
}
CHOICES = {
    "mode": ("exact", "detached"),
    "lr_schedule": ("cosine", "constant"),
    "dtype": ("float32", "float64"),
    "on_nan": ("stop", "skip"),
}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate_config(cfg, where: str = "config") -> None:
    """Raise InnergradError naming the first setting of `cfg` (a TrainConfig) out of its type or range."""
    from ..core.activations import ACTIVATIONS
    from ..core.backends import backends

    for name, (lo, hi, why) in RANGES.items():
        v = getattr(cfg, name)
        if lo is not None and v < lo:
            raise InnergradError(f"{where}: {name} must be >= {lo}, got {v}" + (f" ({why})" if why else ""))
        if hi is not None and v > hi:
            raise InnergradError(f"{where}: {name} must be <= {_num(hi)}, got {_num(v)}" + (f" ({why})" if why else ""))
    if not cfg.hidden_layers or any(w < 1 for w in cfg.hidden_layers):
        raise InnergradError(
            f"{where}: hidden_layers must be one or more positive widths, got {list(cfg.hidden_layers)}")
    if not (0.0 < cfg.val_fraction < 1.0):
        raise InnergradError(f"{where}: val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InnergradError(f"{where}: lr must be a positive number, got {cfg.lr}")
    if cfg.activation.lower() not in ACTIVATIONS:
        raise InnergradError(f"{where}: activation must be one of {sorted(ACTIVATIONS)}, got {cfg.activation!r}")
    if cfg.backend not in backends():
        raise InnergradError(f"{where}: backend must be one of {backends()}, got {cfg.backend!r}")
    for name, allowed in CHOICES.items():
        v = getattr(cfg, name)
        if v not in allowed:
            raise InnergradError(f"{where}: {name} must be {' or '.join(repr(a) for a in allowed)}, got {v!r}")
    if not _DEVICE.match(cfg.device):
        raise InnergradError(f"{where}: unknown device {cfg.device!r}; use cpu, cuda, cuda:N, mps or auto")


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
    "CHOICES", "RANGES", "RESUME_OVERRIDES", "TrainConfig", "available_bytes", "check_memory", "load_run_config",
    "read_config_file", "resolve_device", "training_bytes", "validate_config",
]
