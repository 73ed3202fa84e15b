"""Every training setting's type and range, and the checks of the files a run reads: one place.

`TrainConfig.validate` (command-line options, `--config` files and a run's `config.json` alike)
applies `RANGES` and the choices below; `check_memory` (called by the Trainer before it makes the
built-in data and again before the model) says what training would need before allocating it;
`read_run_json` refuses a run file that is not the JSON object innergrad wrote;
`check_data_unchanged` compares a data file with the sha256 its run recorded.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..core.errors import InnergradError

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


# ------------------------------------------------------------------------------- run files


def read_run_json(path: str | Path, what: str = "config") -> dict:
    """A run's JSON file as a dict; anything else (damaged, a list, not a regular file) is a InnergradError."""
    p = Path(path)
    from ..core.files import regular_file

    regular_file(p, f"the run's {p.name}")
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InnergradError(f"{p}: damaged {what} ({e})") from None
    if not isinstance(obj, dict):
        raise InnergradError(f"{p}: damaged {what}: expected a JSON object, got a JSON {type(obj).__name__}; restore "
                        f"the file from the run (innergrad writes an object of settings)")
    return obj


def recorded_sha256(run_record: dict) -> str | None:
    """The sha256 of the data file a run's config.json recorded (None for the built-in data)."""
    data = run_record.get("data")
    sha = data.get("sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def check_data_unchanged(data: str | Path | None, recorded: str | None, allow_changed: bool = False,
                         say=None) -> None:
    """Refuse when the data file's sha256 differs from the one its run recorded (`allow_changed` lets it
    pass with a note through `say`)."""
    if not data or not recorded:
        return
    from ..core.files import regular_file, sha256

    p = Path(data)
    if not p.exists():
        raise InnergradError(f"{p}: the run's data file is gone; restore it, or give the data with --data")
    now = sha256(regular_file(p, "the run's data file"))
    if now == recorded:
        return
    msg = (f"{p}: the data file changed since the run was trained (sha256 {recorded[:12]}... then, {now[:12]}... "
           "now), so its validation split is other sequences")
    if not allow_changed:
        raise InnergradError(msg + "; restore the file, or add --allow-changed-data to use it as it is now")
    if say is not None:
        say(msg + "; used anyway (--allow-changed-data): figures are not comparable with the run's own")


__all__ = ["CHOICES", "RANGES", "available_bytes", "check_data_unchanged", "check_memory", "read_run_json",
           "recorded_sha256", "training_bytes", "validate_config"]
