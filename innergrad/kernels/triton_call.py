"""The fused single-call operator on CUDA: Triton kernels for each layer's elementwise work, cuBLAS between.

`innergrad::mlp_value_and_grad` and its backward (`fused_call.py`) get this implementation for CUDA
tensors (`register_kernel("cuda")`), and on CPU tensors inside `ig.settings(triton_interpret_on_cpu=True)`
with `TRITON_INTERPRET=1` (the tests run it there). Any depth: per layer one product and ONE Triton
pass (forward: bias, s, s'; backward: s', s'' from the saved array and the chain's products), where
the closed form and autograd make five to eight elementwise passes per layer and keep their outputs.
The saved arrays follow the CPU operator's convention (each layer's output u for softplus, tanh and
sigmoid, else its pre-activation a; the chain products q), so the math is `fused.py`'s with T = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import fused as fz
from . import fused_call as fc
from .triton_rnn import ACTIVATIONS, _interpreting, _kernels

Tensor = torch.Tensor

_BLOCK = 1024


def supports(activation: str, dtype: torch.dtype) -> bool:
    return activation in ACTIVATIONS and dtype in (torch.float32, torch.float64)


def _grid(n: int) -> tuple[int]:
    return (max(1, -(-n // _BLOCK)),)


def _flags(activation: str) -> dict:
    k = _kernels()
    return {"ACT": k.ACT_CODES[activation], "FROM_U": activation in fz.FROM_OUTPUT, "BLOCK": _BLOCK}


def forward(z: Tensor, params: Sequence[Tensor], activation: str, save: bool):
    """`(y (B,), dF/dz (B, din), S, Q)` as `fused_call.mlp_value_and_grad`."""
    k = _kernels()
    spec = fc._spec(activation, len(params))
    L, fl = spec.n_layers, _flags(activation)
    W = [params[2 * i].contiguous() for i in range(L)]
    b = [params[2 * i + 1].contiguous() for i in range(L)]
    wo = params[2 * L].reshape(-1).contiguous()
    u, S, D = z.contiguous(), [], []
    for i in range(L):
        a = torch.mm(u, W[i].t())
        s, d = torch.empty_like(a), torch.empty_like(a)
        nxt = s if fl["FROM_U"] else torch.empty_like(a)
        k.call_act_kernel[_grid(a.numel())](a, b[i], s, nxt, d, a.numel(), a.shape[1], **fl)
        S.append(s)
        D.append(d)
        u = nxt
    y = torch.mv(u, wo)
    if spec.has_out_bias:
        y = y + params[2 * L + 1]
    g = D[-1] * wo
    Q: list[Tensor] = []
    for i in range(L - 2, -1, -1):
        q = torch.mm(g, W[i + 1])
        Q.insert(0, q)
        g = D[i] * q
    gz = torch.mm(g, W[0])
    return y, gz, (S if save else []), (Q if save else [])


def backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params):
    """`(dL/dz, [dL/dparams])` as `fused_call.mlp_value_and_grad_backward`."""
    k = _kernels()
    spec = fc._spec(activation, len(params))
    L, fl = spec.n_layers, _flags(activation)
    B = z.shape[0]
    W = [params[2 * i].contiguous() for i in range(L)]
    wo = params[2 * L].reshape(-1).contiguous()
    S = [s.contiguous() for s in S]
    Q = [q.contiguous() for q in Q]
    yb = z.new_zeros(B) if gy is None else gy.contiguous()
    gzb = z.new_zeros(z.shape) if ggz is None else ggz.contiguous()
    gb = torch.mm(gzb, W[0].t())
    QB, AA = [], []
    for i in range(L - 1):
        qb, aa = torch.empty_like(gb), torch.empty_like(gb)
        k.call_chain_kernel[_grid(gb.numel())](gb, S[i], Q[i], qb, aa, gb.numel(), **fl)
        QB.append(qb)
        AA.append(aa)
        gb = torch.mm(qb, W[i + 1].t())
    qbL, ab, gL = torch.empty_like(gb), torch.empty_like(gb), torch.empty_like(gb)
    k.call_top_kernel[_grid(gb.numel())](gb, S[-1], yb, wo, qbL, ab, gL, gb.numel(), gb.shape[1], **fl)
    AB, G = [ab], [gL]
    for i in range(L - 2, -1, -1):
        t = torch.mm(AB[0], W[i + 1])
        abi, gi = torch.empty_like(t), torch.empty_like(t)
        k.call_mid_kernel[_grid(t.numel())](t, S[i], AA[i], Q[i], abi, gi, t.numel(), **fl)
        AB.insert(0, abi)
        G.insert(0, gi)
    dz = torch.mm(AB[0], W[0]) if need_z else z.new_empty(0)
    if not need_params:
        return dz, []
    U = S if fl["FROM_U"] else [spec.fn(s) for s in S]
    grads = []
    for i in range(L):
        below, qb_below = (z.contiguous(), gzb) if i == 0 else (U[i - 1], QB[i - 1])
        grads.append(torch.addmm(torch.mm(AB[i].t(), below), G[i].t(), qb_below))
        grads.append(AB[i].sum(0))
    grads.append((qbL.sum(0) + torch.mv(U[-1].t(), yb)).unsqueeze(0))
    if spec.has_out_bias:
        grads.append(yb.sum().reshape(1))
    return dz, grads


def _cuda_forward(z, params, activation, save):
    fc.OP_CALLS["forward"] += 1
    fc._check(z, params, activation)
    if not supports(activation, z.dtype):  # (the backend sends only these; a direct call still works)
        return fc._loop_forward(z, params, activation, save)
    return forward(z, params, activation, save)


def _cuda_backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params):
    fc.OP_CALLS["backward"] += 1
    fc._check(z, params, activation)
    if not supports(activation, z.dtype):
        return fc._loop_backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params)
    return backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params)


fc.mlp_value_and_grad.register_kernel("cuda")(_cuda_forward)
fc.mlp_value_and_grad_backward.register_kernel("cuda")(_cuda_backward)


def interpreting() -> bool:
    """Whether CPU calls of the operator run these kernels through Triton's interpreter (tests)."""
    from ..core.settings import current_settings

    return current_settings().triton_interpret_on_cpu and _interpreting()


__all__ = ["forward", "backward", "supports", "interpreting"]
