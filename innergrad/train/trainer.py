"""The sequence runs' settings and measures: `TrainConfig` (validated, saved as config.json), config
files, metrics, prediction and evaluation of a GradRNN on sequence data, devices, gradient checks.

The training itself is `sequence.SequenceTrainer` on the generic loop (`loop.Trainer`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..core.files import regular_file
from ..data.sequences import SequenceData, load_data, synthetic_data
from .options import read_run_json

Tensor = torch.Tensor


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
        from .options import validate_config

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
    train = obj.get("train", {})
    if not isinstance(train, dict):
        raise InnergradError(
            f"{p}: damaged config: 'train' must be a JSON object of settings, got {type(train).__name__}")
    return TrainConfig.from_mapping(train, str(p)), obj


def run_data(config: TrainConfig) -> SequenceData:
    """The data set a config trains on: its `--data` file, or the built-in teacher data."""
    if config.data:
        return load_data(config.data, require_y=True)
    return synthetic_data(config.n_sequences, config.seq_len, config.input_size, config.noise, config.seed)


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
    "RESUME_OVERRIDES", "TrainConfig", "check_model", "evaluate", "load_run_config",
    "masked_metrics", "predict", "read_config_file", "resolve_device", "run_data",
]
