"""Training the gradient-RNN on sequences: config, a resumable `Trainer`, evaluation and checks.

The trainer's whole state (model, optimizer, step, metric accumulators, RNG states) is a
`state_dict()`; the data order is a function of the step alone (epoch `e` visits the training
sequences in the permutation seeded by `(seed, e)`), and the learning-rate schedule is a function
of the step too. So a run stopped after any step and resumed from its checkpoint takes exactly the
same steps as one that never stopped.

Under torchrun (`dist=`, see `distributed.py`) the same trainer runs data-parallel with DDP: every
rank computes the same step-indexed global batch, takes its DistributedSampler share, and the loss
is normalised by the global count, so the updates equal the single-process ones. A non-finite loss
or gradient stops the run after saving the state before that batch (`on_nan="stop"`), or skips the
batch (`on_nan="skip"`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    CheckpointFallbackWarning,
    build_model,
    decode_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    set_aside,
    write_json,
)
from ..data.sequences import SequenceData, load_data, synthetic_data
from ..core.errors import InnergradError
from .callbacks import TrainingDiverged
from .loop import seed_everything, stop_on_signals, truncate_metrics

Tensor = torch.Tensor


# Settings a resumed run may change: they do not alter what a step computes. `epochs` stretches the
# learning-rate schedule, so the continuation follows the new plan from the resume point on;
# `on_nan` only matters for a batch whose loss is not finite (resume a diverged run with "skip").
RESUME_OVERRIDES = ("epochs", "device", "threads", "on_nan")

# With on_nan="skip", this many skipped batches in a row stop the run anyway: the model itself
# (not one bad batch) has gone wrong.
NAN_SKIP_LIMIT = 10


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
        from ..core.activations import ACTIVATIONS
        from ..core.backends import backends

        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if v < 0 or (v == 0 and not allow_zero):
                lim = ">= 0" if allow_zero else ">= 1"
                raise InnergradError(f"{where}: {name} must be {lim}, got {v}")

        for n in ("n_sequences", "seq_len", "input_size", "hidden_size", "epochs", "batch_size"):
            positive(n)
        for n in ("tbptt", "threads", "checkpoint_every", "weight_decay", "grad_clip", "noise"):
            positive(n, allow_zero=True)
        if not self.hidden_layers or any(w < 1 for w in self.hidden_layers):
            raise InnergradError(
                f"{where}: hidden_layers must be one or more positive widths, got {list(self.hidden_layers)}"
            )
        if not (0.0 < self.val_fraction < 1.0):
            raise InnergradError(f"{where}: val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InnergradError(f"{where}: lr must be a positive number, got {self.lr}")
        if self.activation.lower() not in ACTIVATIONS:
            raise InnergradError(f"{where}: activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.mode not in ("exact", "detached"):
            raise InnergradError(f"{where}: mode must be 'exact' or 'detached', got {self.mode!r}")
        if self.backend not in backends():
            raise InnergradError(f"{where}: backend must be one of {backends()}, got {self.backend!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise InnergradError(f"{where}: lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise InnergradError(f"{where}: dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.on_nan not in ("stop", "skip"):
            raise InnergradError(f"{where}: on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        if self.keep_checkpoints < 2:
            raise InnergradError(f"{where}: keep_checkpoints must be >= 2 (the previous good one is always kept)")

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
    p = Path(path)
    if p.is_dir():
        raise InnergradError(f"{p}: is a directory; --config needs a .toml or .json file")
    if not p.is_file():
        raise InnergradError(f"{p}: config file not found; check the path given to --config")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InnergradError(f"{p}: not a UTF-8 text file ({e}); save the config as UTF-8 text (TOML or JSON)") from None
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


# ------------------------------------------------------------------------------- metrics and prediction


def masked_metrics(y_true: np.ndarray, y_pred: np.ndarray, lengths: np.ndarray) -> dict:
    """MSE and R^2 over the real steps: `R^2 = 1 - SSE / sum((y - mean(y))^2)`."""
    T = y_true.shape[1]
    m = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    yt = y_true[m].astype(np.float64)
    yp = y_pred[m].astype(np.float64)
    sse = float(((yp - yt) ** 2).sum())
    sst = float(((yt - yt.mean()) ** 2).sum())
    n = int(m.sum())
    return {"mse": sse / n, "r2": 1.0 - sse / sst if sst > 0 else float("nan"), "n_steps": n,
            "n_sequences": int(y_true.shape[0])}


@torch.no_grad()
def predict(model, data: SequenceData, device: str | torch.device = "cpu", batch_size: int = 256,
            return_hidden: bool = False):
    """Run a time-major `GradRNN` over `data`: y_pred (N, T) float32 [, hidden states (N, T, H)].

    Padding steps get 0 (and the held hidden state), as in `GradRNN` with `lengths`.
    """
    if data.input_size != model.input_size:
        raise InnergradError(
            f"{data.source}: the data has input_size {data.input_size} (x's last dimension), but the model "
            f"was trained with input_size {model.input_size}; give data with {model.input_size} features"
        )
    dtype = next(model.parameters()).dtype
    ys, hs = [], []
    for s in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[s : s + batch_size]).to(device=device, dtype=dtype).transpose(0, 1)
        lengths = None if data.full_length else torch.from_numpy(data.lengths[s : s + batch_size]).to(device)
        out = model(x, lengths=lengths, return_hidden=return_hidden)
        ys.append(out[0].transpose(0, 1).float().cpu().numpy())
        if return_hidden:
            hs.append(out[2].transpose(0, 1).float().cpu().numpy())
    y = np.concatenate(ys)
    return (y, np.concatenate(hs)) if return_hidden else y


def evaluate(model, data: SequenceData, device="cpu") -> dict:
    """`masked_metrics` of the model's predictions on `data` (which needs y)."""
    if data.y is None:
        raise InnergradError(f"{data.source}: evaluation needs targets y")
    return masked_metrics(data.y, predict(model, data, device), data.lengths)


def resolve_device(name: str) -> torch.device:
    """`"auto"` (CUDA if available, else CPU), `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`; checked for availability."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InnergradError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
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
    if not p.is_file():
        raise InnergradError(f"{run_dir}: not a run folder (no config.json); give a folder made by `innergrad train`")
    try:
        obj = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InnergradError(f"{p}: damaged config ({e})") from None
    return TrainConfig.from_mapping(obj.get("train", {}), str(p)), obj


def run_data(config: TrainConfig) -> SequenceData:
    """The data set a config trains on: its `--data` file, or the built-in teacher data."""
    if config.data:
        return load_data(config.data, require_y=True)
    return synthetic_data(config.n_sequences, config.seq_len, config.input_size, config.noise, config.seed)


# ------------------------------------------------------------------------------- the trainer


class Trainer:
    """Train a `GradRNN` on sequence data, with atomic checkpoints and exact resume.

    ```python
    tr = Trainer(TrainConfig(epochs=5), run_dir="runs/try")   # builds data, model, optimizer
    summary = tr.fit()                                        # {"val_mse", "val_r2", "status", ...}
    ```

    `data` overrides the config's data source (Python use); `quiet` silences progress output.
    The run folder gets `config.json`, `metrics.jsonl` and `checkpoints/step-*.safetensors`.

    `dist`: a `DistContext` (from `init_distributed`, under torchrun) to train data-parallel with
    DDP: each rank takes its share of every global batch, the update equals the single-process one
    on the same batch, and rank 0 alone writes the run folder (see `innergrad.train.distributed`).
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None, data: SequenceData | None = None,
                 quiet: bool = True, dist=None):
        config.validate()
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        self.quiet = quiet or not self.is_main
        self.ddp = None
        if dist is None:
            self._build(data)
            return
        from .distributed import refuse_unsupported, wrap_ddp

        # Every rank builds its part first; a problem on any rank (a data file missing on one node)
        # fails all ranks before DDP's own collectives could wait for the missing one.
        dist.agree(lambda: (refuse_unsupported(config), self._build(data)))
        self.ddp = wrap_ddp(self.model, dist)

    def close(self) -> None:
        """Drop the DDP wrapper (before `destroy_process_group`); the model stays usable."""
        self.ddp = None

    def _build(self, data: SequenceData | None) -> None:
        config = self.config
        self.device = self.dist.device if self.dist is not None else resolve_device(config.device)
        self.dtype = getattr(torch, config.dtype)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)

        full = data if data is not None else run_data(config)
        if full.y is None:
            raise InnergradError(f"{full.source}: training needs targets y of shape (N, T); this data has x only")
        self.data_info = {"source": full.source, "n_sequences": len(full), "seq_len": full.seq_len,
                          "input_size": full.input_size, **full.info}
        if data is None and config.data:
            self.data_info["sha256"] = _sha256(config.data)
        self.train_data, self.val_data = full.split(config.val_fraction, config.seed)
        self._warn_scale(full)
        self.model_spec = config.model_spec(full.input_size)
        self.model = build_model(self.model_spec, "config").to(device=self.device, dtype=self.dtype)
        self.model.train()
        self.backend_used = self._resolve_backend()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        td = self.train_data
        self._X = torch.from_numpy(td.x).to(self.device, self.dtype).transpose(0, 1)  # (T, N, D)
        self._Y = torch.from_numpy(td.y).to(self.device, self.dtype).transpose(0, 1)  # (T, N)
        self._L = torch.from_numpy(td.lengths).to(self.device)
        self._L_np = td.lengths

        self.steps_per_epoch = math.ceil(len(td) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.step = 0
        self.elapsed = 0.0  # seconds of training, summed over resumes
        self.best_val_mse = math.inf
        self._win = [0.0, 0]    # train loss accumulated since the last "train" record
        self._epoch = [0.0, 0]  # and since the epoch began
        self.stop_signal: str | None = None
        self.last_val: dict = {}
        self.skipped: list[int] = []      # steps whose batch was skipped for a non-finite loss (on_nan="skip")
        self._skips_in_a_row = 0
        self.last_step_skipped = False
        self.saved_step = -1              # the step of the newest checkpoint this process knows of
        self.resume_notes: list[str] = []  # what resume() had to work around (a damaged checkpoint)
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / "config.json").exists():  # a resumed run's is rewritten when training goes on
                write_json(self.run_dir / "config.json", self.config_record())

    # ---- facts
    def config_record(self) -> dict:
        from ..core.version import __version__

        rec = {"train": self.config.to_dict(), "model": self.model_spec, "backend_used": self.backend_used,
               "data": self.data_info,
               "innergrad_version": __version__, "torch_version": torch.__version__}
        if self.dist is not None:
            rec["distributed"] = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                                  "device": str(self.dist.device)}
        return rec

    def _resolve_backend(self) -> str:
        """The backend `"auto"` picks here; a named backend that cannot run this model is an InnergradError."""
        from ..core.backends import BACKENDS, choose_backend

        x0 = torch.zeros(1, self.model.input_size, device=self.device, dtype=self.dtype)
        h0 = torch.zeros(1, self.model.hidden_size, device=self.device, dtype=self.dtype)
        if self.config.backend == "auto":
            return choose_backend(self.model.F, (x0, h0), (1,)).name
        why = BACKENDS[self.config.backend].unsupported(self.model.F, (x0, h0), (1,))
        if why:
            raise InnergradError(
                f"backend {self.config.backend!r} cannot run this model on {self.device}: {why}. "
                "Use --backend auto (it picks the fastest backend that can)"
            )
        return self.config.backend

    def describe(self) -> str:
        """One line: the model, the data and the plan."""
        s, c = self.model_spec, self.config
        widths = "-".join(str(w) for w in (s["input_size"] + s["hidden_size"], *s["hidden_layers"], 1))
        src = "built-in teacher data" if self.data_info.get("kind") == "synthetic" else self.data_info["source"]
        backend = c.backend if c.backend != "auto" else f"auto ({self.backend_used})"
        dt = "" if c.dtype == "float32" else f", {c.dtype}"
        where = ""
        if self.dist is not None:
            where = (f"; data-parallel over {self.dist.world_size} processes ({self.dist.backend}), "
                     f"~{-(-c.batch_size // self.dist.world_size)} sequences each per step")
        return (f"GradRNN(input {s['input_size']}, hidden {s['hidden_size']}, F {widths} {s['activation']}, "
                f"{s['mode']}, backend {backend}{dt}) on {src}: {len(self.train_data)} train / "
                f"{len(self.val_data)} validation sequences, {c.epochs} epochs x {self.steps_per_epoch} steps"
                f"{where}")

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _warn_scale(self, full: SequenceData) -> None:
        m = full.mask()
        for name, arr in (("x", full.x[m]), ("y", full.y[m])):
            sd = float(arr.std(dtype=np.float64))
            if not 0.05 <= sd <= 20:
                self._say(
                    f"warning: {name} has standard deviation {sd:.3g}; the model trains best on roughly "
                    f"unit-scale data, so consider standardising {name} before training"
                )

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    # ---- schedule and data order, both functions of the step
    def lr_at(self, step: int) -> float:
        if self.config.lr_schedule == "constant":
            return self.config.lr
        frac = min(step / max(1, self.total_steps), 1.0)
        return self.config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def batch_indices(self, step: int) -> np.ndarray:
        """Training-sequence indices of batch `step`: epoch `e`'s seeded permutation, sliced."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.config.seed, epoch, 0xBA7C]).permutation(len(self.train_data))
        B = self.config.batch_size
        return perm[i * B : (i + 1) * B]

    # ---- one step
    def train_step(self) -> float:
        """One batch (one optimizer update per TBPTT chunk); returns the batch's mean squared error.

        The loss is the batch's summed squared error over valid steps divided by their count, both
        over the whole global batch, also under DDP (see `innergrad.train.distributed`). A non-finite
        loss or gradient raises `TrainingDiverged` (after saving the last good state), or with
        `on_nan="skip"` drops the rest of the batch without an update and returns NaN.
        """
        cfg = self.config
        idx_np = self.batch_indices(self.step)
        L_np = self._L_np[idx_np]
        T = self._Y.shape[0]
        W = 1
        if self.dist is not None:
            from .distributed import shard

            W = self.dist.world_size
            idx_np, real = shard(idx_np, self.dist.rank, W)
            mine = np.where(real, self._L_np[idx_np], 0)  # DistributedSampler's padding repeats: no steps
        else:
            mine = L_np
        idx = torch.from_numpy(idx_np).to(self.device)
        x, y = self._X[:, idx], self._Y[:, idx]
        full = bool((mine == T).all())
        L = None if full else torch.from_numpy(mine).to(self.device)
        K = cfg.tbptt if 0 < cfg.tbptt < T else T
        lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        model = self.ddp if self.ddp is not None else self.model
        h = None
        sse, count = 0.0, 0
        self.last_step_skipped = False
        for s in range(0, T, K):
            xc, yc = x[s : s + K], y[s : s + K]
            n = int(np.clip(L_np - s, 0, xc.shape[0]).sum())  # valid steps of the GLOBAL batch in this chunk
            if n == 0:
                break  # every sequence of the batch has ended
            if full:
                lc, valid = None, None
            else:
                lc = (L - s).clamp(0, xc.shape[0])
                valid = torch.arange(xc.shape[0], device=self.device).unsqueeze(1) < lc.unsqueeze(0)
            pred, h = model(xc, h0=h, lengths=lc)
            err = (pred - yc) ** 2
            if valid is not None:
                err = torch.where(valid, err, torch.zeros_like(err))
            chunk_sse = err.sum()
            # DDP averages gradients over the W ranks: scaling by W makes the update the gradient
            # of (global SSE) / (global count), as in one process.
            loss = chunk_sse * (W / n) if W > 1 else chunk_sse / n
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            chunk = chunk_sse.detach().to(torch.float64)
            if self.dist is not None:  # every rank sees the global loss, so all decide alike below
                chunk = self.dist.all_reduce(chunk.cpu().reshape(1)).reshape(())
            cv, gv = float(chunk), float(gnorm)
            lv = cv / n
            if not (math.isfinite(lv) and math.isfinite(gv)):
                what = "loss" if not math.isfinite(lv) else "gradient norm"
                value = lv if what == "loss" else gv
                if cfg.on_nan == "skip":
                    self._skip_batch(what, value)
                    return float("nan")
                self._stop_diverged(what, value, first_chunk=(s == 0))
            self.optimizer.step()
            h = h.detach()
            sse += cv
            count += n
        self._skips_in_a_row = 0
        self.step += 1
        return sse / max(count, 1)

    def _skip_batch(self, what: str, value: float) -> None:
        """on_nan="skip": no update from this batch (nor from the rest of its chunks); count it."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped.append(self.step)
        self._skips_in_a_row += 1
        self.last_step_skipped = True
        self._log({"kind": "skipped", "step": self.step, "what": what, "value": str(value)})
        self._say(f"warning: step {self.step}: the {what} is {value}; skipped this batch (--on-nan skip)")
        if self._skips_in_a_row >= NAN_SKIP_LIMIT:
            raise TrainingDiverged(
                f"training diverged: {NAN_SKIP_LIMIT} batches in a row (steps {self.step - NAN_SKIP_LIMIT + 1} to "
                f"{self.step}) had a non-finite {what}, so the model itself has gone wrong, not one batch. "
                f"{self._kept_message()} Lower --lr (now {self.config.lr}), keep --grad-clip on (now "
                f"{self.config.grad_clip}), or standardise the data."
            )
        self.step += 1

    def _stop_diverged(self, what: str, value: float, first_chunk: bool) -> None:
        """on_nan="stop": save the state before this batch (still good) and raise TrainingDiverged."""
        self.optimizer.zero_grad(set_to_none=True)
        # Before the first chunk's update nothing of this step has touched the model, optimizer or
        # RNG, so the state is exactly "after step - 1": a checkpoint a resume can continue from.
        if first_chunk and self.run_dir is not None and self.saved_step != self.step:
            self.save_checkpoint()
        raise TrainingDiverged(self._diverged_message(what, value))

    def _kept_message(self) -> str:
        if self.run_dir is None or self.saved_step < 0:
            return "No checkpoint was written before this point."
        return f"The last good checkpoint (step {self.saved_step}) is kept in {self.run_dir / 'checkpoints'}."

    def _diverged_message(self, what: str, value: float) -> str:
        resume = ""
        if self.run_dir is not None and self.saved_step >= 0:
            resume = (f" To skip such batches instead, continue with: innergrad train --resume {self.run_dir} "
                      "--on-nan skip.")
        return (
            f"training diverged: the {what} became {value} at step {self.step} (epoch {self.epoch}). "
            f"{self._kept_message()} Lower --lr (now {self.config.lr}), keep --grad-clip on (now "
            f"{self.config.grad_clip}), or standardise the data.{resume}"
        )

    # ---- state
    def state_dict(self) -> dict:
        cuda = [t for t in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
        py = random.getstate()
        return {
            "model_spec": self.model_spec,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {
                "step": self.step, "elapsed": self.elapsed, "best_val_mse": self.best_val_mse,
                "win": list(self._win), "epoch_acc": list(self._epoch), "last_val": self.last_val,
                "total_steps": self.total_steps, "data_sha256": self.data_info.get("sha256"),
                "skipped": list(self.skipped), "skips_in_a_row": self._skips_in_a_row,
            },
            "config": self.config.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(),  # noqa: NPY002
                    "python": [py[0], list(py[1]), py[2]]},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        t = state["trainer"]
        self.step, self.elapsed = int(t["step"]), float(t["elapsed"])
        self.best_val_mse = float(t["best_val_mse"])
        self._win, self._epoch = list(t["win"]), list(t["epoch_acc"])
        self.last_val = dict(t.get("last_val") or {})
        self.skipped = [int(v) for v in t.get("skipped", [])]
        self._skips_in_a_row = int(t.get("skips_in_a_row", 0))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(tuple(rng["numpy"]))  # noqa: NPY002  (user code may use the legacy global RNG)
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))

    def save_checkpoint(self) -> Path | None:
        """Atomically write the current state (keeps the previous good checkpoint); None without a run folder.

        Under DDP rank 0 writes and every rank waits at a barrier, so no rank runs ahead of a
        checkpoint that a crash could still lose.
        """
        if self.run_dir is None:
            return None
        path = None
        if self.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.state_dict(), self.config.keep_checkpoints)
        if self.dist is not None:
            self.dist.barrier()
        self.saved_step = self.step
        return path

    def resume(self) -> int:
        """Load the newest readable checkpoint of the run folder and truncate metrics written after it.

        Returns the step. A damaged newest checkpoint (cut short, altered) is renamed to
        `<name>.damaged` and the previous one is used; `resume_notes` says so (and a
        `CheckpointFallbackWarning` is issued). Under DDP rank 0 reads the file and sends its bytes to
        every rank, so all ranks continue from the same step even without a shared file system.
        """
        if self.run_dir is None:
            raise InnergradError("resume needs a run folder")
        skipped: list[tuple[Path, str]] = []
        picked: dict = {}

        def pick() -> bytes:  # the newest readable checkpoint; on rank 0 only under DDP
            picked["state"], picked["raw"], path = read_checkpoint(self.run_dir, skipped)
            return str(path).encode()

        if self.dist is None:
            name = pick().decode()
            raw = picked["raw"]
        else:
            name = self.dist.from_main(pick).decode()
            raw = self.dist.broadcast_bytes(picked.get("raw"))

        def check_and_load() -> None:
            state = picked["state"] if "state" in picked else decode_checkpoint(raw, name)
            self._check_resumable(state, name)
            self.load_state_dict(state)

        if self.dist is None:
            check_and_load()
        else:
            self.dist.agree(check_and_load)
        if self.is_main:
            for bad, why in skipped:
                moved = set_aside(bad)
                self.resume_notes.append(
                    f"{why}. Resumed from the previous checkpoint {name} instead (step {self.step}); the damaged "
                    f"file was renamed to {moved.name}"
                )
            for note in self.resume_notes:
                warnings.warn(note, CheckpointFallbackWarning, stacklevel=2)
            remove_stale_temp_files(self.run_dir)
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.saved_step = self.step
        return self.step

    def _check_resumable(self, state: dict, path: str) -> None:
        saved = TrainConfig.from_mapping(state["config"], str(path))
        if saved.to_dict() != self.config.to_dict():
            diff = {k: (v, self.config.to_dict()[k]) for k, v in saved.to_dict().items()
                    if self.config.to_dict()[k] != v}
            if set(diff) - set(RESUME_OVERRIDES):
                raise InnergradError(
                    f"{path}: the checkpoint was made with other settings {diff}; resume with the run's own config"
                )
        old_hash, new_hash = state["trainer"].get("data_sha256"), self.data_info.get("sha256")
        if old_hash and new_hash and old_hash != new_hash:
            raise InnergradError(
                f"{self.config.data}: the data file changed since the run started (sha256 {old_hash[:12]}... "
                f"then, {new_hash[:12]}... now), so the run cannot continue exactly; restore the file or start "
                "a new run"
            )

    # ---- the loop
    def _log(self, record: dict) -> None:
        if self.run_dir is None or not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def validate_now(self) -> dict:
        self.model.eval()
        try:
            res = evaluate(self.model, self.val_data, self.device)
        finally:
            self.model.train()
        return res

    def fit(self, max_steps: int | None = None, log_every: int = 10) -> dict:
        """Train until the last epoch (or global step `max_steps`, or SIGINT/SIGTERM); returns a summary.

        Checkpoints are written at each epoch's end (or every `checkpoint_every` steps) and when the
        loop stops. `summary["status"]` is `"completed"`, `"stopped"` (max_steps) or `"interrupted"`.
        """
        stop_at = self.total_steps if max_steps is None else min(self.total_steps, int(max_steps))
        if self.run_dir is not None and self.is_main and self.step < stop_at:
            (self.run_dir / "summary.json").unlink(missing_ok=True)  # stale once training goes on
            write_json(self.run_dir / "config.json", self.config_record())  # a resume may change epochs
        bar = _progress(self.total_steps, self.step, self.quiet)
        every = self.config.checkpoint_every
        report_every = max(1, self.total_steps // 10)
        saved_at = -1
        t_seg, steps_seg = time.perf_counter(), 0
        status = "completed"
        try:
            with stop_on_signals(self):
                while self.step < stop_at:
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.elapsed += time.perf_counter() - t0
                    steps_seg += 1
                    if not self.last_step_skipped:
                        self._win[0] += loss
                        self._win[1] += 1
                        self._epoch[0] += loss
                        self._epoch[1] += 1
                    rate = steps_seg / max(time.perf_counter() - t_seg, 1e-9)
                    if (self.step % log_every == 0 or self.step == self.total_steps) and self._win[1]:
                        self._log({"kind": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                                   "loss": self._win[0] / self._win[1], "lr": self.lr_at(self.step - 1),
                                   "steps_per_s": rate, "elapsed": self.elapsed})
                        self._win = [0.0, 0]
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if end_of_epoch:
                        self._end_epoch()
                    if bar is not None:
                        bar.update(1)
                        post = {"loss": f"{loss:.4f}"}
                        if self.last_val:
                            post["val_r2"] = f"{self.last_val['r2']:.4f}"
                        bar.set_postfix(post, refresh=False)
                    elif not self.quiet and (self.step % report_every == 0 or self.step == stop_at):
                        vr = f", val R^2 {self.last_val['r2']:.4f}" if self.last_val else ""
                        self._say(f"step {self.step}/{self.total_steps} (epoch {self.epoch}): loss {loss:.4f}"
                                  f"{vr}, {rate:.1f} steps/s")
                    if (every and self.step % every == 0) or (not every and end_of_epoch):
                        self.save_checkpoint()
                        saved_at = self.step
                    stop = self.stop_signal is not None
                    if self.dist is not None:  # all ranks stop after the same step, whoever got the signal
                        stop = self.dist.any(stop)
                        if stop and self.stop_signal is None:
                            self.stop_signal = "a signal to another rank"
                    if stop:
                        status = "interrupted"
                        break
        finally:
            if bar is not None:
                bar.close()
        if status != "interrupted" and self.step < self.total_steps:
            status = "stopped"
        if saved_at != self.step:
            self.save_checkpoint()
        val = self.last_val if self.step % self.steps_per_epoch == 0 and self.last_val else self.validate_now()
        summary = {
            "status": status, "step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
            "val_mse": val["mse"], "val_r2": val["r2"], "train_seconds": self.elapsed,
            "noise_floor_mse": self.data_info.get("noise_floor_mse"), "signal": self.stop_signal,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "skipped_steps": list(self.skipped),
            "world_size": self.dist.world_size if self.dist is not None else 1,
        }
        if status == "completed" and self.run_dir is not None and self.is_main:
            write_json(self.run_dir / "summary.json", summary)
        return summary

    def _end_epoch(self) -> None:
        val = self.validate_now()
        self.last_val = val
        train_loss = self._epoch[0] / max(self._epoch[1], 1)
        self._epoch = [0.0, 0]
        self.best_val_mse = min(self.best_val_mse, val["mse"])
        self._log({"kind": "val", "step": self.step, "epoch": self.epoch, "train_loss": train_loss,
                   "val_mse": val["mse"], "val_r2": val["r2"], "elapsed": self.elapsed})


def _sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _progress(total: int, initial: int, quiet: bool):
    """A tqdm bar on stderr, or None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.05, desc="train")


# ------------------------------------------------------------------------------- gradient checks


def check_model(model, data: SequenceData | None = None, n_seq: int = 3, n_steps: int = 4, seed: int = 0) -> list[dict]:
    """Verify a trained GradRNN's gradients on a float64 copy; returns one row per check.

    - `gradcheck` / `gradgradcheck` (exact mode) of `(y, h_T)` with respect to x, h0 and every
      parameter, for each backend that can run the model (fast mode: random projections of the
      Jacobian against finite differences). Backends without double backward skip gradgradcheck.
    - Backends against each other (float64): y, h_T and the parameter gradients of a fixed
      random loss, in exact and detached mode, versus the `autograd` reference; for a model on a
      GPU also in float32 on that device (where fused kernels such as `triton` run).

    Each row: `{"check", "backend", "error", "tolerance", "passed", "note", "skipped"}` (a skipped
    check does not count as failed).
    """
    import copy

    from torch.func import functional_call

    from ..core.backends import BACKENDS

    m64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    D, H = m64.input_size, m64.hidden_size
    g = torch.Generator().manual_seed(seed)
    if data is not None:
        x = torch.from_numpy(data.x[:n_seq, :n_steps]).double().transpose(0, 1).contiguous()
    else:
        x = torch.randn(n_steps, n_seq, D, generator=g, dtype=torch.float64)
    h0 = 0.1 * torch.randn(x.shape[1], H, generator=g, dtype=torch.float64)
    names = [n for n, _ in m64.named_parameters()]
    params = [p.detach().clone() for _, p in m64.named_parameters()]

    def runner(backend: str, mode: str):
        m = copy.deepcopy(m64)
        m.backend, m.mode = backend, mode

        def f(x_, h0_, *ps):
            y, h = functional_call(m, dict(zip(names, ps)), (x_,), {"h0": h0_})
            return y, h

        return f

    usable = []
    for name, b in BACKENDS.items():
        why = b.unsupported(m64.F, (x[0], h0), (1,))
        if why is None:
            usable.append(name)
    rows: list[dict] = []

    def row(check, backend, passed, error=None, tol=None, note="", skipped=False):
        rows.append({"check": check, "backend": backend, "passed": bool(passed), "error": error,
                     "tolerance": tol, "note": note, "skipped": skipped})

    inputs = tuple(t.clone().requires_grad_() for t in (x, h0, *params))
    for name in usable:
        f = runner(name, "exact")
        try:
            ok = torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-6, rtol=1e-4, raise_exception=True)
            row("gradcheck d(y, h_T)/d(x, h0, params)", name, ok, tol="atol 1e-6, rtol 1e-4")
        except Exception as e:  # a failed check is a result to report, not a crash
            row("gradcheck d(y, h_T)/d(x, h0, params)", name, False, note=_first_line(e))
        if not BACKENDS[name].double_backward:
            row("gradgradcheck (second order)", name, True, note="backend has no double backward", skipped=True)
            continue
        try:
            ok = torch.autograd.gradgradcheck(f, inputs, fast_mode=True, atol=1e-5, rtol=1e-3,
                                              raise_exception=True)
            row("gradgradcheck (second order)", name, ok, tol="atol 1e-5, rtol 1e-3")
        except Exception as e:
            row("gradgradcheck (second order)", name, False, note=_first_line(e))

    w = torch.randn(x.shape[0], x.shape[1], generator=g, dtype=torch.float64)
    v = torch.randn(x.shape[1], H, generator=g, dtype=torch.float64)

    def outputs(name, mode):
        f = runner(name, mode)
        ins = tuple(t.clone().requires_grad_() for t in (x, h0, *params))
        y, h = f(*ins)
        grads = torch.autograd.grad((w * y).sum() + (v * h).sum(), ins, allow_unused=True, materialize_grads=True)
        return [y.detach(), h.detach(), *grads]

    ref_name = "autograd" if "autograd" in usable else usable[0]
    for mode in ("exact", "detached"):
        ref = outputs(ref_name, mode)
        scale = max(float(t.abs().max()) for t in ref)
        tol = 1e-9 * max(1.0, scale)
        for name in usable:
            if name == ref_name:
                continue
            try:
                got = outputs(name, mode)
                err = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                row(f"{mode} mode: y, h_T, grads vs {ref_name}", name, err <= tol, err, f"{tol:.1e}")
            except Exception as e:
                row(f"{mode} mode: y, h_T, grads vs {ref_name}", name, False, note=_first_line(e))
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        _compare_on_device(model, x, h0, w, v, dev, row)
    # Both modes must agree on the forward pass: detached changes only what training sees.
    with torch.no_grad():
        ye, he = runner(ref_name, "exact")(x, h0, *params)
        yd, hd = runner(ref_name, "detached")(x, h0, *params)
    err = max(float((ye - yd).abs().max()), float((he - hd).abs().max()))
    row("exact and detached forward agree", ref_name, err <= 1e-12, err, "1.0e-12")
    return rows


def _compare_on_device(model, x, h0, w, v, dev, row) -> None:
    """Backends against autograd on the model's own (GPU) device in float32, where fused kernels run."""
    import copy

    from ..core.backends import BACKENDS

    m32 = copy.deepcopy(model).to(device=dev, dtype=torch.float32).eval()
    x, h0, w, v = (t.to(device=dev, dtype=torch.float32) for t in (x, h0, w, v))
    usable = [n for n, b in BACKENDS.items() if b.unsupported(m32.F, (x[0], h0), (1,)) is None]

    def outputs(name, mode):
        m32.backend, m32.mode = name, mode
        ps = list(m32.parameters())
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        y, h = m32(xi, h0=hi)
        grads = torch.autograd.grad((w * y).sum() + (v * h).sum(), [xi, hi, *ps], materialize_grads=True)
        return [y.detach(), h.detach(), *grads]

    if "autograd" not in usable:
        return
    for mode in ("exact", "detached"):
        ref = outputs("autograd", mode)
        tol = 1e-3 * max(1.0, max(float(t.abs().max()) for t in ref))
        for name in usable:
            if name == "autograd":
                continue
            check = f"{mode} mode on {dev.type} (float32) vs autograd"
            try:
                got = outputs(name, mode)
                err = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                row(check, name, err <= tol, err, f"{tol:.1e}")
            except Exception as e:
                row(check, name, False, note=_first_line(e))


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]


__all__ = [
    "RESUME_OVERRIDES", "TrainConfig", "Trainer", "TrainingDiverged", "check_model", "evaluate", "load_run_config",
    "masked_metrics", "predict", "read_config_file", "resolve_device", "run_data",
]
