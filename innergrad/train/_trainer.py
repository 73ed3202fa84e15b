"""The training loop every innergrad training goes through: `ig.train.fit`, the CLI's sequence runs.

`Trainer` owns only what every training has: the step counter, the optimizer update (backward,
gradient clipping, the finite check), validation at epoch ends, the hooks, signals and the whole
resumable state. What a step computes comes from a *task* (`train_step(trainer) -> loss`,
`validate(trainer) -> metrics`); progress, metrics log, checkpoints, NaN policy, LR schedule and
early stopping are callbacks (`_callbacks.py`); `_build.py` assembles a run.

The state (model, optimizer, step, every part's counters, RNG states) is one `state_dict()`, and a
task's data order is a function of the step, so a run stopped after any step and resumed from its
checkpoint takes exactly the same steps as one that never stopped.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..models.registry import check_same_model
from ._callbacks import Callback, Checkpointing, NanPolicy, SkipBatch, TrainingDiverged
from ._checkpoint import (
    CheckpointFallbackWarning,
    decode_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    set_aside,
)
from ._config import check_resume

#: The salt of every step-seeded batch order (fit's arrays, the sequence task): one order for one seed.
BATCH_SALT = 0xF17


class LocalContext:
    """One process, no job: the same interface as `_distributed.DistContext`, each collective the identity.

    The trainer talks to a context either way, so no code asks "is this distributed?".
    """

    rank, world_size, local_rank, backend, is_main = 0, 1, 0, "none", True

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def barrier(self) -> None:
        pass

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return t

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        return data if data is not None else b""

    def all_gather_text(self, text: str) -> list[str]:
        return [text]

    def from_main(self, fn: Callable[[], bytes]) -> bytes:
        return fn()

    def agree(self, fn: Callable[[], object]) -> object:
        return fn()


class Task:
    """What a step computes. `train_step` runs the model (`trainer.net`) on the step's batch and calls
    `trainer.update(loss, value, count)` once per optimizer update (several for truncated BPTT);
    it returns the batch's loss as a float. The batch must be a function of `trainer.step` alone.
    """

    def train_step(self, trainer: Trainer) -> float:
        raise NotImplementedError

    def validate(self, trainer: Trainer) -> dict:
        """Validation metrics at an epoch's end (`{}`: no validation)."""
        return {}

    def summary(self, trainer: Trainer, summary: dict) -> dict:
        """The summary `fit` returns (a task may rename or add entries)."""
        return summary

    def check_resumable(self, trainer: Trainer, state: dict, where: str) -> None:
        """Raise if a checkpoint's state cannot continue this run for a reason of the task's own (other data);
        the settings are compared by the Trainer (`check_resume`)."""

    def saved_settings(self, state: dict, where: str) -> dict:
        """A checkpoint's settings, to compare with the Trainer's `record`."""
        return dict(state.get("config") or {})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class Trainer:
    """Runs `task` on `model` with `optimizer` for `total_steps` updates, calling `callbacks`' hooks.

    ```python
    tr = Trainer(model, opt, task, total_steps=100, steps_per_epoch=10, callbacks=[MetricsLog("run")])
    summary = tr.fit()   # {"status": "completed" | "stopped" | "interrupted" | "early stopping: ...", ...}
    ```

    `ctx`: a `DistContext` under torchrun (the default `LocalContext` is one process); `ddp`: the
    DDP-wrapped model the task runs (`trainer.net`); `run_dir`: where checkpoints go. The learning rate
    is the optimizer's unless a callback (`LRSchedule`) sets it in `on_step_start`.
    """

    def __init__(self, model, optimizer, task, *, total_steps: int, steps_per_epoch: int, callbacks=(),
                 run_dir: str | Path | None = None, ctx=None, grad_clip: float = 0.0, quiet: bool = True,
                 record: dict | None = None, model_spec: dict | None = None, keep_checkpoints: int = 2,
                 may_change: tuple[str, ...] = (), handle_signals: bool = True):
        self.model, self.optimizer, self.task = model, optimizer, task
        self.ctx = ctx if ctx is not None else LocalContext()
        self.is_main = self.ctx.is_main
        self.quiet = quiet or not self.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.total_steps, self.steps_per_epoch = int(total_steps), int(steps_per_epoch)
        self.grad_clip = grad_clip
        # `record`: the settings a checkpoint keeps (its "config"); `model_spec`: how `ig.load` rebuilds the model.
        self.record, self.model_spec, self.keep_checkpoints = record or {}, model_spec or {}, keep_checkpoints
        # `may_change`: the settings of `record` a resume may change; `handle_signals`: SIGINT/SIGTERM end
        # the run after the current step (checkpointed) instead of at once.
        self.may_change, self.handle_signals = tuple(may_change), handle_signals
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.ddp: torch.nn.Module | None = None
        cbs = list(callbacks)
        if not any(isinstance(c, NanPolicy) for c in cbs):
            cbs.append(NanPolicy())
        self.nan_policy = next(c for c in cbs if isinstance(c, NanPolicy))
        # Checkpoints last: what they save includes what every other part did in that step.
        self.callbacks: list[Callback] = sorted(cbs, key=lambda c: isinstance(c, Checkpointing))
        self.step, self.elapsed, self.rate = 0, 0.0, 0.0
        self.last_val: dict = {}
        self.validated_at = -1
        self.stop_signal: str | None = None
        self.should_stop: str | bool = False
        self.last_step_skipped = False
        self.saved_step = -1              # the step of the newest checkpoint this process knows of
        self.resume_notes: list[str] = []  # what resume() had to work around (a damaged checkpoint)
        self.stop_at = self.total_steps

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def net(self):
        """The module a step runs: the DDP wrapper under torchrun, else the model."""
        return self.ddp if self.ddp is not None else self.model

    def close(self) -> None:
        """Drop the DDP wrapper (before `destroy_process_group`); the model stays usable."""
        self.ddp = None

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def log(self, record: dict) -> None:
        """Hand a metrics record to every callback (the metrics log writes it, a TensorBoard logger plots it)."""
        self._call("on_log", record)

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ---- one step
    def train_step(self) -> float:
        """One batch through the task; returns its loss (NaN when the NaN policy skipped it)."""
        self._call("on_step_start")
        self.last_step_skipped = False
        try:
            loss = self.task.train_step(self)
        except SkipBatch:
            self.last_step_skipped = True
            self.step += 1
            return float("nan")
        self.step += 1
        return loss

    def update(self, loss: torch.Tensor, value: torch.Tensor, count: int, first_chunk: bool = True) -> float:
        """One optimizer update from `loss`; returns `value` summed over ranks (the task's reported numerator).

        A non-finite `value / count` or gradient norm goes to the NaN policy before the update.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        # Every rank sees the global value, so all decide alike below.
        total = self.ctx.all_reduce(value.detach().to(torch.float64).cpu().reshape(1)).reshape(())
        cv, gv = float(total), float(gnorm)
        lv = cv / count
        if not (math.isfinite(lv) and math.isfinite(gv)):
            what = "loss" if not math.isfinite(lv) else "gradient norm"
            self.nan_policy.nonfinite(self, what, lv if what == "loss" else gv, first_chunk)
        self.optimizer.step()
        return cv

    def validate_now(self) -> dict:
        was = self.model.training
        self.model.eval()
        try:
            return self.task.validate(self) or {}
        finally:
            self.model.train(was)

    # ---- the loop
    def fit(self, max_steps: int | None = None) -> dict:
        """Train until the last step (or global step `max_steps`, a signal, or a callback's stop); a summary.

        `summary["status"]`: `"completed"`, `"stopped"` (max_steps), `"interrupted"` (SIGINT/SIGTERM,
        after finishing the step) or the reason a callback set in `trainer.should_stop`.
        """
        self.stop_at = self.total_steps if max_steps is None else min(self.total_steps, int(max_steps))
        self.should_stop = False
        status = "completed"
        t_seg, steps_seg = time.perf_counter(), 0
        try:
            self._call("on_train_start")
            with stop_on_signals(self) if self.handle_signals else nullcontext():
                while self.step < self.stop_at:
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.elapsed += time.perf_counter() - t0
                    steps_seg += 1
                    self.rate = steps_seg / max(time.perf_counter() - t_seg, 1e-9)
                    if self.step % self.steps_per_epoch == 0:
                        self._validate()
                    self._call("on_step_end", loss)
                    stop = self.ctx.any(self.stop_signal is not None)  # all ranks stop after the same step
                    if stop and self.stop_signal is None:
                        self.stop_signal = "a signal to another rank"
                    if stop:
                        status = "interrupted"
                        break
                    if self.should_stop:
                        status = str(self.should_stop)
                        break
            if status == "completed" and self.step < self.total_steps:
                status = "stopped"
            val = self.last_val if self.validated_at == self.step and self.last_val else self.validate_now()
            summary = {"status": status, "step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                       "val": val, "train_seconds": self.elapsed, "signal": self.stop_signal,
                       "run_dir": str(self.run_dir) if self.run_dir is not None else None,
                       "skipped_steps": list(self.nan_policy.skipped), "world_size": self.ctx.world_size}
            summary = self.task.summary(self, summary)
            self._call("on_train_end", summary)
            return summary
        finally:
            self._call("teardown")

    def _validate(self) -> None:
        val = self.validate_now()
        self.last_val, self.validated_at = val, self.step
        if val:
            self._call("on_validation_end", val)

    # ---- state
    def state_dict(self) -> dict:
        cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
        py = random.getstate()
        trainer = {"step": self.step, "elapsed": self.elapsed, "last_val": self.last_val,
                   "total_steps": self.total_steps}
        for part in (*self.callbacks, self.task):
            trainer.update(part.state_dict())
        return {
            "model_spec": self.model_spec, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "trainer": trainer, "config": self.record,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(),  # noqa: NPY002
                    "python": [py[0], list(py[1]), py[2]]},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        t = state["trainer"]
        self.step, self.elapsed = int(t["step"]), float(t["elapsed"])
        self.last_val = dict(t.get("last_val") or {})
        self.validated_at = self.step if self.last_val and self.step % self.steps_per_epoch == 0 else -1
        for part in (*self.callbacks, self.task):
            part.load_state_dict(t)
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
            path = save_checkpoint(self.run_dir, self.step, self.state_dict(), self.keep_checkpoints)
        self.ctx.barrier()
        self.saved_step = self.step
        return path

    def resume(self) -> int:
        """Continue from the newest readable checkpoint of the run folder; returns its step (see `resume_run`)."""
        return resume_run(self)


def resume_run(trainer: Trainer) -> int:
    """Load the newest readable checkpoint of the run folder and truncate metrics written after it.

    Returns the step. A damaged newest checkpoint (cut short, altered) is renamed to
    `<name>.damaged` and the previous one is used; `resume_notes` says so (and a
    `CheckpointFallbackWarning` is issued). Under DDP rank 0 reads the file and sends its bytes to
    every rank, so all ranks continue from the same step even without a shared file system.
    """
    run_dir = trainer.run_dir
    if run_dir is None:
        raise InnergradError("resume needs a run folder")
    skipped: list[tuple[Path, str]] = []
    picked: dict = {}

    def pick() -> bytes:  # the newest readable checkpoint; on rank 0 only under DDP
        picked["state"], picked["raw"], path = read_checkpoint(run_dir, skipped)
        return str(path).encode()

    name = trainer.ctx.from_main(pick).decode()
    raw = trainer.ctx.broadcast_bytes(picked.get("raw"))

    def check_and_load() -> None:
        state = picked["state"] if "state" in picked else decode_checkpoint(raw, name)
        saved_spec = state.get("model_spec")
        if saved_spec and trainer.model_spec:  # run identity: the whole model spec, before any other setting
            check_same_model(saved_spec, trainer.model_spec, f"{name}: this run holds")
        check_resume(trainer.task.saved_settings(state, name), trainer.record, trainer.may_change, name)
        trainer.task.check_resumable(trainer, state, name)
        trainer.load_state_dict(state)

    trainer.ctx.agree(check_and_load)
    if trainer.is_main:
        for bad, why in skipped:
            moved = set_aside(bad)
            trainer.resume_notes.append(
                f"{why}. Resumed from the previous checkpoint {name} instead (step {trainer.step}); the damaged "
                f"file was renamed to {moved.name}"
            )
        for note in trainer.resume_notes:
            warnings.warn(note, CheckpointFallbackWarning, stacklevel=3)
        remove_stale_temp_files(run_dir)
        truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
    trainer.saved_step = trainer.step
    return trainer.step


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after `step` (they belong to steps the resumed run will redo)."""
    import json

    from ..core.files import write_atomic

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if rec.get("step", 0) <= step:
            keep.append(line)
    write_atomic(path, "".join(k + "\n" for k in keep))


def step_batch(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The indices of batch `step` out of `n` examples: epoch `e`'s permutation seeded by `(seed, e)`, sliced.

    A function of the step alone, so a resumed run takes the batches an uninterrupted one would.
    """
    steps_per_epoch = -(-n // batch_size)
    epoch, i = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch, BATCH_SALT]).permutation(n)
    return perm[i * batch_size : (i + 1) * batch_size]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (seeds the legacy global RNG that user code may use)
    torch.manual_seed(seed)


@contextmanager
def stop_on_signals(trainer: Trainer):
    """First SIGINT/SIGTERM: finish the step, checkpoint, return. A second SIGINT aborts at once.

    The handlers found are restored exactly afterwards. A signal whose handler is `SIG_IGN` (SIGINT
    in a background job or under nohup) or was set outside Python is left alone: the user or the
    shell chose that, and the training must not start reacting to it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame):
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        trainer.stop_signal = signal.Signals(signum).name

    for s in (signal.SIGINT, signal.SIGTERM):
        found = signal.getsignal(s)
        if found is None or found == signal.SIG_IGN:
            continue
        try:
            signal.signal(s, handler)
            old[s] = found
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


__all__ = ["BATCH_SALT", "LocalContext", "Task", "Trainer", "TrainingDiverged", "seed_everything", "step_batch",
           "stop_on_signals", "truncate_metrics"]
