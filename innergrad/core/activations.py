"""Smooth elementwise activations: ONE table that every backend and kernel reads.

Each entry holds the activation `s`, its first derivative `s'` as ordinary tensor ops (the
closed-form MLP backend builds the input-gradient from it, so that its own backward supplies the
second-order terms), `(s', s'')` in one pass (the fused backend's hand-written backward), and the
code the compiled kernels know it by. `code` is one numbering shared by the C++ CPU kernel
(`kernels/csrc/fused_cpu.cpp`, `enum Act`) and the Triton kernels (`ACT == code` in
`kernels/triton_kernels.py`); `kernels` says which of them implement it. The kernels' code tables
are derived from this one, and a test holds the C++ enum and the Triton branches to it.

To add an activation: one row here (the Python paths then support it); to run it in a kernel, also
a branch in that kernel's source under the next free `code`, and its name in `kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as Fn

Tensor = torch.Tensor

#: The compiled kernels an activation can name in `Activation.kernels`.
KERNELS = ("cpu", "triton")


class Activation(NamedTuple):
    fn: Callable[[Tensor], Tensor]  # s
    deriv: Callable[[Tensor], Tensor]  # s'
    d12: Callable[[Tensor], tuple[Tensor, Tensor]]  # a -> (s'(a), s''(a)), sharing the expensive part
    # False where s'' vanishes almost everywhere: second-order training then gets no signal.
    smooth: bool
    code: int | None = None  # the kernels' activation code; None: no kernel implements it
    kernels: tuple[str, ...] = ()  # which of KERNELS implement it under `code`


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _tanh_d(a: Tensor) -> Tensor:
    t = torch.tanh(a)
    return 1.0 - t * t


def _sigmoid_d(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 - s)


def _silu_d(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


def _gelu_d(a: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(a * _INV_SQRT_2))
    return cdf + a * torch.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _elu_d(a: Tensor) -> Tensor:
    return torch.where(a > 0, torch.ones_like(a), torch.exp(torch.clamp(a, max=0.0)))


def _relu_d(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


def _softplus_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(a)
    return s, s * (1.0 - s)


def _tanh_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.tanh(a)
    d = 1.0 - t * t
    return d, -2.0 * t * d


def _sigmoid_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(a)
    d = s * (1.0 - s)
    return d, d * (1.0 - 2.0 * s)


def _silu_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(a)
    d = s * (1.0 + a * (1.0 - s))
    return d, s * (1.0 - s) * (2.0 + a * (1.0 - 2.0 * s))


def _gelu_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    pdf = torch.exp(-0.5 * a * a) * _INV_SQRT_2PI
    cdf = 0.5 * (1.0 + torch.erf(a * _INV_SQRT_2))
    return cdf + a * pdf, pdf * (2.0 - a * a)


def _sin_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cos(a), -torch.sin(a)


def _elu_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    e = torch.exp(torch.clamp(a, max=0.0))
    pos = a > 0
    return torch.where(pos, torch.ones_like(a), e), torch.where(pos, torch.zeros_like(a), e)


def _relu_d12(a: Tensor) -> tuple[Tensor, Tensor]:
    # s'' = 0 almost everywhere: exactly what autograd gives (and why relu warns when trained through it).
    return _relu_d(a), torch.zeros_like(a)


ACTIVATIONS: dict[str, Activation] = {
    "softplus": Activation(Fn.softplus, torch.sigmoid, _softplus_d12, True, 0, ("cpu", "triton")),
    "tanh": Activation(torch.tanh, _tanh_d, _tanh_d12, True, 1, ("cpu", "triton")),
    "sigmoid": Activation(torch.sigmoid, _sigmoid_d, _sigmoid_d12, True, 2, ("cpu", "triton")),
    "silu": Activation(Fn.silu, _silu_d, _silu_d12, True, 3, ("cpu", "triton")),
    "gelu": Activation(Fn.gelu, _gelu_d, _gelu_d12, True, 4, ("cpu",)),
    "sin": Activation(torch.sin, torch.cos, _sin_d12, True, 5, ("triton",)),
    "elu": Activation(Fn.elu, _elu_d, _elu_d12, True),
    # Kept so users can compare; warns when trained through second order (its s'' is zero a.e.).
    "relu": Activation(Fn.relu, _relu_d, _relu_d12, False),
}


def kernel_codes(kernel: str) -> dict[str, int]:
    """`{activation name: code}` for the activations `kernel` ("cpu" or "triton") implements."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    return {name: a.code for name, a in ACTIVATIONS.items() if kernel in a.kernels and a.code is not None}


def get_activation(name: str) -> Activation:
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}. "
            "Smooth ones (softplus, tanh, silu, gelu) keep second-order training informative."
        )
    return ACTIVATIONS[key]
