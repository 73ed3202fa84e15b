"""Property tests over shapes, dtypes, argnums and backends."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import innergrad as ig

BACKENDS = st.sampled_from(["auto", "autograd", "func"])
DTYPE = st.sampled_from([torch.float32, torch.float64])


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 6), d=st.integers(1, 5), dtype=DTYPE, backend=BACKENDS, seed=st.integers(0, 2**16))
def test_quadratic_gradient_any_shape(B, d, dtype, backend, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = (A + A.T).to(dtype)
    x = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype)
    value, grad = ig.value_and_grad(lambda z: 0.5 * ((z @ A) * z).sum(-1), x, backend=backend)
    assert value.shape == (B,) and grad.shape == x.shape and grad.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(grad, x @ A, rtol=tol, atol=tol)


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 5),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    backend=st.sampled_from(["auto", "closed_form", "autograd", "func"]),
)
def test_mlp_gradient_for_any_argnums(B, sizes, data, backend):
    torch.manual_seed(0)
    mlp = ig.MLP(tuple(sizes), (5,), "softplus").double()
    args = [torch.randn(B, s, dtype=torch.float64) for s in sizes]
    nums = tuple(sorted(data.draw(st.sets(st.integers(0, len(sizes) - 1), min_size=1))))
    got = ig.grad(mlp, *args, argnums=nums, backend=backend)
    want = ig.grad(mlp, *args, argnums=nums, backend="autograd")
    assert isinstance(got, tuple) and len(got) == len(nums)
    for a, b, i in zip(got, want, nums):
        assert a.shape == args[i].shape
        torch.testing.assert_close(a, b)
