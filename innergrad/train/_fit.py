"""`ig.train.fit`: train any `nn.Module` on arrays or a DataLoader, Keras-style, on innergrad's loop."""

from __future__ import annotations

import math
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import InnergradError
from ..models.registry import describe
from ._build import make_optimizer, standard_callbacks
from ._callbacks import History
from ._config import FIT_SCHEMA, resolve_device
from ._runs import open_run_folder
from ._trainer import Task, Trainer, seed_everything, step_batch

Tensor = torch.Tensor

# Settings a resumed fit may change: they do not alter what a step computes.
FIT_RESUME_OVERRIDES = ("steps", "epochs", "device")

LOSSES = {"mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss}


def fit(model: nn.Module, inputs, targets=None, *, steps: int | None = None, epochs: int | None = None,
        batch_size: int | None = None, lr: float = 1e-3, weight_decay: float = 0.0, grad_clip: float = 0.0,
        lr_schedule: str | Callable[[int], float] = "constant", on_nan: str = "stop", optimizer="adam", loss="mse",
        val=None, seed: int = 0, device: str = "cpu", callbacks=(), progress: bool | None = None,
        out: str | Path | None = None, handle_signals: bool = True) -> History:
    """Train `model` so that its output matches `targets`; returns the `History`.

    ```python
    hnn = ig.HamiltonianNet(2, (200, 200))
    hist = ig.train.fit(hnn, x, dxdt, steps=2000, weight_decay=1e-4)   # numpy or tensors, full batch
    hist.losses[-1], hist.val
    ```

    **Data:** `inputs` and `targets` as tensors or numpy arrays with the batch on dim 0 (a GradRNN
    with `batch_first=True`), or `inputs` a `DataLoader` yielding `(inputs, targets)` (no `targets`
    then). Floating arrays take the model's dtype. `batch_size=None` trains on the full batch; the
    batches of epoch `e` are a permutation seeded by `(seed, e)`. `val`: `(inputs, targets)` or a
    DataLoader, evaluated at each epoch's end and at the end (`History.val`, metric `"loss"`).

    **Plan:** `steps` optimizer updates or `epochs` passes (one of the two). `optimizer`: `"adam"`
    (`torch.optim.Adam`, `weight_decay` as L2 in the gradient, as the HNN paper trains), `"adamw"`
    (decoupled decay) or a function `params -> Optimizer`. `loss`: `"mse"`, `"l1"` or a function
    `(output, targets) -> scalar`. The output is the model's, or its first element when it returns a
    tuple (a GradRNN's `(y, h_last)`); wrap the model to fit another element. `grad_clip`: clip the
    gradient norm (0: off); `lr_schedule`: `"constant"`, `"cosine"` (to 2% of `lr` over the run) or a
    function `step -> lr`; `on_nan`: `"stop"` or `"skip"` a batch with a non-finite loss or gradient.
    Every setting is checked by the option schema `innergrad train` uses (`_config.FIT_SCHEMA`).

    **Run folder:** `out=DIR` writes `config.json`, `metrics.jsonl` and safetensors checkpoints
    (about 20 per run, one when training stops) as `innergrad train` does; calling `fit` again with
    the same `out` continues from the newest checkpoint exactly as if never stopped (a DataLoader
    with `shuffle=True` continues in another order, with a warning; arrays are shuffled by step).

    **Signals:** SIGINT (Ctrl-C) or SIGTERM stops after the current step and saves a checkpoint (with
    `out`); then the signal acts as it would have: SIGINT raises `KeyboardInterrupt`, SIGTERM ends the
    process (or runs the handler that was installed before). `handle_signals=False` leaves both to
    Python (no save; Ctrl-C interrupts the step).

    `callbacks`: `Callback` objects (`EarlyStopping`, `LRSchedule`, `NanPolicy("skip")`,
    `TensorBoardLogger`, your own; they replace the standard schedule, NaN policy or checkpointing);
    `progress`: a bar (True), none (False), or a bar on a terminal only (None).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    raw = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
           "grad_clip": grad_clip, "on_nan": on_nan, "seed": seed, "device": str(device), "lr_schedule": lr_schedule}
    _check(raw)
    dev = resolve_device(str(device))
    model.to(dev)
    params = list(model.parameters())
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.get_default_dtype())
    data = _batches(inputs, targets, batch_size, seed, dev, dtype, "inputs")
    val_data = None if val is None else _batches(*_val_pair(val), None, seed, dev, dtype, "val")
    total = int(steps) if steps is not None else int(epochs or 0) * data.steps_per_epoch
    seed_everything(seed)
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    loss_fn = _loss(loss)
    settings = _settings(model, params, data, raw, optimizer=optimizer, loss=loss)
    history = History()
    enabled = sys.stderr.isatty() if progress is None else bool(progress)
    folder = open_run_folder(out, resume=None) if out is not None else None
    run_dir = folder.path if folder is not None else None
    try:
        parts = standard_callbacks(
            [*callbacks, history], run_dir=run_dir, config_record=lambda: _config_record(settings),
            lr_schedule=lr_schedule, lr=lr, on_nan=on_nan, checkpoint_every=max(1, total // 20) if out else None,
            progress=enabled)
        task = _ArrayTask(data, val_data, loss_fn)
        trainer = Trainer(model, opt, task, total_steps=total, steps_per_epoch=data.steps_per_epoch, callbacks=parts,
                          run_dir=run_dir, quiet=not enabled, record=settings, model_spec=settings["model_spec"],
                          grad_clip=grad_clip, may_change=FIT_RESUME_OVERRIDES, handle_signals=handle_signals)
        _run(trainer, data, total)
    finally:
        if folder is not None:
            folder.close()
    if history.status == "interrupted" and handle_signals:
        _pass_on(trainer.stop_signal)
    return history


def _check(raw: dict) -> None:
    """fit's settings by the option schema (the rows `innergrad train` uses, with fit's defaults)."""
    if (raw["steps"] is None) == (raw["epochs"] is None):
        raise InnergradError(f"fit: give exactly one of steps= (optimizer updates) or epochs= (passes); got "
                             f"steps={raw['steps']}, epochs={raw['epochs']}")
    FIT_SCHEMA.check({k: v for k, v in raw.items() if not (k == "lr_schedule" and callable(v))}, "fit")


def _settings(model, params, data, raw: dict, **named) -> dict:
    """The run's record (config.json's "fit", each checkpoint's "config"): what a resume must match."""
    c = raw
    settings = {"steps": c["steps"], "epochs": c["epochs"], "batch_size": c["batch_size"], "lr": c["lr"],
                "weight_decay": c["weight_decay"], "optimizer": _name(named["optimizer"]),
                "loss": _name(named["loss"]), "seed": c["seed"], "device": c["device"],
                "model": f"{type(model).__module__}.{type(model).__qualname__}", "model_spec": describe(model),
                "n_train": data.n, "n_params": sum(p.numel() for p in params)}
    # Settings added since the first run folders: recorded only when not the default, so those still resume.
    for k, v in (("grad_clip", c["grad_clip"]), ("lr_schedule", _name(c["lr_schedule"])), ("on_nan", c["on_nan"])):
        if v != FIT_SCHEMA[k].default:
            settings[k] = v
    return settings


def _run(trainer: Trainer, data, total: int) -> None:
    """Resume from the run folder's newest checkpoint (if any), then train."""
    trainer.model.train()
    if trainer.run_dir is not None:
        from ._checkpoint import list_checkpoints

        if list_checkpoints(trainer.run_dir):
            trainer.resume()
            if trainer.step < total and getattr(data, "shuffles", False):
                warnings.warn(f"fit: resumed {trainer.run_dir} at step {trainer.step} with a shuffling DataLoader, "
                              "whose batch order differs from the one an uninterrupted run would have had; pass "
                              "arrays (fit shuffles them as a function of the step) for an exact resume",
                              stacklevel=4)
    trainer.fit()


def _pass_on(name: str | None) -> None:
    """Let the signal that stopped the run act now that its checkpoint is saved: the handler found before
    `fit` is back in place, so SIGINT raises KeyboardInterrupt and SIGTERM ends the process."""
    sig = getattr(signal, str(name), None)
    if isinstance(sig, signal.Signals):
        signal.raise_signal(sig)
        if sig == signal.SIGINT:  # a handler that returned (not the default one): still stop the caller
            raise KeyboardInterrupt


def _config_record(settings: dict) -> dict:
    from ..core.version import __version__

    return {"fit": settings, "innergrad_version": __version__, "torch_version": torch.__version__}


def _name(v) -> str:
    return v if isinstance(v, str) else getattr(v, "__qualname__", type(v).__name__)


def _loss(kind) -> Callable:
    if isinstance(kind, str):
        if kind not in LOSSES:
            raise InnergradError(f"fit: loss must be one of {sorted(LOSSES)} or a function (output, targets) -> "
                             f"scalar, got {kind!r}")
        fn = LOSSES[kind]

        def checked(out: Tensor, y: Tensor) -> Tensor:
            if out.shape != y.shape:  # broadcasting would silently fit the wrong thing
                raise InnergradError(f"fit: the model's output has shape {tuple(out.shape)} but the targets "
                                 f"{tuple(y.shape)}; give targets shaped like the output")
            return fn(out, y)

        return checked
    if callable(kind):
        return kind
    raise TypeError(f"fit: loss must be a name or a function, got {type(kind).__name__}")


def _val_pair(val: object) -> tuple[object, object]:
    if isinstance(val, torch.utils.data.DataLoader):
        return val, None
    if isinstance(val, (tuple, list)) and len(val) == 2:
        return val[0], val[1]
    raise TypeError(f"fit: val must be (inputs, targets) or a DataLoader, got {type(val).__name__}")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _batches(inputs, targets, batch_size, seed, device, dtype, what):
    if isinstance(inputs, torch.utils.data.DataLoader):
        if targets is not None:
            raise TypeError(f"fit: {what} is a DataLoader (it yields the targets too), so give no targets")
        if batch_size is not None:
            raise InnergradError("fit: batch_size applies to arrays; a DataLoader brings its own")
        return _LoaderBatches(inputs, device, dtype)
    if targets is None:
        raise TypeError(f"fit: {what} needs targets (arrays with the batch on dim 0), or give a DataLoader")
    return _ArrayBatches(_tensor(inputs, device, dtype, what), _tensor(targets, device, dtype, "targets"),
                         batch_size, seed)


def _tensor(a, device, dtype, what) -> Tensor:
    if isinstance(a, np.ndarray) or isinstance(a, (list, tuple)):
        try:
            a = torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError) as e:
            raise TypeError(f"fit: {what} must be numeric arrays: {e}") from None
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"fit: {what} must be a tensor or numpy array, got {type(a).__name__}")
    if a.dim() == 0:
        raise InnergradError(f"fit: {what} needs a batch dimension (dim 0), got a scalar")
    return a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)


def _move(t, device, dtype):
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return _tensor(t, device, dtype, "a DataLoader batch")


class _ArrayBatches:
    def __init__(self, x: Tensor, y: Tensor, batch_size: int | None, seed: int):
        if x.shape[0] != y.shape[0]:
            raise InnergradError(f"fit: inputs have {x.shape[0]} rows (dim 0) but targets {y.shape[0]}; give one "
                                 "target per input")
        self.x, self.y, self.n, self.seed = x, y, int(x.shape[0]), seed
        self.batch_size = min(batch_size or self.n, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        if self.batch_size == self.n:
            return self.x, self.y
        idx = torch.from_numpy(step_batch(self.seed, step, self.n, self.batch_size)).to(self.x.device)
        return self.x[idx], self.y[idx]

    def all(self):
        for s in range(0, self.n, self.batch_size):
            yield self.x[s : s + self.batch_size], self.y[s : s + self.batch_size]


class _LoaderBatches:
    def __init__(self, loader, device, dtype):
        try:
            self.steps_per_epoch = len(loader)
        except TypeError:
            raise InnergradError("fit: the DataLoader has no length (an IterableDataset); give a sized "
                                 "dataset") from None
        if self.steps_per_epoch < 1:
            raise InnergradError("fit: the DataLoader yields no batches")
        self.loader, self.device, self.dtype = loader, device, dtype
        # A RandomSampler draws each epoch's order from a generator's running state, which a checkpoint lacks.
        self.shuffles = isinstance(getattr(loader, "sampler", None), torch.utils.data.RandomSampler)
        self.n = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
        self._it, self._at = None, -1

    def batch(self, step: int):
        i = step % self.steps_per_epoch
        if self._it is None or self._at != step - 1 or i == 0:
            self._it = iter(self.loader)
            for _ in range(i):  # a resumed run continues mid-epoch
                next(self._it)
        self._at = step
        return self._pair(next(self._it))

    def _pair(self, b):
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise TypeError(f"fit: a DataLoader must yield (inputs, targets) pairs, got {type(b).__name__}")
        return _move(b[0], self.device, self.dtype), _move(b[1], self.device, self.dtype)

    def all(self):
        for b in self.loader:
            yield self._pair(b)


class _ArrayTask(Task):
    def __init__(self, data, val, loss_fn):
        self.data, self.val, self.loss_fn = data, val, loss_fn

    def train_step(self, trainer):
        x, y = self.data.batch(trainer.step)
        loss = self.loss_fn(_first(trainer.net(x)), y)
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
            raise TypeError(f"fit: the loss must return a scalar tensor, got {getattr(loss, 'shape', loss)!r}")
        return trainer.update(loss, loss, 1)

    @torch.no_grad()
    def validate(self, trainer):
        if self.val is None:
            return {}
        total, count = 0.0, 0
        for x, y in self.val.all():
            n = int(x.shape[0])
            total += float(self.loss_fn(_first(trainer.model(x)), y)) * n
            count += n
        return {"loss": total / max(count, 1)}


__all__ = ["FIT_RESUME_OVERRIDES", "LOSSES", "fit"]
