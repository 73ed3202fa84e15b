"""DissipativeHNN: J grad H + grad D against known fields, learning a damped spring, export, spec."""

import pytest
import torch
from torch import nn

import innergrad as ig

F64 = torch.float64
GAMMA = 0.3


class Energy(nn.Module):
    def forward(self, x):
        return 0.5 * (x**2).sum(-1)


class Rayleigh(nn.Module):
    """D = -gamma/2 (c q^2 + p^2): with c=0, grad D = (0, -gamma p), the damped spring's friction."""

    def __init__(self, c=0.0):
        super().__init__()
        self.c = c

    def forward(self, x):
        n = x.shape[-1] // 2
        return -0.5 * GAMMA * (self.c * (x[..., :n] ** 2).sum(-1) + (x[..., n:] ** 2).sum(-1))


@pytest.mark.parametrize("backend", ["auto", "autograd", "func"])
def test_known_hamiltonian_and_dissipation(backend):
    x = torch.randn(5, 2, dtype=F64)
    q, p = x[:, :1], x[:, 1:]
    dhnn = ig.DissipativeHNN(2, H=Energy(), D=Rayleigh(), backend=backend)
    torch.testing.assert_close(dhnn(x), torch.cat([p, -q - GAMMA * p], -1))
    cons, diss = dhnn.fields(x)
    torch.testing.assert_close(cons, torch.cat([p, -q], -1))
    torch.testing.assert_close(diss, torch.cat([torch.zeros_like(q), -GAMMA * p], -1))
    torch.testing.assert_close(dhnn.hamiltonian(x), 0.5 * (x**2).sum(-1))
    torch.testing.assert_close(dhnn.dissipation_function(x), -0.5 * GAMMA * p[:, 0] ** 2)
    # Dissipation on the momenta only drops D's gradient on the positions.
    full = ig.DissipativeHNN(2, H=Energy(), D=Rayleigh(c=1.0), backend=backend)
    mom = ig.DissipativeHNN(2, H=Energy(), D=Rayleigh(c=1.0), dissipation="momenta", backend=backend)
    torch.testing.assert_close(full(x)[:, 0], p[:, 0] - GAMMA * q[:, 0])
    torch.testing.assert_close(mom(x), dhnn(x))


def test_shared_mlp_gradients_match_autograd():
    torch.manual_seed(0)
    d = ig.DissipativeHNN(4, (7, 5), activation="softplus", shared=True).double()
    x = torch.randn(6, 4, dtype=F64, requires_grad=True)
    out = d.HD(x)
    gh, = torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
    gd, = torch.autograd.grad(out[:, 1].sum(), x, create_graph=True)
    cons, diss = d.fields(x)
    torch.testing.assert_close(cons, ig.models.hamiltonian.symplectic_gradient(gh))
    torch.testing.assert_close(diss, gd)
    torch.testing.assert_close(d.hamiltonian(x), out[:, 0])
    torch.testing.assert_close(d.dissipation_function(x), out[:, 1])
    params = list(d.parameters())
    assert len(params) == 6  # one trunk (3 weights, 2 biases) and the second output row, counted once
    got = torch.autograd.grad((d(x) ** 2).sum(), params)
    want = torch.autograd.grad(((ig.models.hamiltonian.symplectic_gradient(gh) + gd) ** 2).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="shared=True .* cannot take your own H or D"):
        ig.DissipativeHNN(2, H=Energy(), shared=True)


@pytest.mark.parametrize("shared", [False, True])
def test_learns_a_damped_spring_and_recovers_the_damping(shared):
    """The field's divergence is D's Laplacian alone (J grad H is divergence-free): it must find -gamma."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 2, generator=g)
    y = torch.stack([x[:, 1], -x[:, 0] - GAMMA * x[:, 1]], -1)
    dhnn = ig.DissipativeHNN(2, (64, 64), shared=shared)
    opt = torch.optim.Adam(dhnn.parameters(), 1e-3)
    for _ in range(300):
        i = torch.randint(0, 768, (256,))
        loss = ((dhnn(x[i]) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = x[768:]
    with torch.no_grad():
        err = ((dhnn(xt) - y[768:]) ** 2).mean() / (y[768:] ** 2).mean()
    assert err < 0.01, float(err)
    div = ig.divergence(lambda z: dhnn.fields(z)[1], xt).detach()
    assert abs(float(div.median()) + GAMMA) < 0.1, float(div.median())
    # A plain HNN cannot represent the friction: its field is divergence-free.
    assert ig.divergence(ig.HamiltonianNet(2, (8,)), xt).abs().max() < 1e-5


def test_rollout_loses_energy():
    dhnn = ig.DissipativeHNN(2, H=Energy(), D=Rayleigh())
    x0 = torch.tensor([[1.0, 0.0]])
    path = dhnn.rollout(x0, torch.linspace(0, 10, 51), substeps=2)
    E = dhnn.hamiltonian(path)[:, 0]
    assert torch.all(E[1:] < E[:-1]) and E[-1] < 0.1 * E[0]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_exports_vector_field(tmp_path, suffix, shared):
    pytest.importorskip("onnxruntime") if suffix == ".onnx" else None
    torch.manual_seed(1)
    model = ig.DissipativeHNN(4, (16, 16), dissipation="momenta", shared=shared).eval()
    x = torch.randn(5, 4)
    ref = model(x).detach()
    path = ig.export(model, tmp_path / f"d{suffix}")
    if suffix == ".pt2":
        got = torch.export.load(str(path)).module()(x)
    else:
        import onnxruntime as ort

        got = torch.from_numpy(ort.InferenceSession(str(path)).run(["dx"], {"x": x.numpy()})[0])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_spec_shapes_and_errors():
    d = ig.DissipativeHNN(4, (8,), activation="softplus", dissipation="momenta")
    assert d.spec() == {"dim": 4, "hidden_layers": [8], "activation": "softplus", "dissipation": "momenta",
                        "shared": False, "mode": "exact", "backend": "auto"}
    again = ig.DissipativeHNN(**d.spec())
    again.load_state_dict(d.state_dict())
    x = torch.randn(3, 5, 4)
    assert d(x).shape == (3, 5, 4) and d(torch.randn(4)).shape == (4,)
    torch.testing.assert_close(again(x), d(x))
    own = ig.DissipativeHNN(2, D=Rayleigh())
    assert own.spec()["D"] is own.D and "H" not in own.spec()
    with pytest.raises(ValueError, match="dim is the phase-space size"):
        ig.DissipativeHNN(3)
    with pytest.raises(ValueError, match="dissipation must be one of"):
        ig.DissipativeHNN(2, dissipation="positions")
