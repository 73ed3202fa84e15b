"""Data-parallel training on PyTorch's own engine: `torch.distributed`, DDP, launched by `torchrun`.

Nothing here replaces PyTorch's machinery; it decides how innergrad uses it:

- **One ordinary forward, one `.backward()` per update.** The gradient-RNN computes `h_t = dF/dh`
  inside its forward pass (closed form / fused backends build a first-order graph; the autograd and
  func backends differentiate inside forward with `create_graph=True`), so to DDP a training step
  is a plain forward followed by a single backward: its gradient hooks fire once per parameter.
  DDP with `static_graph=True` or `find_unused_parameters=True` is refused (see `DDP_REFUSED`):
  not needed here, and wrong or failing as soon as a gradient is taken outside the forward, the
  double-backward case PyTorch does not support under DDP (pytorch#47562).
- **Exact global-batch loss.** Every rank knows the whole global batch of a step (the batch order
  is a function of the step, see `SequenceTask.batch_indices`) and splits it like
  `torch.utils.data.DistributedSampler(shuffle=False)`. Each rank sums its masked squared errors and
  divides by the *global* number of valid steps times `1 / world_size`; DDP's gradient averaging
  divides by `world_size` again, so the update equals the single-process one on the same batch,
  also with variable-length sequences. DistributedSampler's padding repeats (it pads the batch to a
  multiple of the world size) get length 0, i.e. no loss and no gradient.
- **Rank 0 writes** logs, the progress bar, checkpoints and reports; a barrier follows each save.
  On resume rank 0 reads the checkpoint and broadcasts its bytes, so every rank loads the same step
  even without a shared file system.
- **Agreement.** Decisions that could differ between ranks (stop on a signal, divergence, a setup
  error on one node) go through a collective first, so no rank waits forever for the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from ..core.errors import InnergradError

Tensor = torch.Tensor

#: Variables torchrun (`python -m torch.distributed.run`) sets for each process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

RECIPE = (
    "innergrad train --distributed runs under torchrun, one process per CPU group or GPU, e.g.\n"
    "  torchrun --standalone --nproc-per-node 2 -m innergrad train --distributed ...\n"
    "(or python -m torch.distributed.run ...; on several machines use --nnodes N --node-rank I "
    "--rdzv-backend c10d --rdzv-endpoint HOST:PORT)"
)


class QuietUserError(InnergradError):
    """A user error another rank reports: this rank exits with status 2 without printing it again."""

    quiet = True


def env_rank() -> int:
    """This process's rank as torchrun announced it (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


# ------------------------------------------------------------------------------- what DDP cannot do


def refuse_unsupported(config) -> None:
    """Raise an `InnergradError` for settings that are wrong under DDP (each with its reason and fix).

    - `learn_h0` with `tbptt`: the learned `h0` is used by the first chunk of a sequence only, and
      DDP without `find_unused_parameters` (itself refused, see the module docstring) expects every
      parameter in every backward.
    - `device` `cuda:N`: under torchrun each process takes `cuda:LOCAL_RANK`.
    - `device` `mps`: torch.distributed has no backend for Apple GPUs.
    """
    if config.learn_h0 and config.tbptt:
        raise InnergradError(
            "--distributed cannot train --learn-h0 with --tbptt: the learned h0 takes part only in the first "
            "chunk of each sequence, and DDP (without find_unused_parameters, which breaks the gradient-inside-"
            "forward graph) needs every parameter in every backward. Drop --learn-h0 or set --tbptt 0"
        )
    dev = str(config.device)
    if dev.startswith("cuda:"):
        raise InnergradError(
            f"--distributed with --device {dev}: under torchrun each process uses the GPU of its local rank "
            "(cuda:LOCAL_RANK); give --device cuda and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if dev == "mps":
        raise InnergradError("--distributed: torch.distributed has no backend for MPS (Apple GPUs); use --device cpu")


# Measured (tests/test_distributed.py): with the gradient taken inside forward, as innergrad's models
# do, plain DDP matches single-process training to rounding for every backend and mode. With a
# gradient taken OUTSIDE the DDP forward (`autograd.grad(ddp(x).sum(), x, create_graph=True)`, then
# `.backward()`), plain DDP and find_unused_parameters raise, and static_graph returns silently wrong
# gradients. Neither option is needed here (one forward, one backward, every parameter used).
DDP_REFUSED = {
    "static_graph": "it is not needed (each step is one forward and one backward that reaches every parameter), "
                    "and when a gradient is taken outside the DDP forward (autograd.grad(ddp(x).sum(), x, "
                    "create_graph=True), then .backward()) it silently produces wrong gradients (pytorch#47562: "
                    "double backward under DDP is not supported)",
    "find_unused_parameters": "it is not needed (every parameter takes part in every step) and costs a graph "
                              "traversal per step; with a gradient taken outside the DDP forward it fails with "
                              "'Expected to have finished reduction' (pytorch#47562)",
}


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, **ddp_kwargs) -> torch.nn.parallel.DistributedDataParallel:
    """`DistributedDataParallel(model)` for innergrad's models; refuses the options known to break them.

    `ddp_kwargs` pass through to DDP (e.g. `bucket_cap_mb`, `gradient_as_bucket_view`), except
    `static_graph=True` and `find_unused_parameters=True`, which raise an `InnergradError` with the reason.
    """
    from torch.nn.parallel import DistributedDataParallel

    for key, why in DDP_REFUSED.items():
        if ddp_kwargs.get(key):
            raise InnergradError(
                f"DistributedDataParallel({key}=True) is refused for innergrad models: {why}. Leave it off: "
                "innergrad runs one forward and one backward per step, which plain DDP handles"
            )
    ddp_kwargs = {k: v for k, v in ddp_kwargs.items() if k not in DDP_REFUSED}
    if ctx.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [ctx.device.index])
        ddp_kwargs.setdefault("output_device", ctx.device.index)
    return DistributedDataParallel(model, **ddp_kwargs)


# ------------------------------------------------------------------------------- the batch split


def shard(indices: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's part of one global batch: `(indices, real)`.

    The split of `torch.utils.data.DistributedSampler(range(B), world_size, rank, shuffle=False)`:
    the batch is padded to a multiple of `world_size` by repeating it from the start, and rank `r`
    takes positions `r, r + W, r + 2W, ...`. Every rank gets the same number of sequences (DDP's
    collectives need every rank to run a step); `real` is False on the padding repeats, which the
    trainer gives length 0 so they add no loss and no gradient.
    """
    B = len(indices)
    if B == 0:
        raise ValueError("shard: empty batch")
    per_rank = -(-B // world_size)
    pos = np.arange(rank, per_rank * world_size, world_size)
    return np.asarray(indices)[pos % B], pos < B


# ------------------------------------------------------------------------------- the process group


@dataclass
class DistContext:
    """This process's place in the job: rank, world size, its device and the process group's backend."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives. Control messages are small CPU tensors: with NCCL training the group is
    # "cpu:gloo,cuda:nccl", so they travel over gloo and never need a GPU stream.
    def barrier(self) -> None:
        self.all_reduce(torch.zeros(1, dtype=torch.int32))

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        dist.all_reduce(t, op=ops[op])
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        return bool(self.all_reduce(t, "max").item())

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (sent as a uint8 tensor: no pickle)."""
        import torch.distributed as dist

        n = torch.tensor([len(data) if self.is_main else 0], dtype=torch.int64)
        dist.broadcast(n, 0)
        if self.is_main:
            buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if n.item()
                   else torch.empty(0, dtype=torch.uint8))
        else:
            buf = torch.empty(int(n.item()), dtype=torch.uint8)
        if buf.numel():
            dist.broadcast(buf, 0)
        return bytes(buf.cpu().numpy().tobytes())

    def all_gather_text(self, text: str) -> list[str]:
        """Every rank's `text`, in rank order."""
        import torch.distributed as dist

        raw = text.encode()
        n = torch.tensor([len(raw)], dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        width = max(int(s.item()) for s in sizes)
        buf = torch.zeros(max(width, 1), dtype=torch.uint8)
        if raw:
            buf[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        bufs = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(bufs, buf)
        return [bytes(b.cpu().numpy()[: int(s.item())].tobytes()).decode() for b, s in zip(bufs, sizes)]

    def from_main(self, fn: Callable[[], bytes]) -> bytes:
        """Run `fn` on rank 0 only and give its bytes to every rank; an `InnergradError` there fails all ranks.

        Rank 0 re-raises the error (the CLI prints it); the others raise `QuietUserError`.
        """
        err = ""
        out = b""
        if self.is_main:
            try:
                out = fn()
            except InnergradError as e:
                err = str(e) or type(e).__name__
        payload = self.broadcast_bytes((b"E" + err.encode()) if err else (b"K" + out) if self.is_main else None)
        if payload[:1] == b"E":
            if self.is_main:
                raise InnergradError(err)
            raise QuietUserError(payload[1:].decode())
        return payload[1:]

    def agree(self, fn: Callable[[], object]) -> object:
        """Run `fn` on every rank; if it raises an `InnergradError` on any rank, raise on all of them.

        Rank 0 raises with every distinct message (naming the ranks when they differ), so one
        node's problem (a data file missing there) is reported once instead of hanging the job.
        """
        result, err = None, ""
        try:
            result = fn()
        except InnergradError as e:
            err = str(e) or type(e).__name__
        msgs = self.all_gather_text(err)
        if not any(msgs):
            return result
        if all(m == msgs[0] for m in msgs):
            text = msgs[0]  # the same problem everywhere: say it once
        else:
            by_msg: dict[str, list[int]] = {}
            for r, m in enumerate(msgs):
                if m:
                    by_msg.setdefault(m, []).append(r)
            text = "; ".join(f"rank {', '.join(map(str, rs))}: {m}" for m, rs in by_msg.items())
        if self.is_main:
            raise InnergradError(text)
        raise QuietUserError(text)


def init_distributed(device: str = "cpu", backend: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Join the torchrun job this process belongs to; returns its `DistContext`.

    **Arguments:** `device`: `"cpu"`, `"cuda"` or `"auto"` (each rank takes `cuda:LOCAL_RANK`);
    `backend`: `"auto"` (NCCL for CUDA training, gloo for CPU), `"gloo"` or `"nccl"`;
    `timeout_s`: how long a collective may wait for a missing rank (default: torch's).

    With CUDA training the process group is `cpu:gloo,cuda:nccl`: gradients go over NCCL, the
    small control messages (stop flags, checkpoint bytes) over gloo.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise InnergradError("--distributed: this PyTorch build has no torch.distributed; install a standard build")
    if not launched_by_torchrun():
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        raise InnergradError(f"--distributed needs the variables torchrun sets ({', '.join(missing)} missing). "
                        + RECIPE)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend not in ("auto", "gloo", "nccl"):
        raise InnergradError(f"--dist-backend must be auto, gloo or nccl, got {backend!r}")
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("cpu", "cuda", "auto"):
        raise InnergradError(f"--distributed: --device must be cpu, cuda or auto, got {device!r} (each process takes "
                        "cuda:LOCAL_RANK by itself)")
    if want_cuda:
        if not torch.cuda.is_available():
            raise InnergradError("--distributed --device cuda: CUDA is not available here; use --device cpu (gloo)")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise InnergradError(
                f"--distributed: local rank {local_rank} needs GPU {local_rank}, but this machine has {n}; "
                f"start at most {n} processes per node (--nproc-per-node {n})"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if backend == "nccl" and dev.type != "cuda":
        raise InnergradError("--dist-backend nccl needs CUDA training (--device cuda); on CPU use gloo (the default)")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise InnergradError("--dist-backend nccl: this PyTorch build has no NCCL; use --dist-backend gloo")
    if backend == "gloo" and not dist.is_gloo_available():
        raise InnergradError("--dist-backend gloo: this PyTorch build has no gloo; use --dist-backend nccl on GPUs")
    group_backend = "cpu:gloo,cuda:nccl" if backend == "nccl" else "gloo"
    kw = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    if backend == "nccl":
        kw["device_id"] = dev
    try:
        dist.init_process_group(group_backend, init_method="env://", rank=rank, world_size=world, **kw)
    except (RuntimeError, ValueError) as e:
        raise InnergradError(
            f"--distributed: could not join the process group ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "check that every node uses the same --rdzv-endpoint and --nnodes"
        ) from None
    return DistContext(rank, world, local_rank, backend, dev)


def shutdown(ctx: DistContext | None) -> None:
    """Leave the process group. Drop every DDP wrapper first (`Trainer.close()`).

    A DistributedDataParallel object still alive when the group is destroyed can abort the process
    at exit ("terminate called without an active exception", seen here in about 1 run in 6), so
    unreachable ones are collected before the group goes.
    """
    import gc

    import torch.distributed as dist

    if ctx is not None and dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


__all__ = [
    "DDP_REFUSED", "DistContext", "QuietUserError", "RECIPE", "env_rank", "init_distributed",
    "launched_by_torchrun", "refuse_unsupported", "shard", "shutdown", "wrap_ddp",
]
