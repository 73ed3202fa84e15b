"""Train a gradient-RNN briefly, export it to ONNX, and run it in ONNX Runtime without innergrad.

    pip install 'innergrad[export]'        # onnx + onnxruntime
    python examples/deploy_onnx.py

The exported graph holds the model's gradient (h_t = dF/dh) in closed form and the time loop as one
ONNX Scan, so any batch size and any sequence length run; the deployment side below needs only
numpy and onnxruntime.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import innergrad as ig


def train(steps: int = 50) -> ig.GradRNN:
    torch.manual_seed(0)
    model = ig.GradRNN(input_size=3, hidden_size=16, hidden_layers=(32, 32))
    x = torch.randn(20, 64, 3)
    target = torch.sin(x.cumsum(0)).sum(-1)  # a target that needs memory of the past
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        y, _ = model(x)
        loss = ((y - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def deploy(path: Path, x: np.ndarray) -> np.ndarray:
    """The deployment side: numpy in, numpy out, no torch, no innergrad."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, h_last = sess.run(["y", "h_last"], {"x": x})  # h0 left out: the model's initial state (zeros)
    return y


def main(steps: int = 50) -> float:
    model = train(steps)
    with tempfile.TemporaryDirectory() as d:
        path = ig.export(model, Path(d) / "gradrnn.onnx")
        x = np.random.default_rng(1).normal(size=(37, 5, 3)).astype(np.float32)  # T and B unlike training
        y = deploy(path, x)
    with torch.no_grad():
        y_ref = model(torch.from_numpy(x))[0].numpy()
    err = float(np.abs(y - y_ref).max() / np.abs(y_ref).max())
    print(f"ONNX Runtime y {y.shape}, largest relative difference to PyTorch: {err:.1e}")
    return err


if __name__ == "__main__":
    main()
