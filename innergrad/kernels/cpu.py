"""Build-on-first-use loader of the C++ CPU kernel of the "fused" backend (`csrc/fused_cpu.cpp`).

The kernel is compiled once per machine and source version (about 15 s on 2 cores, with `ninja`
and a C++ compiler; PyTorch caches the result under `TORCH_EXTENSIONS_DIR`, by default
`~/.cache/torch_extensions`). Where it cannot be built, the fused backend runs its Python loop
(same math and results; measured 1.5-3.4x slower on 2 cores, about 2x at the benchmark's size) and
says so once. `INNERGRAD_CPU_KERNEL=0` turns the kernel off; `INNERGRAD_VERBOSE_BUILD=1` shows the
compiler's output.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from ..core.activations import kernel_codes

SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
#: Activation name -> the kernel's code for it (`enum Act` in the source), from core's table.
ACTIVATIONS = kernel_codes("cpu")

#: A build lock older than this (seconds) is a leftover of a killed build, not a build in progress.
STALE_LOCK_S = 600.0

_lock = threading.Lock()
_state: dict[str, object] = {}


def _capability() -> str:
    cpu = getattr(torch.backends, "cpu", None)
    return cpu.get_cpu_capability() if cpu is not None else "DEFAULT"


def _flags(cap: str) -> list[str]:
    # -fopenmp: at::parallel_for is a header template, parallel only when compiled with OpenMP
    # (without it the blocks of the batch silently ran one after the other: measured).
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    # Loops as wide as the kernels PyTorch itself picked for this CPU (measured 1.6x on the
    # softplus loop from AVX2 to AVX-512).
    if cap in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if cap == "AVX512":
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"]
    return flags


def _tool_path() -> str:
    # `pip install ninja` puts ninja next to the interpreter, which is not on PATH when the venv's
    # python is called directly (as the Makefile does); torch looks for ninja on PATH.
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    return os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def _build():
    from torch.utils.cpp_extension import _get_build_directory, load

    cap = _capability()
    flags = _flags(cap)
    # Source, flags and torch version in the name: a cache shared by machines or versions never
    # mixes builds, and an edited source never loads a stale library.
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([*flags, torch.__version__]).encode()).hexdigest()[:10]
    name = f"innergrad_fused_cpu_{cap.lower()}_{key}"
    verbose = os.environ.get("INNERGRAD_VERBOSE_BUILD") == "1"
    build_dir = Path(_get_build_directory(name, False))
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        # A build killed midway (Ctrl-C, SIGKILL) leaves torch's lock file behind, and every later
        # load would wait for it forever. A build takes seconds; a lock this old is such a leftover.
        lock.unlink(missing_ok=True)
    if not (build_dir / f"{name}.so").exists():
        print("innergrad: building the C++ CPU kernel of the 'fused' backend (once per machine, ~15 s)...",
              file=sys.stderr, flush=True)
    old_path = os.environ.get("PATH")
    os.environ["PATH"] = _tool_path()
    try:
        load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=verbose)
    finally:
        if old_path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old_path
    return torch.ops.innergrad_cpu


def ops():
    """The kernel's `torch.ops` namespace, or None when it is turned off or could not be built."""
    if "ops" in _state:
        return _state["ops"]
    with _lock:
        if "ops" not in _state:
            ops_, why = None, None
            if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
                why = "turned off by INNERGRAD_CPU_KERNEL=0"
            else:
                try:
                    ops_ = _build()
                except Exception as e:  # no compiler, no ninja, a failed build: run the Python loop
                    lines = str(e).strip().splitlines()
                    why = f"{type(e).__name__}: {lines[-1] if lines else ''}"
                    warnings.warn(
                        f"innergrad: the C++ CPU kernel of the 'fused' backend could not be built ({why}). "
                        "The fused backend runs its Python loop instead: same results, about 2x slower. "
                        "The kernel needs a C++ compiler with OpenMP (g++) and ninja (`pip install ninja`); "
                        "INNERGRAD_VERBOSE_BUILD=1 shows the build, INNERGRAD_CPU_KERNEL=0 silences this.",
                        RuntimeWarning, stacklevel=3)
            _state["why"] = why
            _state["ops"] = ops_
    return _state["ops"]


def unavailable_reason() -> str | None:
    """Why `ops()` is None (after it was called), else None."""
    return _state.get("why")  # type: ignore[return-value]


def supports(activation: str, dtype: torch.dtype) -> bool:
    """Whether the kernel covers this activation and dtype (else the Python loop runs)."""
    return activation in ACTIVATIONS and dtype in (torch.float32, torch.float64)
