"""Measuring a step: the clocks, synchronised timing and peak memory (CUDA, CPU, JAX).

Used by the harness (`harness.py`) and by the scripts in benchmarks/.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .harness import Config

#: What a step's time is measured with. "wall": the host clock (what a training loop sees). "cpu":
#: the CPU time of every thread of the process (`time.process_time`): on a machine shared with other
#: jobs, the part of the wall time spent waiting for a core does not count, so the figures measure the
#: work of each way (spin-waiting threads count as work; run with one thread for the cleanest figure).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], reps: int, warmup: int = 2, device: str = "cpu") -> list[float]:
    """Wall-clock ms of `reps` calls of `fn` after `warmup` calls, each synchronised on `device`."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler library's start/stop lines, written by C++ straight to file descriptor 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_bytes(fn: Callable[[], Any]) -> float | None:
    """Peak of live tensor bytes allocated while `fn` runs on CPU (profiler allocation events)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    except Exception:  # the profiler's event API is not public: no figure rather than a wrong one
        return None
    cur = peak = 0
    for _, n in sorted(events):
        cur += n
        peak = max(peak, cur)
    return float(peak)


def peak_mib(step, cfg: Config, kept_bytes: int | None = None) -> float | None:
    """Peak memory of one step above what was allocated before it (see the module docstring).

    `kept_bytes` (CUDA graphs): the memory a way keeps reserved between steps (its graphs' private
    pool), invisible to `max_memory_allocated` during a replay; reported when it is larger.
    """
    if not cfg.memory:
        return None
    if getattr(step, "jax_device", None) is not None:
        dev = step.jax_device
        try:
            stats = dev.memory_stats()
            before, peak_before = stats["bytes_in_use"], stats["peak_bytes_in_use"]
            step()
            peak = dev.memory_stats()["peak_bytes_in_use"]
        except Exception:
            return None
        # JAX keeps one lifetime peak: a step below an earlier peak cannot be measured.
        return (peak - before) / 2**20 if peak > peak_before else None
    if cfg.device.startswith("cuda"):
        sync(cfg.device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync(cfg.device)
        peak = torch.cuda.max_memory_allocated() - base
        return max(peak, kept_bytes or 0) / 2**20
    from ..kernels.fused import WORKSPACE

    # The fused op's reused buffers would be invisible to allocation events: count them as the
    # fresh allocations they replace.
    WORKSPACE.clear()
    peak = cpu_peak_bytes(step)
    return None if peak is None else peak / 2**20
