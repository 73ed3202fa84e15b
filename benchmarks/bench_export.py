"""Inference latency of exported models against eager PyTorch and AOTInductor, on CPU (or CUDA for eager/.pt2).

    python benchmarks/bench_export.py                      # GradRNN T=64 B=256, HamiltonianNet B=1 and 4096
    python benchmarks/bench_export.py --T 64 --B 1 --threads 2 --no-aoti

GradRNN: `innergrad train`'s default model (input 4, hidden 32, F = MLP (128, 128) softplus). Ways:
`eager` (`model(x)` under `torch.inference_mode()`, the default backend: the fused C++ kernel where it
builds), `eager closed_form` (the same first-order formula the exports use, step by step),
`torch.export (.pt2)` (torch's scan; `torch.export.load(f).module()(x)`), `AOTInductor (.pt2)` (that
program compiled by AOTInductor, `ig.export(model, f, aoti=True, aoti_batch=B)`: torch 2.13's inductor
cannot lower a scan with a dynamic batch, so a GradRNN compiles at a fixed B with T dynamic) and
`onnxruntime (.onnx)` (ONNX Scan; skipped without the `export` extra).

HamiltonianNet: the paper's network (dim 2, H = MLP (200, 200) tanh), at `--hnn-B` batch sizes; the
same ways, AOTInductor with a dynamic batch (`ig.export(model, "h.pt2", aoti=True)`).

Median and min ms per call over `--reps` calls after warm-up; every way's output is checked against
eager (largest relative difference). Compile times of AOTInductor are printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import innergrad as ig
from innergrad.bench.harness import device_name
from innergrad.bench.measure import time_ms
from innergrad.core.text import fmt


def table(title: str, ways: dict[str, Callable], ref: torch.Tensor, reps: int, warmup: int) -> None:
    print(f"\n{title}\n")
    print("| way | median ms | min ms | vs eager | max rel diff to eager |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, fn in ways.items():
        with torch.inference_mode():
            ts = time_ms(fn, reps, warmup)
            y = fn()
        med = sorted(ts)[len(ts) // 2]
        base = base or med
        err = float((y - ref).abs().max() / ref.abs().max())
        print(f"| {name} | {fmt(med, '.3g')} | {fmt(min(ts), '.3g')} | {fmt(base / med, '.2f')}x | {fmt(err, '.1e')} |")


def onnx_file(model, path: Path) -> Path | None:
    try:
        return ig.export(model, path)
    except ig.InnergradError:  # the `export` extra (onnx) is not installed
        return None


def onnx_session(path: Path | None, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if path is None:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def gradrnn_ways(a, d: Path) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    model = ig.GradRNN(4, 32, (128, 128)).eval()
    x = torch.randn(a.T, a.B, 4)
    with torch.inference_mode():
        ref = model(x)[0]
    ways: dict[str, Callable] = {"eager": lambda: model(x)[0]}
    cf = ig.GradRNN(4, 32, (128, 128), backend="closed_form").eval()
    cf.load_state_dict(model.state_dict())
    ways["eager closed_form"] = lambda: cf(x)[0]
    prog = torch.export.load(str(ig.export(model, d / "m.pt2"))).module()  # x alone: h0 = zeros
    ways["torch.export (.pt2)"] = lambda: prog(x)[0]
    if a.aoti:
        t0 = time.perf_counter()
        compiled = torch._inductor.aoti_load_package(str(ig.export(model, d / "m_aoti.pt2", aoti=True,
                                                                   aoti_batch=a.B)))
        print(f"AOTInductor compile of m_aoti.pt2 (ig.export(aoti=True, aoti_batch={a.B}), two programs: x alone "
              f"and with h0): {time.perf_counter() - t0:.0f} s")
        ways[f"AOTInductor (.pt2, aoti_batch={a.B}, T dynamic)"] = lambda: compiled(x)[0]
    sess = onnx_session(onnx_file(model, d / "m.onnx"), a.threads)
    if sess is not None:
        xn = x.numpy()
        ways["onnxruntime (.onnx)"] = lambda: torch.from_numpy(sess.run(["y"], {"x": xn})[0])
    return ways, ref


def hnn_ways(a, d: Path, B: int, compiled) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    model = ig.HamiltonianNet(2, (200, 200)).eval()
    x = torch.randn(B, 2)
    ref = model(x).detach()
    ways: dict[str, Callable] = {"eager": lambda: model(x)}
    prog = torch.export.load(str(d / "h.pt2")).module()
    ways["torch.export (.pt2)"] = lambda: prog(x)
    if compiled is not None:
        ways["AOTInductor (.pt2, batch dynamic: ig.export(aoti=True))"] = lambda: compiled(x)
    sess = onnx_session(d / "h.onnx", a.threads) if (d / "h.onnx").exists() else None
    if sess is not None:
        xn = x.numpy()
        ways["onnxruntime (.onnx)"] = lambda: torch.from_numpy(sess.run(["dx"], {"x": xn})[0])
    return ways, ref


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--hnn-B", default="1,4096", help="HamiltonianNet batch sizes, comma-separated")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--no-aoti", dest="aoti", action="store_false", help="skip AOTInductor (it compiles C++)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {device_name('cpu')}, {a.threads} thread(s); {a.reps} calls after "
          f"{a.warmup} warm-up calls")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ways, ref = gradrnn_ways(a, d)
        table(f"GradRNN(4, 32, (128, 128)) inference, T={a.T}, B={a.B}, float32", ways, ref, a.reps, a.warmup)

        torch.manual_seed(0)
        hnn = ig.HamiltonianNet(2, (200, 200)).eval()
        ig.export(hnn, d / "h.pt2")
        onnx_file(hnn, d / "h.onnx")
        compiled = None
        if a.aoti:
            t0 = time.perf_counter()
            ig.export(hnn, d / "h_aoti.pt2", aoti=True)
            print(f"\nAOTInductor compile of h_aoti.pt2 (ig.export(aoti=True)): {time.perf_counter() - t0:.0f} s")
            compiled = torch._inductor.aoti_load_package(str(d / "h_aoti.pt2"))
        for B in (int(b) for b in a.hnn_B.split(",")):
            ways, ref = hnn_ways(a, d, B, compiled)
            table(f"HamiltonianNet(2, (200, 200)) vector field, B={B}, float32", ways, ref, a.reps, a.warmup)


if __name__ == "__main__":
    main()
