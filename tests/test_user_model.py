"""A model of the user's own, added in this file with one `ig.register_model` call and nothing in the package:
fit(out=) records it, ig.load rebuilds it, ig.export and `innergrad export` write it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import innergrad as ig
from innergrad.export import check_exported


class DampedForce(nn.Module):
    """`x -> -c * dE/dx` with E an `ig.MLP` and c a learned positive scale."""

    def __init__(self, dim: int, width: int = 16):
        super().__init__()
        self.dim, self.width = dim, width
        self.energy = ig.MLP(dim, (width,), "tanh")
        self.log_c = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        _, (g,) = self.energy.value_and_input_grad(x)
        return -self.log_c.exp() * g

    def spec(self) -> dict:
        return {"dim": self.dim, "width": self.width}

    def export_program(self, example=None) -> ig.Program:
        # forward is already first-order (closed-form gradient), so the model is its own program
        return ig.Program(self, (torch.randn(2, self.dim),), ("x",), ("force",))


ig.register_model(DampedForce)


def data(n=32):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    return x, -0.5 * x


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    model = DampedForce(3, 8)
    out = tmp_path_factory.mktemp("user") / "run"
    x, f = data()
    hist = ig.train.fit(model, x, f, steps=30, lr=1e-2, out=out, progress=False)
    assert hist.losses[-1] < hist.losses[0]
    return model, out


def test_fit_records_and_ig_load_rebuilds_the_user_model(run):
    model, out = run
    loaded = ig.load(out)
    assert type(loaded) is DampedForce and (loaded.dim, loaded.width) == (3, 8)
    x = torch.from_numpy(data(5)[0])
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_ig_export_writes_the_user_model(run, tmp_path, suffix):
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    model, _ = run
    path = ig.export(model, tmp_path / f"force{suffix}")
    assert check_exported(model, path) < 1e-5
    x = torch.randn(7, 3)
    if suffix == ".pt2":
        got = torch.export.load(str(path)).module()(x)
    else:
        import onnxruntime

        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(["force"], {"x": x.numpy()})[0])
    assert torch.allclose(got, model(x).detach(), rtol=1e-5, atol=1e-6)


def test_cli_exports_the_user_models_run(run, tmp_path, capsys):
    from innergrad.cli import main

    _, out = run
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "f.pt2")]) == 0
    said = capsys.readouterr().out
    assert "DampedForce dim=3, width=8" in said and "largest relative difference" in said
