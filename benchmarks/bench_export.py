"""Inference latency of an exported GradRNN against eager PyTorch, on CPU.

    python benchmarks/bench_export.py                      # T=64, B=256, the CLI's default model
    python benchmarks/bench_export.py --T 64 --B 1 --threads 2

The model is `innergrad train`'s default (input 4, hidden 32, F = MLP (128, 128) softplus). Ways:
`eager` (`model(x)` under `torch.inference_mode()`, the default backend: the fused C++ kernel where
it builds), `eager closed_form` (the same first-order formula the exports use, step by step),
`torch.export` (the .pt2 program, torch's scan, under inference_mode) and `onnxruntime` (the .onnx
file, ONNX Scan; skipped without the `export` extra). Median and min ms per call over `--reps` calls
after warm-up; every way's y is checked against eager.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import innergrad as ig
from innergrad.bench.harness import device_name, time_ms
from innergrad.core.text import fmt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ig.GradRNN(4, 32, (128, 128)).eval()
    x = torch.randn(a.T, a.B, 4)
    with torch.inference_mode():
        y_ref = model(x)[0]

    ways = {}
    ways["eager"] = lambda: model(x)[0]
    cf = ig.GradRNN(4, 32, (128, 128), backend="closed_form").eval()
    cf.load_state_dict(model.state_dict())
    ways["eager closed_form"] = lambda: cf(x)[0]
    with tempfile.TemporaryDirectory() as d:
        prog = torch.export.load(str(ig.export(model, Path(d) / "m.pt2"))).module()  # x alone: h0 = zeros
        ways["torch.export (.pt2)"] = lambda: prog(x)[0]
        try:
            import onnxruntime as ort
        except ImportError:
            sess = None
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = a.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(ig.export(model, Path(d) / "m.onnx")), opts,
                                        providers=["CPUExecutionProvider"])
            xn = x.numpy()
            ways["onnxruntime (.onnx)"] = lambda: torch.from_numpy(sess.run(["y"], {"x": xn})[0])

        print(f"GradRNN(4, 32, (128, 128)) inference, T={a.T}, B={a.B}, float32, {device_name('cpu')}")
        print(f"{a.reps} calls after {a.warmup} warm-up calls\n")
        print("| way | median ms | min ms | vs eager | max rel diff to eager |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for name, fn in ways.items():
            with torch.inference_mode():
                ts = time_ms(fn, a.reps, a.warmup)
                y = fn()
            med = sorted(ts)[len(ts) // 2]
            base = base or med
            err = float((y - y_ref).abs().max() / y_ref.abs().max())
            print(f"| {name} | {fmt(med, '.2f')} | {fmt(min(ts), '.2f')} | {fmt(base / med, '.2f')}x | "
                  f"{fmt(err, '.1e')} |")
        if sess is None:
            print("\nonnxruntime: not installed (pip install 'innergrad[export]')")


if __name__ == "__main__":
    main()
