"""Build-on-first-use loader of the C++ CPU kernel of the "fused" backend (`csrc/fused_cpu.cpp`).

The kernel is compiled once per machine (about 10 s with `ninja` and a C++ compiler; the result
is cached by PyTorch under `TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`). Where it
cannot be built, the fused backend runs its Python loop (same math, about 2x slower on 2 cores)
and says so once. `INNERGRAD_CPU_KERNEL=0` turns the kernel off.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
#: Activation name -> the kernel's code for it (the activations whose s', s'' follow from s).
ACTIVATIONS = {"softplus": 0, "tanh": 1, "sigmoid": 2}

_lock = threading.Lock()
_state: dict[str, object] = {}


def _flags() -> list[str]:
    # -fopenmp: at::parallel_for is a header template, parallel only when compiled with OpenMP.
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "DEFAULT"
    # Wide loops for the elementwise work, as wide as the kernels PyTorch itself picked for this
    # CPU (measured 1.6x from AVX2 to AVX-512 on the softplus loop).
    if cap in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if cap == "AVX512":
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"]
    return flags


def _build():
    from torch.utils.cpp_extension import load

    # The capability is part of the name: a cache shared by different machines never mixes builds.
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "DEFAULT"
    load(name=f"innergrad_fused_cpu_{cap.lower()}", sources=[str(SOURCE)], extra_cflags=_flags(),
         extra_ldflags=["-fopenmp"], is_python_module=False, verbose=os.environ.get("INNERGRAD_VERBOSE_BUILD") == "1")
    return torch.ops.innergrad_cpu


def ops():
    """The kernel's `torch.ops` namespace, or None when it is turned off or could not be built."""
    if "ops" in _state:
        return _state["ops"]
    with _lock:
        if "ops" not in _state:
            _state["ops"], _state["why"] = None, None
            if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
                _state["why"] = "turned off by INNERGRAD_CPU_KERNEL=0"
            else:
                try:
                    _state["ops"] = _build()
                except Exception as e:  # no compiler, no ninja, a failed build: run the Python loop
                    _state["why"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
                    warnings.warn(
                        "innergrad: the C++ CPU kernel of the 'fused' backend could not be built "
                        f"({_state['why']}); the fused backend runs its Python loop instead (same results, "
                        "about 2x slower). It needs a C++ compiler and `pip install ninja`; "
                        "INNERGRAD_CPU_KERNEL=0 silences this.",
                        RuntimeWarning, stacklevel=3)
    return _state["ops"]


def unavailable_reason() -> str | None:
    """Why `ops()` is None (after it was called), else None."""
    return _state.get("why")  # type: ignore[return-value]


def supports(activation: str, dtype: torch.dtype) -> bool:
    return activation in ACTIVATIONS and dtype in (torch.float32, torch.float64)
