"""Scoped settings: kernel tuning and thread counts for a block of code, never for the whole process.

```python
with ig.settings(threads=1, cpu_block_elements=16384, triton_precision="tf32"):
    loss = step()            # this thread (or asyncio task) sees the settings; others do not
```

The values live in one `ContextVar` holding a frozen `Settings`: a `with` block changes them for the
calling thread or task only and restores them on exit, however it exits. So a benchmark can time
two tunings side by side and a test can force a path, without touching module or backend attributes
that every other thread's model reads too. Worker threads that the kernels start take the caller's
settings with them (`contextvars.copy_context`).

`threads` is the exception PyTorch imposes: its intra-op thread count is process-wide. Inside the
block it is set to the value and restored on exit; two threads that set different counts at the
same time still share one pool (say so rather than pretend otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

#: Triton dot precisions (`triton_precision`), None: follow `torch.get_float32_matmul_precision()`.
TRITON_PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16")


@dataclass(frozen=True)
class Settings:
    """Every scoped setting with its default. Read with `ig.current_settings()`, change with `ig.settings(...)`.

    - `threads`: torch intra-op threads inside the block (None: leave PyTorch's count).
    - `cpu_kernel`: the fused backend's C++ kernel (False: its Python loop, same math; tests and the
      benchmark hold the two to each other).
    - `cpu_min_rows_per_thread`: smallest block of the batch worth a thread of the Python loop (0: never split).
    - `cpu_kernel_min_rows`: the same for the C++ kernel (measured at T=64, w=128 on 2 cores: B=32 in two
      blocks of 16 rows 5.7-7.7 ms against 8.0-9.4 ms as one block).
    - `cpu_block_elements`: rows x width of one C++ block at most, so that its per-step working set stays
      in a core's L2 cache (0: one block per thread).
    - `fused_call_min_rows`: single `value_and_grad` calls of an `ig.MLP` run as one fused operator from
      this batch size up; smaller batches stay on the closed form, which is as fast there (measured, see
      benchmarks/README.md). 0: always fused.
    - `workspace_bytes`: cap of the reusable CPU buffers for saved activations (0: no reuse).
    - `triton_precision`, `triton_block_b`, `triton_num_warps`, `triton_hoist`, `triton_width_block`,
      `triton_recompute`, `triton_save_bytes`, `triton_scratch_bytes`, `triton_interpret_on_cpu`: the
      Triton kernels' dot precision and launch shape (see `innergrad.kernels.triton_rnn.TritonBackend`).
    """

    threads: int | None = None
    cpu_kernel: bool = True
    cpu_min_rows_per_thread: int = 64
    cpu_kernel_min_rows: int = 16
    cpu_block_elements: int = 32768
    fused_call_min_rows: int = 512
    workspace_bytes: int = 1 << 30
    triton_precision: str | None = None
    triton_block_b: int | None = None
    triton_num_warps: int | None = None
    triton_hoist: bool | None = None
    triton_width_block: int | None = None
    triton_recompute: bool | None = None
    triton_save_bytes: int = 2 << 30
    triton_scratch_bytes: int = 256 << 20
    triton_interpret_on_cpu: bool = False


_DEFAULT = Settings()  # frozen: safe to share as the ContextVar's default
_CURRENT: ContextVar[Settings] = ContextVar("innergrad_settings", default=_DEFAULT)  # noqa: B039
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_POSITIVE_OR_NONE = ("threads", "triton_block_b", "triton_num_warps", "triton_width_block")
_BOOL_OR_NONE = ("triton_hoist", "triton_recompute")


def current_settings() -> Settings:
    """The settings in force here (this thread or task)."""
    return _CURRENT.get()


def constant_when_traced(fn):
    """`torch.compiler.assume_constant_result(fn)`: torch.compile calls `fn` while it traces and keeps the
    result as a constant of the compiled code (Dynamo cannot trace a ContextVar). Its marker is set
    directly, because the public decorator imports torch._dynamo (and sympy) when `import innergrad`
    runs it."""
    fn._dynamo_marked_constant = True
    return fn


def _check(name: str, value: object) -> None:
    if name not in _FIELDS:
        raise TypeError(f"innergrad.settings: unknown setting {name!r}; valid settings are {sorted(_FIELDS)}")
    where = f"innergrad.settings: {name}"
    if name == "triton_precision":
        if value is not None and value not in TRITON_PRECISIONS:
            raise ValueError(f"{where} must be one of {TRITON_PRECISIONS} or None, got {value!r}")
    elif name in _BOOL_OR_NONE or name in ("cpu_kernel", "triton_interpret_on_cpu"):
        if not isinstance(value, bool) and not (value is None and name in _BOOL_OR_NONE):
            raise TypeError(f"{where} must be True or False{' or None' if name in _BOOL_OR_NONE else ''}, "
                            f"got {value!r}")
    elif not isinstance(value, int) or isinstance(value, bool):
        if not (value is None and name in _POSITIVE_OR_NONE):
            raise TypeError(f"{where} must be an int, got {type(value).__name__} {value!r}")
    elif value < (1 if name in _POSITIVE_OR_NONE else 0):
        raise ValueError(f"{where} must be >= {1 if name in _POSITIVE_OR_NONE else 0}, got {value}")


@contextmanager
def settings(**changes) -> Iterator[Settings]:
    """Change settings (see `Settings`) for the body of a `with` block, in this thread or task only.

    Unknown names raise TypeError listing the valid ones; bad values raise ValueError/TypeError naming
    the range. Nested blocks stack; each restores what it found. Yields the settings in force.
    """
    for name, value in changes.items():
        _check(name, value)
    new = dataclasses.replace(_CURRENT.get(), **changes)
    token = _CURRENT.set(new)
    threads_before = torch.get_num_threads()
    if new.threads is not None and "threads" in changes:
        torch.set_num_threads(new.threads)
    try:
        yield new
    finally:
        _CURRENT.reset(token)
        if "threads" in changes and torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


__all__ = ["Settings", "settings", "current_settings", "constant_when_traced", "TRITON_PRECISIONS"]
