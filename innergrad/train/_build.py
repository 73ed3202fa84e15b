"""One way to build a training run: settings -> (model, optimizer, task, callbacks) -> the `Trainer`.

`ig.train.fit` (any model on arrays) and `innergrad train` (`sequence_trainer`: a GradRNN on sequence
data, from a `TrainConfig`) both take their optimizer from `make_optimizer` and their parts (LR
schedule, NaN policy, metrics log, progress, checkpoints, the run folder's files) from
`standard_callbacks`, and run on the one `Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..core.files import sha256
from ..data.sequences import SequenceData
from ..models.registry import build, spec_of
from ._callbacks import Callback, Checkpointing, LRSchedule, MetricsLog, NanPolicy, ProgressBar, RunFiles
from ._config import RESUME_OVERRIDES, TrainConfig, check_memory, resolve_device
from ._sequence_task import NAN_SKIP_LIMIT, BestValue, SequenceTask, run_data, sequence_advice
from ._trainer import LocalContext, Trainer, seed_everything

#: `optimizer=` names: torch.optim classes taking `(params, lr=, weight_decay=)`.
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(kind, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """`OPTIMIZERS[kind]`, or `kind(params)` for a function returning an Optimizer."""
    if isinstance(kind, str) and kind in OPTIMIZERS:
        return OPTIMIZERS[kind](params, lr=lr, weight_decay=weight_decay)
    if callable(kind):
        opt = kind(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"fit: optimizer function returned a {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
    raise InnergradError(f"fit: optimizer must be 'adam', 'adamw' or a function params -> Optimizer, got {kind!r}")


def standard_callbacks(user: Sequence[Callback] = (), *, run_dir: Path | None, config_record: Callable[[], dict],
                       lr_schedule, lr: float, on_nan: str, checkpoint_every: int | None, progress: bool | None,
                       task_parts: Sequence[Callback] = (), val_keys: tuple[str, ...] = ("loss",),
                       val_label: str = "val loss", advice: Callable | None = None) -> list[Callback]:
    """The parts of every run, around the caller's own `user` callbacks (which win where they overlap).

    `lr_schedule`: "cosine", "constant" (no schedule part) or a function step -> lr; `checkpoint_every`:
    steps between checkpoints (0: each epoch's end; None: no checkpoints); `progress`: a bar (True),
    none (False), or as the Trainer's `quiet` says (None).
    """
    parts = list(user)
    if lr_schedule != "constant" and not any(isinstance(c, LRSchedule) for c in parts):
        parts.append(LRSchedule(lr_schedule, lr=lr))
    if not any(isinstance(c, NanPolicy) for c in parts):
        parts.append(NanPolicy(on_nan, NAN_SKIP_LIMIT, advice))
    parts += [*task_parts, MetricsLog(run_dir, val_keys=val_keys), ProgressBar(progress, val_keys[-1], val_label)]
    if checkpoint_every is not None and not any(isinstance(c, Checkpointing) for c in parts):
        parts.append(Checkpointing(checkpoint_every))
    if run_dir is not None:
        parts.append(RunFiles(run_dir, config_record))
    return parts


def sequence_trainer(config: TrainConfig, run_dir: str | Path | None = None, data: SequenceData | None = None,
                     quiet: bool = True, dist=None) -> Trainer:
    """The `Trainer` of a GradRNN on sequence data (`innergrad train`), with atomic checkpoints and exact resume.

    ```python
    tr = sequence_trainer(TrainConfig(epochs=5), run_dir="runs/try")   # builds data, model, optimizer
    summary = tr.fit()                                                 # {"val_mse", "val_r2", "status", ...}
    ```

    `data` overrides the config's data source (Python use); `quiet` silences progress output. The run
    folder gets `config.json`, `metrics.jsonl` and `checkpoints/step-*.safetensors`. `dist`: a
    `DistContext` (from `init_distributed`, under torchrun) to train data-parallel with DDP; rank 0
    alone writes the run folder. What was built (data, split, model spec, backend) is on `trainer.task`.
    """
    config.validate()
    ctx = dist if dist is not None else LocalContext()
    built: dict = {}

    def build() -> None:
        if dist is not None:
            from ._distributed import refuse_unsupported

            refuse_unsupported(config)
        built.update(_build_parts(config, data, dist.device if dist is not None else None,
                                  quiet or not ctx.is_main))

    # Every rank builds its part first; a problem on any rank (a data file missing on one node)
    # fails all ranks before DDP's own collectives could wait for the missing one.
    ctx.agree(build)
    task, model = built["task"], built["model"]
    run = Path(run_dir) if run_dir is not None else None
    holder: list[Trainer] = []
    parts = standard_callbacks(
        run_dir=run, config_record=lambda: task.config_record(holder[0].ctx), lr_schedule=config.lr_schedule,
        lr=config.lr, on_nan=config.on_nan, checkpoint_every=config.checkpoint_every, progress=None,
        task_parts=[BestValue("mse", "best_val_mse")], val_keys=("mse", "r2"), val_label="val R^2",
        advice=sequence_advice)
    trainer = Trainer(model, built["optimizer"], task, total_steps=task.steps_per_epoch * config.epochs,
                      steps_per_epoch=task.steps_per_epoch, callbacks=parts, run_dir=run, ctx=ctx,
                      grad_clip=config.grad_clip, quiet=quiet, record=config.to_dict(), model_spec=task.model_spec,
                      keep_checkpoints=config.keep_checkpoints, may_change=RESUME_OVERRIDES)
    holder.append(trainer)
    if dist is not None:
        from ._distributed import wrap_ddp

        trainer.ddp = wrap_ddp(model, dist)
    return trainer


def _build_parts(config: TrainConfig, data: SequenceData | None, device, quiet: bool) -> dict:
    """Data, split, model, optimizer and task of a sequence run (memory checked before each allocation)."""
    device = device if device is not None else resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    if data is None and not config.data:
        check_memory(config, config.input_size, "command line")
    full = data if data is not None else run_data(config)
    if full.y is None:
        raise InnergradError(f"{full.source}: training needs targets y of shape (N, T); this data has x only")
    info = {"source": full.source, "n_sequences": len(full), "seq_len": full.seq_len, "input_size": full.input_size,
            **full.info}
    if data is None and config.data:
        info["sha256"] = sha256(config.data)
    train_data, val_data = full.split(config.val_fraction, config.seed)
    if not quiet:
        _warn_scale(full)
    check_memory(config, full.input_size, full.source)
    model = build(config.model_spec(full.input_size), "config").to(device=device, dtype=dtype)
    spec = spec_of(model)  # the full spec, kind included: what ig.load rebuilds
    model.train()
    backend_used = _resolve_backend(model, config.backend, device, dtype)
    optimizer = make_optimizer("adam", model.parameters(), config.lr, config.weight_decay)
    task = SequenceTask(config, train_data, val_data, device, dtype, info, spec, backend_used)
    return {"model": model, "optimizer": optimizer, "task": task}


def _warn_scale(full: SequenceData) -> None:
    import sys

    m = full.mask()
    for name, arr in (("x", full.x), ("y", full.y)):
        if arr is None:
            continue
        sd = float(arr[m].std(dtype=np.float64))
        if not 0.05 <= sd <= 20:
            print(f"warning: {name} has standard deviation {sd:.3g}; the model trains best on roughly unit-scale "
                  f"data, so consider standardising {name} before training", file=sys.stderr, flush=True)


def _resolve_backend(model, backend: str, device, dtype) -> str:
    """The backend `"auto"` picks here; a named backend that cannot run this model is an InnergradError."""
    from ..core.backends import BACKENDS, choose_backend

    x0 = torch.zeros(1, model.input_size, device=device, dtype=dtype)
    h0 = torch.zeros(1, model.hidden_size, device=device, dtype=dtype)
    if backend == "auto":
        return choose_backend(model.F, (x0, h0), (1,)).name
    why = BACKENDS[backend].unsupported(model.F, (x0, h0), (1,))
    if why:
        raise InnergradError(
            f"backend {backend!r} cannot run this model on {device}: {why}. "
            "Use --backend auto (it picks the fastest backend that can)"
        )
    return backend


__all__ = ["OPTIMIZERS", "make_optimizer", "sequence_trainer", "standard_callbacks"]
