"""A GradRNN on sequence data: the task `innergrad train` runs, and its evaluation and prediction.

`SequenceTask` is what a step computes: step `s` takes the batch `step_batch(seed, s, ...)` (epoch
`e` visits the training sequences in the permutation seeded by `(seed, e)`), padded steps are
masked by the sequences' lengths, and with `tbptt=K` each batch is cut into chunks of K steps, one
optimizer update each. `_build.sequence_trainer` builds it from a `TrainConfig`.

Under torchrun (`dist=`, see `_distributed.py`) every rank computes the same step-indexed global
batch, takes its DistributedSampler share, and the loss is normalised by the global count, so the
updates equal the single-process ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import InnergradError
from ..data.sequences import SequenceData, load_data, synthetic_data
from ._callbacks import Callback
from ._config import TrainConfig
from ._distributed import shard
from ._trainer import LocalContext, Task, Trainer, step_batch

# ------------------------------------------------------------------------------- evaluation and prediction


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


def run_data(config: TrainConfig) -> SequenceData:
    """The data set a config trains on: its `--data` file, or the built-in teacher data."""
    if config.data:
        return load_data(config.data, require_y=True)
    return synthetic_data(config.n_sequences, config.seq_len, config.input_size, config.noise, config.seed)



# With on_nan="skip", this many skipped batches in a row stop the run anyway: the model itself
# (not one bad batch) has gone wrong.
NAN_SKIP_LIMIT = 10


class SequenceTask(Task):
    """Masked mean squared error of a time-major GradRNN over step-seeded batches, in TBPTT chunks."""

    def __init__(self, config: TrainConfig, train_data: SequenceData, val_data: SequenceData, device, dtype,
                 data_info: dict, model_spec: dict, backend_used: str):
        self.config, self.train_data, self.val_data, self.device = config, train_data, val_data, device
        self.data_info, self.model_spec, self.backend_used = data_info, model_spec, backend_used
        self.X = torch.from_numpy(train_data.x).to(device, dtype).transpose(0, 1)  # (T, N, D)
        self.Y = torch.from_numpy(train_data.y).to(device, dtype).transpose(0, 1)  # (T, N)
        self.lengths = train_data.lengths
        self.steps_per_epoch = math.ceil(len(train_data) / config.batch_size)

    def batch_indices(self, step: int) -> np.ndarray:
        """Training-sequence indices of batch `step`: epoch `e`'s seeded permutation, sliced."""
        return step_batch(self.config.seed, step, len(self.train_data), self.config.batch_size)

    def train_step(self, trainer: Trainer) -> float:
        """One batch; returns its mean squared error over the valid steps of the whole (global) batch.

        Under DDP each rank takes its share and scales its summed error by `world_size / count`:
        DDP averages gradients over the ranks, so the update is the gradient of (global SSE) /
        (global count), as in one process.
        """
        idx_np = self.batch_indices(trainer.step)
        L_np = self.lengths[idx_np]
        T = self.Y.shape[0]
        W = trainer.ctx.world_size
        if W > 1:
            idx_np, real = shard(idx_np, trainer.ctx.rank, W)
            mine = np.where(real, self.lengths[idx_np], 0)  # DistributedSampler's padding repeats: no steps
        else:
            mine = L_np
        idx = torch.from_numpy(idx_np).to(self.device)
        x, y = self.X[:, idx], self.Y[:, idx]
        full = bool((mine == T).all())
        L = None if full else torch.from_numpy(mine).to(self.device)
        K = self.config.tbptt if 0 < self.config.tbptt < T else T
        h = None
        sse, count = 0.0, 0
        for s in range(0, T, K):
            xc, yc = x[s : s + K], y[s : s + K]
            n = int(np.clip(L_np - s, 0, xc.shape[0]).sum())  # valid steps of the GLOBAL batch in this chunk
            if n == 0:
                break  # every sequence of the batch has ended
            if L is None:  # every sequence of the batch runs the whole length
                lc, valid = None, None
            else:
                lc = (L - s).clamp(0, xc.shape[0])
                valid = torch.arange(xc.shape[0], device=self.device).unsqueeze(1) < lc.unsqueeze(0)
            pred, h = trainer.net(xc, h0=h, lengths=lc)
            err = (pred - yc) ** 2
            if valid is not None:
                err = torch.where(valid, err, torch.zeros_like(err))
            chunk_sse = err.sum()
            loss = chunk_sse / n if W == 1 else chunk_sse * (W / n)
            sse += trainer.update(loss, chunk_sse, n, first_chunk=(s == 0))
            h = h.detach()
            count += n
        return sse / max(count, 1)

    def validate(self, trainer: Trainer) -> dict:
        return evaluate(trainer.model, self.val_data, self.device)

    def summary(self, trainer: Trainer, s: dict) -> dict:
        return {"status": s["status"], "step": s["step"], "total_steps": s["total_steps"], "epoch": s["epoch"],
                "val_mse": s["val"]["mse"], "val_r2": s["val"]["r2"], "train_seconds": s["train_seconds"],
                "noise_floor_mse": self.data_info.get("noise_floor_mse"), "signal": s["signal"],
                "run_dir": s["run_dir"], "skipped_steps": s["skipped_steps"], "world_size": s["world_size"]}

    def check_resumable(self, trainer: Trainer, state: dict, path: str) -> None:
        old_hash, new_hash = state["trainer"].get("data_sha256"), self.data_info.get("sha256")
        if old_hash and new_hash and old_hash != new_hash:
            raise InnergradError(
                f"{self.config.data}: the data file changed since the run started (sha256 {old_hash[:12]}... "
                f"then, {new_hash[:12]}... now), so the run cannot continue exactly; restore the file or start "
                "a new run"
            )

    def saved_settings(self, state: dict, where: str) -> dict:
        """A checkpoint's settings as this version reads them (keys it lacks take their defaults)."""
        return TrainConfig.from_mapping(state["config"], where).to_dict()

    def config_record(self, ctx) -> dict:
        """The run folder's `config.json`: settings, model, backend, data, versions (and the DDP layout)."""
        from ..core.version import __version__

        rec = {"train": self.config.to_dict(), "model": self.model_spec, "backend_used": self.backend_used,
               "data": self.data_info, "innergrad_version": __version__, "torch_version": torch.__version__}
        if not isinstance(ctx, LocalContext):
            rec["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend, "device": str(ctx.device)}
        return rec

    def describe(self, ctx) -> str:
        """One line: the model, the data and the plan."""
        s, c = self.model_spec, self.config
        widths = "-".join(str(w) for w in (s["input_size"] + s["hidden_size"], *s["hidden_layers"], 1))
        src = "built-in teacher data" if self.data_info.get("kind") == "synthetic" else self.data_info["source"]
        backend = c.backend if c.backend != "auto" else f"auto ({self.backend_used})"
        dt = "" if c.dtype == "float32" else f", {c.dtype}"
        where = ""
        if not isinstance(ctx, LocalContext):
            where = (f"; data-parallel over {ctx.world_size} processes ({ctx.backend}), "
                     f"~{-(-c.batch_size // ctx.world_size)} sequences each per step")
        return (f"GradRNN(input {s['input_size']}, hidden {s['hidden_size']}, F {widths} {s['activation']}, "
                f"{s['mode']}, backend {backend}{dt}) on {src}: {len(self.train_data)} train / "
                f"{len(self.val_data)} validation sequences, {c.epochs} epochs x {self.steps_per_epoch} steps"
                f"{where}")

    def state_dict(self) -> dict:
        return {"data_sha256": self.data_info.get("sha256")}


class BestValue(Callback):
    """The best (lowest) value of a validation metric so far, kept in the checkpoint."""

    def __init__(self, metric: str = "mse", key: str = "best_val_mse"):
        self.metric, self.key, self.best = metric, key, math.inf

    def on_validation_end(self, trainer, metrics):
        self.best = min(self.best, metrics[self.metric])

    def state_dict(self):
        return {self.key: self.best}

    def load_state_dict(self, state):
        self.best = float(state.get(self.key, math.inf))


def sequence_advice(trainer, resumable: bool) -> str:
    """The last sentence of a divergence message for a command-line run: what to change."""
    c = trainer.task.config
    resume = (f" To skip such batches instead, continue with: innergrad train --resume {trainer.run_dir} "
              "--on-nan skip." if resumable else "")
    return (f"Lower --lr (now {c.lr}), keep --grad-clip on (now {c.grad_clip}), or standardise the data."
            f"{resume}")


__all__ = ["NAN_SKIP_LIMIT", "BestValue", "SequenceTask", "evaluate", "masked_metrics", "predict", "run_data",
           "sequence_advice"]
