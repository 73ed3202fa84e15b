"""Sizes are checked in Python before any backend or kernel runs (issue 13: no crash, no silent numbers).

F declares the sizes it takes (`ig.MLP.in_sizes`); GradRNN, `ig.value_and_grad` and every backend's
whole-sequence path compare x and h against them and raise ShapeError (a ValueError) naming both.
The crash cases run in a subprocess, so that a segmentation fault fails the test instead of the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import innergrad as ig
from innergrad.core.backends import BACKENDS
from innergrad.kernels import cpu as cpu_kernel

SEQUENCE_BACKENDS = ["auto", "fused", "closed_form", "autograd", "func"]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_the_reported_crash_is_a_clear_error():
    # Used to end in a segmentation fault: the C++ kernel read F's weights for h of 4096 with h0 of 1.
    out = _run("""
        import torch, innergrad as ig
        try:
            ig.GradRNN(3, 1, F=ig.MLP((3, 4096), hidden_layers=(64,)))(torch.randn(4, 512, 3))
        except ig.ShapeError as e:
            print("refused:", e)
        rnn = ig.GradRNN(3, 1, hidden_layers=(64,))
        rnn.cell.F = ig.MLP((3, 4096), hidden_layers=(64,))  # replaced after construction
        try:
            rnn(torch.randn(4, 512, 3))
        except ig.ShapeError as e:
            print("refused:", e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") for line in lines), out.stdout
    assert "(3, 4096)" in lines[0] and "(3, 1)" in lines[0]
    assert "h of size 4096" in lines[1] and "(512, 1)" in lines[1]


def test_smaller_h_than_f_takes_is_refused_at_construction():
    # GradRNN(3, 8, F=MLP((3, 16))) used to return numbers (h_t of 16 from h of 8).
    with pytest.raises(ig.ShapeError, match=r"F.in_sizes=\(3, 16\) must be \(input_size, hidden_size\) = \(3, 8\)"):
        ig.GradRNN(3, 8, F=ig.MLP((3, 16), hidden_layers=(8,)))
    assert issubclass(ig.ShapeError, ValueError)


@pytest.mark.parametrize("backend", SEQUENCE_BACKENDS)
@pytest.mark.parametrize("wrong", ["x", "h"])
def test_gradrnn_checks_x_and_h_against_f_for_every_backend(backend, wrong):
    torch.manual_seed(0)
    rnn = ig.GradRNN(3, 5, hidden_layers=(8,), backend=backend).double()
    x, h0 = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    rnn(x, h0)  # the right sizes run
    sizes = (4, 5) if wrong == "x" else (3, 7)
    rnn.cell.F = ig.MLP(sizes, hidden_layers=(8,)).double()
    msg = rf"F takes {wrong} of size {sizes[wrong == 'h']}.*F.in_sizes=\({sizes[0]}, {sizes[1]}\)"
    with pytest.raises(ig.ShapeError, match=msg):
        rnn(x, h0)


@pytest.mark.parametrize("backend", ["fused", "closed_form", "autograd", "func"])
def test_value_and_grad_checks_sizes_before_any_backend(backend):
    F = ig.MLP((3, 5), hidden_layers=(8,))
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(ig.ShapeError, match=r"value_and_grad: F takes input 1 of size 5 .* has shape \(2, 4\)"):
        ig.value_and_grad(F, x, h, argnums=1, backend=backend)


def test_whole_sequence_paths_check_sizes_when_called_directly():
    F = ig.MLP((3, 5), hidden_layers=(8,))
    x, h0 = torch.randn(4, 2, 3), torch.randn(2, 6)
    with pytest.raises(ig.ShapeError, match="fused backend: F takes h of size 5"):
        BACKENDS["fused"].run_sequence(F, x, h0, None, "exact")


@pytest.mark.skipif(os.environ.get("INNERGRAD_CPU_KERNEL", "1") == "0", reason="the C++ kernel is turned off")
def test_the_cpp_kernel_checks_what_it_relies_on():
    if cpu_kernel.ops() is None:
        pytest.skip(f"the C++ kernel is not built here: {cpu_kernel.unavailable_reason()}")
    # Called directly with h0 narrower than W_1's h columns: an error from the kernel, not a read past h0.
    out = _run("""
        import torch
        from innergrad.kernels import cpu as cpu_kernel
        ops = cpu_kernel.ops()
        T, B, dx, dh, w = 3, 2, 3, 4096, 8
        x, h0 = torch.randn(T, B, dx), torch.randn(B, 1)
        W, b, wo = [torch.randn(w, dx + dh)], [torch.randn(w)], torch.randn(w)
        none = x.new_empty(0)
        for args in [
            ([none], [], torch.empty(T, B, 1), torch.empty(T, B), x, h0, none.bool(), W, b, wo, none, 0, 1),
            ([none], [], torch.empty(T, B, dh), torch.empty(T, B), x, torch.randn(B, dh), none.bool(), W, b,
             torch.randn(w + 1), none, 0, 1),
            ([none], [], torch.empty(T, B, dh), torch.empty(T, B), x, torch.randn(B, dh), none.bool(), W, b, wo,
             none, 7, 1),
        ]:
            try:
                ops.fused_forward(*args)
                print("ran")
            except RuntimeError as e:
                print("refused:", str(e).splitlines()[0])
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["refused"] * 3, out.stdout
    assert "h0" in lines[0] or "W_1" in lines[0]
    assert "wo" in lines[1] and "unknown activation code 7" in lines[2]


def test_the_triton_operators_check_what_the_kernels_index_by():
    pytest.importorskip("triton")
    import innergrad.kernels.triton_rnn  # noqa: F401  (registers the operators)

    T, B, dx, dh, w = 3, 2, 3, 5, 16
    x, h0 = torch.randn(T, B, dx), torch.randn(B, dh)
    W1, b1, W2, b2, w3 = torch.randn(w, dx + dh), torch.randn(w), torch.randn(w, w), torch.randn(w), torch.randn(w)
    launch = [16, 4, 16, 0, 0, 1 << 20]
    op = torch.ops.innergrad.triton_rnn_forward
    with pytest.raises(ValueError, match=r"W1 must have shape \(16, 9\) .* got \(16, 8\)"):
        op(x, torch.randn(B, dh + 1), None, W1, b1, W2, b2, w3, None, "softplus", "ieee", launch, False)
    with pytest.raises(ValueError, match=r"w3 must have shape \(16,\)"):
        op(x, h0, None, W1, b1, W2, b2, torch.randn(w + 1), None, "softplus", "ieee", launch, False)
    with pytest.raises(ValueError, match="valid must be a contiguous uint8"):
        op(x, h0, torch.ones(T, B + 1, dtype=torch.uint8), W1, b1, W2, b2, w3, None, "softplus", "ieee", launch, False)
    with pytest.raises(ValueError, match="act must be one of"):
        op(x, h0, None, W1, b1, W2, b2, w3, None, "gelu", "ieee", launch, False)
    back = torch.ops.innergrad.triton_rnn_backward
    with pytest.raises(ValueError, match=r"dHS must have shape \(3, 2, 5\)"):
        back(x, h0, None, W1, b1, W2, b2, w3, torch.randn(T, B, dh), x.new_empty(0), torch.randn(T, B),
             torch.randn(T, B, dh + 1), "softplus", "ieee", launch, True)
