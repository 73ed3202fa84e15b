"""`innergrad build-kernels`: build the C++ CPU kernel ahead of time and say what the kernels need.

For containers and clusters: run it once in the image (or on a login node with the shared
TORCH_EXTENSIONS_DIR) so that no training job compiles, or waits for another job's compile.
"""

from __future__ import annotations

import os
import subprocess
import time

from . import Formatter


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build-kernels", formatter_class=Formatter,
        help="build the C++ CPU kernel now; report compiler, ninja, OpenMP and Triton status",
        description="Builds (or verifies the cached) C++ CPU kernel of the 'fused' backend, and reports what "
                    "the kernels need: a C++ compiler with OpenMP and ninja for the CPU kernel, triton and a "
                    "CUDA GPU for the Triton kernels. Each missing piece is named with the command that "
                    "installs it. Exit status 0 when the CPU kernel is ready, 1 when it could not be built.")
    p.add_argument("--rebuild", action="store_true", help="compile from a clean build folder, even if a verified "
                                                          "library is cached")
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    p.set_defaults(func=run)


def _version(tool: str, flag: str = "--version") -> str:
    try:
        out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def _row(what: str, text: str) -> None:
    print(f"  {what:<12} {text}")


def run(args) -> int:
    import importlib.metadata
    import importlib.util

    import torch

    from ..kernels import cpu

    fix = cpu._fixes()
    print("C++ CPU kernel (the 'fused' backend on CPU):")
    cxx = cpu.compiler()
    _row("compiler", f"{cxx}  ({_version(cxx)})" if cxx else f"MISSING; fix: {fix['compiler']}")
    if cxx:
        _row("OpenMP", "yes (-fopenmp)" if cpu.openmp_works(cxx) else f"MISSING for {cxx}; fix: {fix['openmp']}")
    nj = cpu.ninja_path()
    _row("ninja", f"{nj}  ({_version(nj)})" if nj else f"MISSING; fix: {fix['ninja']}")
    ok = True
    if os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0":
        _row("kernel", "turned off by INNERGRAD_CPU_KERNEL=0 (the fused backend runs its Python loop)")
    else:
        if args.verbose:
            os.environ["INNERGRAD_VERBOSE_BUILD"] = "1"
        was_cached = cpu.cached() and not args.rebuild
        t0 = time.perf_counter()
        try:
            cpu.build(rebuild=args.rebuild)
        except cpu.BuildError as e:
            ok = False
            _row("kernel", f"NOT BUILT: {e}. The fused backend runs its Python loop (same results, ~2x slower); "
                           "--verbose shows the compiler's output")
        else:
            name = cpu.library_name()
            how = "verified in the cache" if was_cached else f"built in {time.perf_counter() - t0:.1f} s"
            _row("kernel", f"ready ({how}): {cpu.build_dir(name) / (name + '.so')}")
    print("Triton kernels (the 'triton' backend, CUDA GPUs):")
    if importlib.util.find_spec("triton") is None:
        _row("triton", "not installed; fix: pip install 'innergrad[triton]'")
    else:
        _row("triton", f"{importlib.metadata.version('triton')} (compiles each kernel on first use, per shape)")
    _row("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else
         "none: the triton backend runs on CUDA GPUs only (on CPU the fused backend runs)")
    return 0 if ok else 1
