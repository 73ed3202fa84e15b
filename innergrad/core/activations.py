"""Smooth elementwise activations with their first derivatives.

The closed-form MLP backend needs `s'(a)` as ordinary tensor ops, so that the input-gradient it
builds is a first-order graph whose own backward supplies the second-order terms (through `s''`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as Fn

Tensor = torch.Tensor


class Activation(NamedTuple):
    fn: Callable[[Tensor], Tensor]
    deriv: Callable[[Tensor], Tensor]
    # False where s'' vanishes almost everywhere: second-order training then gets no signal.
    smooth: bool


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
    cdf = 0.5 * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0))))
    return cdf + a * torch.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _elu_d(a: Tensor) -> Tensor:
    return torch.where(a > 0, torch.ones_like(a), torch.exp(torch.clamp(a, max=0.0)))


ACTIVATIONS: dict[str, Activation] = {
    "softplus": Activation(Fn.softplus, torch.sigmoid, True),
    "tanh": Activation(torch.tanh, _tanh_d, True),
    "sigmoid": Activation(torch.sigmoid, _sigmoid_d, True),
    "silu": Activation(Fn.silu, _silu_d, True),
    "gelu": Activation(Fn.gelu, _gelu_d, True),
    "sin": Activation(torch.sin, torch.cos, True),
    "elu": Activation(Fn.elu, _elu_d, True),
    # Kept so users can compare; warns when trained through second order (its s'' is zero a.e.).
    "relu": Activation(Fn.relu, lambda a: (a > 0).to(a.dtype), False),
}


def get_activation(name: str) -> Activation:
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}. "
            "Smooth ones (softplus, tanh, silu, gelu) keep second-order training informative."
        )
    return ACTIVATIONS[key]
