"""One activation table (core/activations.py): every kernel's codes come from it and agree with it.

The C++ kernel and the Triton kernels are separate sources that branch on an integer activation
code; these tests read those sources and hold their branches to the table, so that a code cannot
mean one activation in Python and another in a kernel.
"""

import re
from pathlib import Path

import pytest
import torch

from innergrad.core.activations import ACTIVATIONS, KERNELS, get_activation, kernel_codes
from innergrad.kernels import cpu as cpu_kernel
from innergrad.kernels import fused as fz

KERNEL_DIR = Path(cpu_kernel.__file__).parent


def test_codes_are_one_numbering_across_kernels():
    codes = [a.code for a in ACTIVATIONS.values() if a.code is not None]
    assert len(codes) == len(set(codes)), "two activations share a kernel code"
    for name, a in ACTIVATIONS.items():
        assert set(a.kernels) <= set(KERNELS), name
        assert (a.code is None) == (not a.kernels), f"{name}: a code without a kernel, or a kernel without a code"
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_codes("opencl")


def test_cpp_enum_matches_the_table():
    src = (KERNEL_DIR / "csrc" / "fused_cpu.cpp").read_text()
    enum = re.search(r"enum Act : int64_t \{([^}]*)\}", src)
    assert enum, "fused_cpu.cpp no longer declares `enum Act`"
    cpp = {name.lower(): int(v) for name, v in re.findall(r"(\w+)\s*=\s*(\d+)", enum.group(1))}
    assert cpp == kernel_codes("cpu") == cpu_kernel.ACTIVATIONS
    # The kernel refuses codes outside its enum (a code it does not know must not run as GELU).
    lo, hi = min(cpp.values()), max(cpp.values())
    assert sorted(cpp.values()) == list(range(lo, hi + 1))
    names = {v: k.upper() for k, v in cpp.items()}
    assert f"act >= {names[lo]} && act <= {names[hi]}" in src


def test_cpp_saved_layout_matches_the_python_loop():
    # Either backward follows either forward: the C++ kernel saves the pre-activation a exactly for
    # the activations whose (s', s'') the Python loop cannot take from the output u.
    src = (KERNEL_DIR / "csrc" / "fused_cpu.cpp").read_text()
    body = re.search(r"inline bool keeps_a\(int64_t act\) \{ return ([^;]*);", src).group(1)
    keeps_a = {n.lower() for n in re.findall(r"act == (\w+)", body)}
    assert keeps_a == set(kernel_codes("cpu")) - set(fz.FROM_OUTPUT)


def test_triton_branches_match_the_table():
    pytest.importorskip("triton")
    from innergrad.kernels import triton_rnn

    src = (KERNEL_DIR / "triton_kernels.py").read_text()
    act3 = src[src.index("def _act3"):src.index("@triton.jit", src.index("def _act3"))]
    branches = {n: int(c) for c, n in re.findall(r"if ACT == (\d+):\s*# (\w+)", act3)}
    last = re.search(r"else:\s*# (\w+)\s*\n\s*tl\.static_assert\(ACT == (\d+)", act3)
    assert last, "_act3's last branch must assert its code"
    branches[last.group(1)] = int(last.group(2))
    assert branches == kernel_codes("triton")
    assert triton_rnn.ACTIVATIONS == tuple(kernel_codes("triton"))
    assert triton_rnn._kernels().ACT_CODES == kernel_codes("triton")


def test_fused_second_derivatives_are_the_table_s():
    assert set(fz.SECOND_DERIVATIVES) == set(ACTIVATIONS)
    for name, act in ACTIVATIONS.items():
        assert fz.SECOND_DERIVATIVES[name] is act.d12


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_match_autograd_in_float64(name):
    act = get_activation(name)
    a = torch.linspace(-4, 4, 101, dtype=torch.float64)
    a = a[a.abs() > 1e-3].requires_grad_()  # relu's kink at 0 has no derivative
    (d,) = torch.autograd.grad(act.fn(a).sum(), a, create_graph=True)
    (e,) = torch.autograd.grad(d.sum(), a)
    d1, d2 = act.d12(a.detach())
    torch.testing.assert_close(act.deriv(a.detach()), d.detach())
    torch.testing.assert_close(d1, d.detach())
    torch.testing.assert_close(d2, e)
