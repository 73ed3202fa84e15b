"""The parts a `Trainer` is built from, each a `Callback` with Lightning-style hooks.

A callback that holds state a resumed run needs (the loss window of the metrics log, the skipped
batches of the NaN policy, early stopping's patience) returns it from `state_dict()`; its keys are
merged into the checkpoint's `trainer` entry, so a resume restores every part exactly.

Hook order within one step: `on_step_start`, the update, then at an epoch's end the validation and
`on_validation_end`, then `on_step_end`. `Checkpointing` always runs last, so what it saves includes
what the other parts did in that step.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.errors import InnergradError
from ..core.files import strict_json, write_json


class TrainingDiverged(InnergradError):
    """The loss or the gradient became NaN/inf; the last good state is kept as a checkpoint."""


class SkipBatch(Exception):
    """Raised by the NaN policy inside a step: the batch is dropped without an update."""


class Callback:
    """Base class: override the hooks you need. Each gets the `Trainer` first."""

    def on_train_start(self, trainer) -> None: ...
    def on_step_start(self, trainer) -> None: ...
    def on_validation_end(self, trainer, metrics: dict) -> None: ...
    def on_step_end(self, trainer, loss: float) -> None: ...
    def on_train_end(self, trainer, summary: dict) -> None: ...
    def on_log(self, trainer, record: dict) -> None: ...
    def teardown(self, trainer) -> None:
        """Called when `fit` returns or raises (close files, progress bars)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class History(Callback):
    """Losses per step (NaN for a skipped batch) and validation metrics per validation."""

    def __init__(self):
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val: list[dict] = []
        self.status: str | None = None
        self.summary: dict = {}

    def on_step_end(self, trainer, loss):
        self.steps.append(trainer.step)
        self.losses.append(float(loss))

    def on_validation_end(self, trainer, metrics):
        self.val.append({"step": trainer.step, **metrics})

    def on_train_end(self, trainer, summary):
        self.status, self.summary = summary["status"], summary

    def state_dict(self):
        return {"history": {"steps": list(self.steps), "losses": list(self.losses), "val": list(self.val)}}

    def load_state_dict(self, state):
        h = state.get("history") or {}
        self.steps, self.losses = [int(s) for s in h.get("steps", [])], [float(v) for v in h.get("losses", [])]
        self.val = [dict(v) for v in h.get("val", [])]

    def __len__(self) -> int:
        return len(self.losses)

    def __repr__(self) -> str:
        last = f", last loss {self.losses[-1]:.4g}" if self.losses else ""
        return f"History({len(self.losses)} steps{last}, {len(self.val)} validations, status {self.status!r})"


class MetricsLog(Callback):
    """`metrics.jsonl` in the run folder: a `train` record every `every` steps, a `val` record per validation.

    Other parts add records through `trainer.log(record)` (the NaN policy's `skipped`).
    """

    def __init__(self, run_dir: str | Path | None, every: int = 10, val_keys: tuple[str, ...] = ("loss",)):
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        self.every, self.val_keys = every, val_keys
        self.win = [0.0, 0]    # train loss since the last "train" record
        self.epoch = [0.0, 0]  # and since the epoch began

    def on_step_end(self, trainer, loss):
        if not trainer.last_step_skipped:
            for acc in (self.win, self.epoch):
                acc[0] += loss
                acc[1] += 1
        if (trainer.step % self.every == 0 or trainer.step == trainer.total_steps) and self.win[1]:
            trainer.log({"kind": "train", "step": trainer.step, "epoch": trainer.step / trainer.steps_per_epoch,
                         "loss": self.win[0] / self.win[1], "lr": trainer.optimizer.param_groups[0]["lr"],
                         "steps_per_s": trainer.rate, "elapsed": trainer.elapsed})
            self.win = [0.0, 0]
        if trainer.step % trainer.steps_per_epoch == 0:
            if trainer.last_val and trainer.validated_at == trainer.step:
                trainer.log({"kind": "val", "step": trainer.step, "epoch": trainer.epoch,
                             "train_loss": self.epoch[0] / max(self.epoch[1], 1),
                             **{f"val_{k}": trainer.last_val[k] for k in self.val_keys if k in trainer.last_val},
                             "elapsed": trainer.elapsed})
            self.epoch = [0.0, 0]

    def on_log(self, trainer, record):
        if self.path is not None and trainer.is_main:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def state_dict(self):
        return {"win": list(self.win), "epoch_acc": list(self.epoch)}

    def load_state_dict(self, state):
        self.win, self.epoch = list(state.get("win", [0.0, 0])), list(state.get("epoch_acc", [0.0, 0]))


class ProgressBar(Callback):
    """A tqdm bar on a terminal; elsewhere (a log file, nohup) one line every tenth of the run."""

    def __init__(self, enabled: bool | None = None, val_key: str = "loss", val_label: str = "val loss"):
        self.enabled, self.val_key, self.val_label = enabled, val_key, val_label
        self.bar = None

    def on_train_start(self, trainer):
        self.on = not trainer.quiet if self.enabled is None else bool(self.enabled) and trainer.is_main
        self.report_every = max(1, trainer.total_steps // 10)
        if self.on and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.05, desc="train")

    def on_step_end(self, trainer, loss):
        val = trainer.last_val.get(self.val_key) if trainer.last_val else None
        if self.bar is not None:
            self.bar.update(1)
            post = {"loss": f"{loss:.4f}"}
            if val is not None:
                post[f"val_{self.val_key}"] = f"{val:.4f}"
            self.bar.set_postfix(post, refresh=False)
        elif self.on and (trainer.step % self.report_every == 0 or trainer.step == trainer.stop_at):
            vr = f", {self.val_label} {val:.4f}" if val is not None else ""
            print(f"step {trainer.step}/{trainer.total_steps} (epoch {trainer.epoch}): loss {loss:.4f}{vr}, "
                  f"{trainer.rate:.1f} steps/s", file=sys.stderr, flush=True)

    def teardown(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LRSchedule(Callback):
    """Sets every parameter group's learning rate before each step from `schedule(step) -> lr`.

    `schedule="cosine"` decays from `lr` to 2% of it over the run; `"constant"` keeps `lr`. The rate is
    a function of the step alone, so a resumed run follows the same plan.
    """

    def __init__(self, schedule: str | Callable[[int], float] = "cosine", lr: float | None = None,
                 total_steps: int | None = None):
        if isinstance(schedule, str) and schedule not in ("cosine", "constant"):
            raise ValueError(f"LRSchedule: schedule must be 'cosine', 'constant' or a function, got {schedule!r}")
        self.schedule, self.lr, self.total_steps = schedule, lr, total_steps

    def lr_at(self, trainer, step: int) -> float:
        if callable(self.schedule):
            return float(self.schedule(step))
        lr = self.lr if self.lr is not None else trainer.base_lr
        if self.schedule == "constant":
            return lr
        total = self.total_steps or trainer.total_steps
        frac = min(step / max(1, total), 1.0)
        return lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def on_step_start(self, trainer):
        lr = self.lr_at(trainer, trainer.step)
        for g in trainer.optimizer.param_groups:
            g["lr"] = lr


class NanPolicy(Callback):
    """What a non-finite loss or gradient does: `"stop"` saves the state before the batch and raises
    `TrainingDiverged`; `"skip"` drops the batch (no update) and goes on, until `limit` batches in a row
    were bad (then the model, not one batch, has gone wrong: it stops too).

    `advice(trainer, resumable)` gives the message's last sentence (what to change).
    """

    def __init__(self, mode: str = "stop", limit: int = 10, advice: Callable | None = None):
        if mode not in ("stop", "skip"):
            raise ValueError(f"NanPolicy: mode must be 'stop' or 'skip', got {mode!r}")
        self.mode, self.limit, self.advice = mode, int(limit), advice or _generic_advice
        self.skipped: list[int] = []
        self.in_a_row = 0

    def nonfinite(self, trainer, what: str, value: float, first_chunk: bool) -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        if self.mode == "skip":
            self.skipped.append(trainer.step)
            self.in_a_row += 1
            trainer.log({"kind": "skipped", "step": trainer.step, "what": what, "value": str(value)})
            trainer.say(f"warning: step {trainer.step}: the {what} is {value}; skipped this batch (--on-nan skip)")
            if self.in_a_row >= self.limit:
                raise TrainingDiverged(
                    f"training diverged: {self.limit} batches in a row (steps {trainer.step - self.limit + 1} to "
                    f"{trainer.step}) had a non-finite {what}, so the model itself has gone wrong, not one batch. "
                    f"{_kept(trainer)} {self.advice(trainer, False)}"
                )
            raise SkipBatch
        # Before the first chunk's update nothing of this step has touched the model, optimizer or
        # RNG, so the state is exactly "after step - 1": a checkpoint a resume can continue from.
        if first_chunk and trainer.run_dir is not None and trainer.saved_step != trainer.step:
            trainer.save_checkpoint()
        raise TrainingDiverged(
            f"training diverged: the {what} became {value} at step {trainer.step} (epoch {trainer.epoch}). "
            f"{_kept(trainer)} {self.advice(trainer, trainer.run_dir is not None and trainer.saved_step >= 0)}"
        )

    def on_step_end(self, trainer, loss):
        if not trainer.last_step_skipped:
            self.in_a_row = 0

    def state_dict(self):
        return {"skipped": list(self.skipped), "skips_in_a_row": self.in_a_row}

    def load_state_dict(self, state):
        self.skipped = [int(v) for v in state.get("skipped", [])]
        self.in_a_row = int(state.get("skips_in_a_row", 0))


def _kept(trainer) -> str:
    if trainer.run_dir is None or trainer.saved_step < 0:
        return "No checkpoint was written before this point."
    return f"The last good checkpoint (step {trainer.saved_step}) is kept in {trainer.run_dir / 'checkpoints'}."


def _generic_advice(trainer, resumable: bool) -> str:
    return (f"Lower lr (now {trainer.base_lr}), clip gradients, or standardise the data; to skip such batches "
            "instead, pass NanPolicy('skip') in callbacks.")


class Checkpointing(Callback):
    """Atomic checkpoints every `every` steps (0: at each epoch's end) and when training stops."""

    def __init__(self, every: int = 0):
        self.every = int(every)

    def on_step_end(self, trainer, loss):
        end_of_epoch = trainer.step % trainer.steps_per_epoch == 0
        if (self.every and trainer.step % self.every == 0) or (not self.every and end_of_epoch):
            trainer.save_checkpoint()

    def on_train_end(self, trainer, summary):
        if trainer.saved_step != trainer.step:
            trainer.save_checkpoint()


class RunFiles(Callback):
    """The run folder's `config.json` (rewritten when training goes on: a resume may change the plan)
    and `summary.json` (written when the run completes, removed while it is unfinished)."""

    def __init__(self, run_dir: str | Path, config_record: Callable[[], dict]):
        self.run_dir, self.config_record = Path(run_dir), config_record

    def on_train_start(self, trainer):
        if trainer.is_main and trainer.step < trainer.stop_at:
            (self.run_dir / "summary.json").unlink(missing_ok=True)
            write_json(self.run_dir / "config.json", self.config_record())

    def on_train_end(self, trainer, summary):
        if summary["status"] == "completed" and trainer.is_main:
            write_json(self.run_dir / "summary.json", summary)


class EarlyStopping(Callback):
    """Stop when the validation metric `monitor` has not improved by `min_delta` for `patience` validations."""

    def __init__(self, monitor: str = "loss", patience: int = 5, min_delta: float = 0.0, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, int(patience), float(min_delta), mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad = 0

    def on_validation_end(self, trainer, metrics):
        if self.monitor not in metrics:
            raise ValueError(f"EarlyStopping: no validation metric {self.monitor!r}; there are {sorted(metrics)}")
        v = float(metrics[self.monitor])
        better = v < self.best - self.min_delta if self.mode == "min" else v > self.best + self.min_delta
        if better:
            self.best, self.bad = v, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                trainer.should_stop = f"early stopping: val {self.monitor} did not improve for {self.bad} validations"

    def state_dict(self):
        return {"early_stopping": {"best": self.best, "bad": self.bad}}

    def load_state_dict(self, state):
        s = state.get("early_stopping") or {}
        self.best, self.bad = float(s.get("best", self.best)), int(s.get("bad", 0))


class TensorBoardLogger(Callback):
    """Every metrics record as TensorBoard scalars under `log_dir` (needs the `tensorboard` package)."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = str(log_dir)
        self.writer = None

    def on_train_start(self, trainer):
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoardLogger needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(self.log_dir)

    def on_log(self, trainer, record):
        if self.writer is None:
            return
        kind = record.get("kind", "train")
        for k, v in record.items():
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{kind}/{k}", v, record.get("step", trainer.step))

    def teardown(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = [
    "Callback", "Checkpointing", "EarlyStopping", "History", "LRSchedule", "MetricsLog", "NanPolicy", "ProgressBar",
    "RunFiles", "SkipBatch", "TensorBoardLogger", "TrainingDiverged",
]
