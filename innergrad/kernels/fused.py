"""Whole-sequence path for the gradient-RNN whose F is an `ig.MLP`: the "fused" backend.

The step-by-step GradRNN builds, for every time step, a graph of the closed-form input-gradient
and lets autograd differentiate it: T small graphs, a few dozen small kernels each, and all their
intermediates kept alive. This module runs the whole sequence as ONE `torch.autograd.Function`:

- forward: all T steps under no_grad, keeping per step only each layer's output `u_k` (or its
  pre-activation `a_k` for activations whose derivatives need it) and the gradient-chain products
  `q_k`: less than half the memory of the autograd graph;
- backward: time in reverse, carrying `dL/dh`, with the second-order terms in closed form (through
  `s''`) and the weight gradients accumulated step by step while the step's factors are still in
  cache (measured faster on CPU than batching them over time chunks);
- on CPU, blocks of the batch run on separate cores (the recurrence never mixes samples).

On CPU both directions run in a C++ kernel (`csrc/fused_cpu.cpp`, built on first use by
`cpu_kernel.py`) for softplus, tanh, sigmoid, SiLU and GELU in float32/float64: BLAS calls on raw
blocks and fused elementwise loops, without the GIL. It is about 2x faster than the Python loop
below on 2 cores at T=64, B=256, w=128 (1.5x at w=512, 3.4x at w=64; measured), because that
loop's per-operation overhead holds the GIL and its worker threads serialise on it. The Python
loop is the readable reference of the math, the path for other activations and dtypes, and the
fallback where the kernel cannot be built; the tests hold the two to each other. On CUDA this
module's loop runs as is (the "triton" backend has the same math as kernels), and `ig.compile`
replays it as CUDA graphs.

Math, for `F(x, h) = w_o . u_L + b_o`, `u_k = s(a_k)`, `a_k = W_k u_{k-1} + b_k`, `u_0 = [x, h]`
(rows are samples; `W_1 = [W_1x | W_1h]`):

    forward chain   g_L = s'(a_L) * w_o,  q_k = g_{k+1} W_{k+1},  g_k = s'(a_k) * q_k,
                    h_new = g_1 W_1h,     y = F(x, h)

    backward step   (given hb = dL/dh_new and yb = dL/dy)
                    gb_1 = hb W_1h^T
                    for k = 1..L:  qb_k = gb_k * s'(a_k);   aA_k = gb_k * q_k * s''(a_k)   (q_L = w_o)
                                   gb_{k+1} = qb_k W_{k+1}^T
                    ab_L = aA_L + yb w_o * s'(a_L)
                    ab_k = aA_k + (ab_{k+1} W_{k+1}) * s'(a_k)          (k = L-1..1)
                    dL/d[x, h] = ab_1 W_1

    weights         dW_1 = sum ab_1^T [x, h] + [0 | sum g_1^T hb]
                    dW_k = sum ab_k^T u_{k-1} + sum g_k^T qb_{k-1}      (k >= 2)
                    dw_o = sum yb u_L + sum qb_L,   db_k = sum ab_k,   db_o = sum yb

`forward_rows` (the forward recurrence) and `backward_step` (one reverse step with its weight
gradients) hold this math, each for a block of samples; `sequence_forward` / `sequence_backward`
split the batch and gather the results.

Masks: a step marked invalid holds h and outputs y = 0, so its rows get `yb = 0`, `hb = 0` in
the step, and `dL/dh` passes through it unchanged.
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as Fn

from ..core.activations import ACTIVATIONS, get_activation
from ..core.backends import Backend, ClosedFormBackend, call_context, functorch_active, register_backend
from ..core.checks import check_input_sizes
from ..core.mlp import MLP
from ..core.settings import current_settings
from . import cpu as cpu_kernel

Tensor = torch.Tensor

_LOG2E = 1.0 / math.log(2.0)


#: Activation name (as in `ig.MLP(activation=...)`) -> `a -> (s'(a), s''(a))`, from core's table.
SECOND_DERIVATIVES: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    name: act.d12 for name, act in ACTIVATIONS.items()
}


# Activations whose s' and s'' follow cheaply from the output u = s(a): the forward then keeps u
# (which the backward needs anyway, for the weight gradients) instead of a, and the backward
# evaluates no transcendental function it could avoid. Entry: (write s(a) into out, u -> (s', s'')).

def _softplus_out(a: Tensor, out: Tensor) -> Tensor:
    return out.copy_(Fn.softplus(a))


if hasattr(torch._C._nn, "softplus"):  # the out= form of Fn.softplus(a) (beta 1, threshold 20): no copy

    def _softplus_out(a: Tensor, out: Tensor) -> Tensor:  # noqa: F811
        return torch._C._nn.softplus(a, 1.0, 20.0, out=out)


def _softplus_from_u(u: Tensor) -> tuple[Tensor, Tensor]:
    # exp(-u) = 1 - sigmoid(a): s' = 1 - exp(-u), s'' = s' exp(-u); absolute error ~ machine epsilon.
    # (exp2 runs about 3x faster than exp on CPU; the scaling costs a few ulps.)
    ex = torch.exp2(u * -_LOG2E)
    d = torch.rsub(ex, 1.0)
    return d, d * ex


def _tanh_from_u(u: Tensor) -> tuple[Tensor, Tensor]:
    d = torch.addcmul(torch.ones_like(u), u, u, value=-1.0)
    return d, (-2.0 * u).mul_(d)


def _sigmoid_from_u(u: Tensor) -> tuple[Tensor, Tensor]:
    d = torch.addcmul(u, u, u, value=-1.0)
    return d, (1.0 - 2.0 * u).mul_(d)


FROM_OUTPUT: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], tuple[Tensor, Tensor]]]] = {
    "softplus": (_softplus_out, _softplus_from_u),
    "tanh": (lambda a, out: torch.tanh(a, out=out), _tanh_from_u),
    "sigmoid": (lambda a, out: torch.sigmoid(a, out=out), _sigmoid_from_u),
}


class Spec(NamedTuple):
    """What the fused path needs to know about F besides its parameters."""

    fn: Callable[[Tensor], Tensor]  # s
    deriv: Callable[[Tensor], Tensor]  # s'
    d12: Callable[[Tensor], tuple[Tensor, Tensor]]  # a -> (s', s'')
    fn_out: Callable[[Tensor, Tensor], Tensor] | None  # (a, out) -> s(a) in out; None: keep a
    from_u: Callable[[Tensor], tuple[Tensor, Tensor]] | None  # u -> (s', s'')
    dx: int  # input size (the first dx columns of W_1 read x, the rest read h)
    n_layers: int  # L >= 1 hidden layers
    has_out_bias: bool
    activation: str  # its name in ig.MLP (the C++ CPU kernel knows some of them)


def fused_unsupported(f) -> str | None:
    """Why the fused path cannot run this F, or None when it can."""
    if not isinstance(f, MLP):
        return f"F is a {type(f).__name__}, the fused path needs an ig.MLP"
    if f.activation_name not in SECOND_DERIVATIVES:
        return f"activation {f.activation_name!r} has no known second derivative"
    if len(f.layers) == 0:
        return "F has no hidden layer (its gradient is a constant)"
    if any(lin.bias is None for lin in f.layers):
        return "F has a hidden layer without bias"
    return None


def spec_of(f: MLP, dx: int) -> Spec:
    return spec_for(f.activation_name, dx, len(mlp_params(f)))


@functools.cache
def spec_for(activation: str, dx: int, n_params: int) -> Spec:
    """The Spec of an MLP from what the operators receive: its activation's name, the input size and
    the length of `mlp_params` (2L + 2 with an output bias, 2L + 1 without)."""
    act = get_activation(activation)
    fn_out, from_u = FROM_OUTPUT.get(activation, (None, None))
    return Spec(act.fn, act.deriv, SECOND_DERIVATIVES[activation], fn_out, from_u, dx, (n_params - 1) // 2,
                n_params % 2 == 0, activation)


def mlp_params(f: MLP) -> list[Tensor]:
    """`[W_1, b_1, ..., W_L, b_L, w_o, b_o]` (b_o left out when F has no output bias)."""
    ps: list[Tensor] = []
    for lin in f.layers:
        ps += [lin.weight, lin.bias]
    ps.append(f.out.weight)
    if f.out.bias is not None:
        ps.append(f.out.bias)
    return ps


class Weights(NamedTuple):
    """The parameters in the layouts the loops want (contiguous copies made once per call)."""

    W: list[Tensor]  # W_k (n_k, n_{k-1})
    WT: list[Tensor]  # W_k^T, contiguous
    b: list[Tensor]
    W1x: Tensor  # (n_1, dx) view
    W1h: Tensor  # (n_1, dh) contiguous
    W1hT: Tensor  # (dh, n_1) contiguous
    wo: Tensor  # (n_L,)
    bo: Tensor | None


def weights(spec: Spec, params: Sequence[Tensor]) -> Weights:
    L, dx = spec.n_layers, spec.dx
    W = [params[2 * k] for k in range(L)]
    b = [params[2 * k + 1] for k in range(L)]
    W1h = W[0][:, dx:].contiguous()
    return Weights(W, [w.t().contiguous() for w in W], b, W[0][:, :dx], W1h, W1h.t().contiguous(),
                   params[2 * L].reshape(-1), params[2 * L + 1] if spec.has_out_bias else None)


# --- forward ----------------------------------------------------------------------------------

def sequence_forward(
    spec: Spec, x: Tensor, h0: Tensor, valid: Tensor | None, params: Sequence[Tensor], save: bool
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """All T steps without autograd. Returns `(y (T,B), hs (T,B,dh), S, Q)`.

    With `save`: `S[k]` (T, B, n_{k+1}) holds layer k+1's output `u` when `spec.fn_out` is set
    (softplus, tanh, sigmoid), else its pre-activation `a`; `Q[k]` (T, B, n_{k+1}) the chain
    products `q_{k+1}` (k < L-1). Without `save`, S and Q are empty lists.
    """
    T, B, dx = x.shape
    kernel = _cpu_kernel(spec, x)
    if kernel is not None:
        return _kernel_forward(kernel, spec, x, h0, valid, params, save)
    w = weights(spec, params)
    L = spec.n_layers
    widths = [Wk.shape[0] for Wk in w.W]
    # Layer 1's x-part for all steps at once: one big matmul instead of T small ones.
    S = [torch.addmm(w.b[0], x.reshape(T * B, dx), w.W1x.t()).view(T, B, widths[0])]
    S += [x.new_empty(T, B, n) if save or k == L - 1 else None for k, n in enumerate(widths[1:], 1)]
    Q = [x.new_empty(T, B, n) if save else None for n in widths[:-1]]
    hs = x.new_empty(T, B, w.W1h.shape[1])

    def rows(r: slice) -> None:
        forward_rows(spec, w, h0[r], None if valid is None else valid[:, r],
                     [None if s is None else s[:, r] for s in S], [None if q is None else q[:, r] for q in Q],
                     hs[:, r])

    run_sharded(rows, B, x.device)
    uL = S[-1] if spec.fn_out is not None else spec.fn(S[-1])
    y = torch.mv(uL.view(T * B, -1), w.wo).view(T, B)
    if w.bo is not None:
        y = y + w.bo
    if valid is not None:
        y = y * valid
    return y, hs, (S if save else []), (Q if save else [])


class Workspace:
    """Reusable CPU buffers for the activations the fused op saves for its backward.

    A training step saves tens of MB (T x B x width per layer) and frees them after the backward.
    A fresh allocation of that size gets fresh pages from the OS, each 4 KiB a page fault and a
    zeroed page: measured 2-3 ms of a 33 ms step at T=64, B=256. A buffer is handed out as a view
    and taken back only when no tensor shares its storage any more (its graph was freed or never
    kept), so a buffer in use is never handed out twice; `clear()` returns the memory.
    """

    MIN_BYTES = 1 << 20  # smaller allocations come from the allocator's arenas without page faults

    def __init__(self, max_bytes: int | None = None):
        self._max_bytes = max_bytes  # None: the scoped setting `workspace_bytes`
        self._bufs: list[Tensor] = []
        self._lock = threading.Lock()
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)  # private API: no reuse without it

    @property
    def max_bytes(self) -> int:
        return current_settings().workspace_bytes if self._max_bytes is None else self._max_bytes

    def _free(self, buf: Tensor) -> bool:
        # Held by `buf` and the temporary storage object only: no view or saved tensor uses it.
        return self._use_count(buf.untyped_storage()._cdata) <= 2

    def empty(self, shape: Sequence[int], like: Tensor) -> Tensor:
        n = math.prod(shape)
        nbytes = n * like.element_size()
        cap = self.max_bytes
        if self._use_count is None or not self.MIN_BYTES <= nbytes <= cap or like.device.type != "cpu":
            return like.new_empty(shape)  # (a buffer over the cap is not kept: it would outlive its step)
        with self._lock:
            for i, buf in enumerate(self._bufs):
                if buf.numel() == n and buf.dtype == like.dtype and self._free(buf):
                    self._bufs.append(self._bufs.pop(i))  # most recently used last
                    return buf.view(shape)
            buf = like.new_empty(n)
            self._bufs.append(buf)
            total = sum(b.numel() * b.element_size() for b in self._bufs)
            for old in list(self._bufs[:-1]):  # least recently used first
                if total <= cap:
                    break
                if self._free(old):
                    self._bufs.remove(old)
                    total -= old.numel() * old.element_size()
            return buf.view(shape)

    def clear(self) -> None:
        with self._lock:
            self._bufs.clear()


#: The fused op's saved-activation buffers on CPU (see `Workspace`).
WORKSPACE = Workspace()


def _kernel_forward(kernel, spec: Spec, x: Tensor, h0: Tensor, valid: Tensor | None, params: Sequence[Tensor],
                    save: bool) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """`sequence_forward` by the C++ kernel (same outputs, same saved layouts)."""
    T, B, dx = x.shape
    L = spec.n_layers
    W, b, wo = _kernel_params(spec, params)
    widths = [Wk.shape[0] for Wk in W]
    none = x.new_empty(0)
    S = [WORKSPACE.empty((T, B, n), x) if save else none for n in widths]
    Q = [WORKSPACE.empty((T, B, n), x) if save else none for n in widths[:-1]]
    hs = x.new_empty(T, B, W[0].shape[1] - dx)
    y = x.new_empty(T, B)
    bo = params[2 * L + 1].reshape(-1) if spec.has_out_bias else none
    kernel.fused_forward(S, Q, hs, y, x.contiguous(), h0.contiguous(), _valid_arg(valid, x), W, b, wo, bo,
                         cpu_kernel.ACTIVATIONS[spec.activation], cpu_blocks(B, max(widths)))
    return y, hs, (S if save else []), (Q if save else [])


def _kernel_params(spec: Spec, params: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """F's parameters as the C++ kernel takes them: `([W_k], [b_k], w_o flattened)`, contiguous."""
    L = spec.n_layers
    return ([params[2 * k].contiguous() for k in range(L)], [params[2 * k + 1].contiguous() for k in range(L)],
            params[2 * L].reshape(-1).contiguous())


def forward_rows(
    spec: Spec, w: Weights, h0: Tensor, valid: Tensor | None, S: Sequence[Tensor | None],
    Q: Sequence[Tensor | None], hs: Tensor,
) -> None:
    """The recurrence for a block of samples (rows); every tensor is a (T, b, ...) view of the batch.

    `S[0]` holds layer 1's x-part on entry; `S[k]`, `Q[k]` (None: not kept) and `hs` are written.
    """
    L = spec.n_layers
    keep_u = spec.fn_out is not None
    h = h0
    for t in range(hs.shape[0]):
        a = S[0][t]
        a.addmm_(h, w.W1hT)
        ds, u = [], a
        for k in range(L):
            if k > 0:
                keep_a = S[k] is not None and not keep_u
                a = torch.addmm(w.b[k], u, w.WT[k], out=S[k][t] if keep_a else None)
            ds.append(spec.deriv(a))
            if keep_u and S[k] is not None:
                u = spec.fn_out(a, S[k][t])  # layer 1: overwrites a_1 by u_1, in place
            elif k < L - 1:
                u = spec.fn(a)
        g = ds[-1] * w.wo
        for k in range(L - 2, -1, -1):
            g = ds[k] * torch.mm(g, w.W[k + 1], out=None if Q[k] is None else Q[k][t])
        if valid is None:
            h = torch.mm(g, w.W1h, out=hs[t])
        else:
            h = torch.where(valid[t].unsqueeze(1), torch.mm(g, w.W1h), h, out=hs[t])


# --- CPU: independent samples on independent cores ---------------------------------------------

# (Block sizes and thread counts are scoped settings, `ig.settings(cpu_min_rows_per_thread=...,
# cpu_kernel_min_rows=..., cpu_block_elements=...)`, read per call: see core/settings.py.)
#: The Python loop's worker threads: a process-wide cache (remade after fork), sized per call.
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def cpu_blocks(B: int, width: int = 0) -> int:
    """How many blocks the batch splits into on CPU: one per thread, each of at least the minimum
    rows; for the C++ kernel (`width` > 0), also more where a block would outgrow the cache."""
    st = current_settings()
    n = torch.get_num_threads()
    min_rows = st.cpu_kernel_min_rows if width > 0 else st.cpu_min_rows_per_thread
    k = 1 if n <= 1 or min_rows <= 0 else max(1, min(n, B // min_rows))
    if width > 0 and st.cpu_block_elements > 0:
        rows = max(32, st.cpu_block_elements // width)
        if B > k * rows:  # a whole number of rounds over the threads, so no thread idles at the end
            k = -(-B // rows)
            k = -(-k // n) * n if k > n else k
    return k


def _cpu_kernel(spec: Spec, x: Tensor):
    """The C++ kernel's ops when it can run this sequence, else None (the Python loop runs)."""
    return kernel_for(spec.activation, x.dtype) if x.device.type == "cpu" else None


def kernel_for(activation: str, dtype: torch.dtype):
    """The C++ kernel's ops for a CPU sequence with this activation and dtype, or None when the
    Python loop runs it (kernel turned off, not covering them, or not built)."""
    if not cpu_kernel.in_use() or not cpu_kernel.supports(activation, dtype):
        return None
    return cpu_kernel.ops()


def _valid_arg(valid: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.bool) if valid is None else valid.to(torch.bool).contiguous()


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_sharded(fn: Callable[[slice], None], B: int, device: torch.device) -> None:
    """Call `fn(rows)` for blocks of the batch: on CPU one block per worker thread, else one block.

    The recurrence never mixes samples, so blocks of the batch are independent problems. Each runs
    on a worker thread with one intra-op thread: two cores then work without the per-operation
    synchronisation of intra-op parallelism, which costs more than it gains on these small
    matrices (and collapses when other processes share the cores).
    """
    global _POOL
    n = torch.get_num_threads() if device.type == "cpu" else 1
    if n <= 1 or current_settings().cpu_min_rows_per_thread <= 0:
        fn(slice(0, B))
        return
    # A small batch still runs on a single-threaded worker: its matrices are too small to gain
    # from intra-op threads, which only add barriers that stall when the cores are shared.
    k = cpu_blocks(B)
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < k:
        # (A pool inherited through fork has no threads in the child: make a new one there.)
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[1].shutdown(wait=False)
        _POOL = (os.getpid(), ThreadPoolExecutor(k, thread_name_prefix="innergrad-fused", initializer=_one_thread))
    bounds = [round(i * B / k) for i in range(k + 1)]
    grad_on, infer = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def task(r: slice) -> None:
        # Grad and inference modes are per thread: the workers take the caller's.
        with torch.inference_mode(infer), torch.autograd.grad_mode.set_grad_enabled(grad_on):
            fn(r)

    try:
        # (Each worker runs in a copy of the caller's context: it sees the caller's scoped settings.)
        futures = [_POOL[1].submit(contextvars.copy_context().run, task, slice(bounds[i], bounds[i + 1]))
                   for i in range(k)]
        for f in futures:
            f.result()
    finally:
        torch.set_num_threads(n)  # the workers' set_num_threads(1) also lowered the process default


# --- backward ---------------------------------------------------------------------------------

class Accumulators(NamedTuple):
    """Weight-gradient sums over the steps. Bias-like sums stay (B, n) until the end (one add per step)."""

    W1x: Tensor  # (n_1, dx)
    W1h: Tensor  # (n_1, dh)
    W: list[Tensor | None]  # W_k, k >= 1 (index 0 unused)
    b: list[Tensor]  # (B, n_k)
    wo: Tensor  # (B, n_L)


def backward_step(
    spec: Spec, w: Weights, hb: Tensor, yb: Tensor, S_t: Sequence[Tensor], Q_t: Sequence[Tensor],
    hprev: Tensor, x_t: Tensor, acc: Accumulators | None,
) -> tuple[Tensor, Tensor]:
    """One reverse step. `hb` (B, dh): dL/dh_t (masked); `yb` (B,): dL/dy_t (masked).

    Returns `(dL/dh_{t-1} through this step, ab_1)`; with `acc`, adds the step's weight gradients.
    """
    L = spec.n_layers
    if spec.from_u is not None:
        us = S_t
        de = [spec.from_u(u) for u in S_t]
    else:
        de = [spec.d12(a) for a in S_t]
        us = [spec.fn(a) for a in S_t] if acc is not None else None
    # Reverse of the gradient chain (linear in hb): gb_k = dL/dg_k, qb_k = dL/dq_k.
    gb = torch.mm(hb, w.W1hT)
    aA, qbs = [], []
    for k in range(L - 1):
        d, e = de[k]
        qb = gb * d
        aA.append(torch.mul(gb, Q_t[k]).mul_(e))  # the s'' term of ab_k
        qbs.append(qb)
        gb = torch.mm(qb, w.WT[k + 1])
    d, e = de[L - 1]
    if acc is not None:
        acc.wo.addcmul_(gb, d)  # qb_L, summed into dw_o
    # Reverse of the value path, joined by the s'' terms: ab_k = dL/da_k.
    ab = torch.mul(gb, e).addcmul_(yb.unsqueeze(1), d).mul_(w.wo)
    abs_ = [ab]
    for k in range(L - 2, -1, -1):
        ab = torch.addcmul(aA[k], torch.mm(ab, w.W[k + 1]), de[k][0])
        abs_.append(ab)
    abs_.reverse()
    if acc is not None:
        ab0 = abs_[0]
        g0 = de[0][0] * (Q_t[0] if L > 1 else w.wo)
        acc.W1h.addmm_(ab0.t(), hprev).addmm_(g0.t(), hb)
        acc.W1x.addmm_(ab0.t(), x_t)
        acc.b[0].add_(ab0)
        for k in range(1, L):
            gk = de[k][0] * (Q_t[k] if k < L - 1 else w.wo)
            acc.W[k].addmm_(abs_[k].t(), us[k - 1]).addmm_(gk.t(), qbs[k - 1])
            acc.b[k].add_(abs_[k])
        acc.wo.addcmul_(us[L - 1], yb.unsqueeze(1))
    return torch.mm(ab, w.W1h), ab


def sequence_backward(
    spec: Spec, x: Tensor, h0: Tensor, valid: Tensor | None, hs: Tensor, S: Sequence[Tensor],
    Q: Sequence[Tensor], params: Sequence[Tensor], yb: Tensor | None, HB: Tensor | None,
    need_x: bool, need_h0: bool, need_params: bool,
) -> tuple[Tensor | None, Tensor | None, list[Tensor] | None]:
    """Gradients `(dL/dx, dL/dh0, [dL/dparam...])` of the sequence, time in reverse.

    `yb` (T, B) and `HB` (T, B, dh) are the incoming gradients of y and hs (None: zero).
    """
    T, B, dx = x.shape
    L = spec.n_layers
    if yb is None:
        yb = x.new_zeros(T, B)
    elif valid is not None:
        yb = yb * valid
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
    kernel = _cpu_kernel(spec, x)
    if kernel is not None:
        none = x.new_empty(0)
        W, _, wo = _kernel_params(spec, params)
        gh0, flat = kernel.fused_backward(
            list(S), list(Q), hs, h0.contiguous(), x.contiguous(), _valid_arg(valid, x), yb.contiguous(),
            none if HB is None else HB.contiguous(), none if gx is None else gx, W, wo,
            cpu_kernel.ACTIVATIONS[spec.activation], cpu_blocks(B, max(Wk.shape[0] for Wk in W)), need_params)
        grads = None
        if need_params:  # flat: [dW_1..dW_L, db_1..db_L, dw_o]
            grads = [g for k in range(L) for g in (flat[k], flat[L + k])]
            grads.append(flat[2 * L].unsqueeze(0))
            if spec.has_out_bias:
                grads.append(yb.sum().reshape(1))
        return gx, (gh0 if need_h0 else None), grads
    w = weights(spec, params)
    gh0 = torch.empty_like(h0, memory_format=torch.contiguous_format)
    parts: dict[int, Accumulators] = {}

    def rows(r: slice) -> None:
        acc = new_accumulators(w, r.stop - r.start, x) if need_params else None
        gh0[r] = backward_rows(
            spec, w, x[:, r], h0[r], None if valid is None else valid[:, r], hs[:, r],
            [s[:, r] for s in S], [q[:, r] for q in Q], yb[:, r], None if HB is None else HB[:, r],
            None if gx is None else gx[:, r], acc,
        )
        if acc is not None:
            parts[r.start] = acc

    run_sharded(rows, B, x.device)
    grads = None
    if need_params:
        accs = [parts[k] for k in sorted(parts)]  # a fixed order: deterministic sums
        grads = []
        for k in range(L):
            if k == 0:
                grads.append(torch.cat([sum(a.W1x for a in accs), sum(a.W1h for a in accs)], 1))
            else:
                grads.append(sum(a.W[k] for a in accs))
            grads.append(torch.cat([a.b[k] for a in accs]).sum(0))
        grads.append(torch.cat([a.wo for a in accs]).sum(0).unsqueeze(0))
        if spec.has_out_bias:
            grads.append(yb.sum().reshape(1))
    return gx, (gh0 if need_h0 else None), grads


def new_accumulators(w: Weights, rows: int, like: Tensor) -> Accumulators:
    n1, dx = w.W1x.shape
    return Accumulators(
        like.new_zeros(n1, dx), like.new_zeros(n1, w.W1h.shape[1]),
        [None] + [torch.zeros_like(Wk) for Wk in w.W[1:]],
        [like.new_zeros(rows, Wk.shape[0]) for Wk in w.W], like.new_zeros(rows, w.wo.shape[0]),
    )


def backward_rows(
    spec: Spec, w: Weights, x: Tensor, h0: Tensor, valid: Tensor | None, hs: Tensor,
    S: Sequence[Tensor], Q: Sequence[Tensor], yb: Tensor, HB: Tensor | None, gx: Tensor | None,
    acc: Accumulators | None,
) -> Tensor:
    """The reverse recurrence for a block of samples (all tensors (T, b, ...) views); returns dL/dh0."""
    carry = None
    for t in range(x.shape[0] - 1, -1, -1):
        if carry is None:
            hb = HB[t] if HB is not None else torch.zeros_like(h0, memory_format=torch.contiguous_format)
        else:
            hb = carry if HB is None else carry + HB[t]
        if valid is not None:
            m = valid[t].unsqueeze(1)
            passed = hb * ~m  # an invalid step holds h: its gradient passes straight through
            hb = hb * m
        hprev = hs[t - 1] if t > 0 else h0
        carry, ab0 = backward_step(spec, w, hb, yb[t], [s[t] for s in S], [q[t] for q in Q],
                                   hprev, x[t], acc)
        if gx is not None:
            torch.mm(ab0, w.W1x, out=gx[t])
        if valid is not None:
            carry = carry.add_(passed)
    return carry


# --- the operators: what torch.compile, torch.export and torch.func see ------------------------
#
# `innergrad::fused_rnn_forward` and `innergrad::fused_rnn_backward` are opaque custom operators
# (the loops above, or the C++ kernel, inside), each with a fake implementation (shapes only, for
# tracing) and a vmap rule. `FusedSequence` joins them into one differentiable function whose
# backward is the backward operator, or, when a graph of the backward is requested (create_graph,
# a gradient penalty, MAML), a recomputation of the sequence in closed-form torch ops whose vjp is
# itself differentiable.

#: Calls of the operators' real (not fake) implementations: a compiled step that runs the fused
#: operators moves these counters (the tests check torch.compile with them).
OP_CALLS = {"forward": 0, "backward": 0}


@torch.library.custom_op(
    "innergrad::fused_rnn_forward", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor? valid, Tensor[] params, str activation, bool save) "
           "-> (Tensor, Tensor, Tensor[], Tensor[])",
)
def fused_rnn_forward(x, h0, valid, params, activation, save):
    """`(y (T,B), hs (T,B,dh), S, Q)` of `sequence_forward` (S, Q empty without `save`)."""
    OP_CALLS["forward"] += 1
    y, hs, S, Q = sequence_forward(spec_for(activation, x.shape[-1], len(params)), x, h0, valid, params, save)
    return y, hs, list(S), list(Q)


@fused_rnn_forward.register_fake
def _(x, h0, valid, params, activation, save):
    T, B, _ = x.shape
    widths = [params[2 * k].shape[0] for k in range((len(params) - 1) // 2)]
    S = [x.new_empty(T, B, n) for n in widths] if save else []
    Q = [x.new_empty(T, B, n) for n in widths[:-1]] if save else []
    return x.new_empty(T, B), x.new_empty(T, B, h0.shape[-1]), S, Q


@torch.library.custom_op(
    "innergrad::fused_rnn_backward", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor? valid, Tensor hs, Tensor[] S, Tensor[] Q, Tensor[] params, "
           "Tensor? gy, Tensor? ghs, str activation, bool need_x, bool need_h0, bool need_params) "
           "-> (Tensor, Tensor, Tensor[])",
)
def fused_rnn_backward(x, h0, valid, hs, S, Q, params, gy, ghs, activation, need_x, need_h0, need_params):
    """`(dL/dx, dL/dh0, [dL/dparams])` of `sequence_backward`; what is not needed comes back empty."""
    OP_CALLS["backward"] += 1
    spec = spec_for(activation, x.shape[-1], len(params))
    # (Under vmap the saved activations may come as one member's view of the folded batch; the C++
    # kernel reads whole blocks.)
    hs, S, Q = hs.contiguous(), [s.contiguous() for s in S], [q.contiguous() for q in Q]
    gx, gh0, gp = sequence_backward(spec, x, h0, valid, hs, S, Q, params, gy, ghs, need_x, need_h0, need_params)
    # (Outputs may not alias each other: each missing one is its own empty tensor.)
    return x.new_empty(0) if gx is None else gx, x.new_empty(0) if gh0 is None else gh0, gp or []


@fused_rnn_backward.register_fake
def _(x, h0, valid, hs, S, Q, params, gy, ghs, activation, need_x, need_h0, need_params):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0), h0.new_empty(h0.shape) if need_h0 else x.new_empty(0),
            [p.new_empty(p.shape) for p in params] if need_params else [])


def _pick(a, d, i):
    """Member `i` of argument `a` batched along dim `d` (None: shared), lists element-wise."""
    if d is None or a is None:
        return a
    if isinstance(a, (list, tuple)):
        return [_pick(t, dd, i) for t, dd in zip(a, d)]
    return a.select(d, i)


def _per_member(op, info, in_dims, *args):
    """A vmap rule by definition: one call per member of the vmapped batch, outputs stacked."""
    outs = [op(*(_pick(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
    stacked = tuple(torch.stack([o[j] for o in outs]) if isinstance(outs[0][j], Tensor)
                    else [torch.stack([o[j][k] for o in outs]) for k in range(len(outs[0][j]))]
                    for j in range(len(outs[0])))
    dims = tuple(0 if isinstance(o, Tensor) else [0] * len(o) for o in stacked)
    return stacked, dims


def _rows(a: Tensor | None, d: int | None, n: int, row_dim: int) -> Tensor | None:
    """`a` with the vmapped dim `d` (size n) folded into its batch dim `row_dim` (member-major)."""
    if a is None:
        return None
    a = a.unsqueeze(row_dim).expand(*a.shape[:row_dim], n, *a.shape[row_dim:]) if d is None else a.movedim(d, row_dim)
    return a.reshape(*a.shape[:row_dim], -1, *a.shape[row_dim + 2:])


@fused_rnn_forward.register_vmap
def _(info, in_dims, x, h0, valid, params, activation, save):
    xd, hd, vd, pd = in_dims[:4]
    if any(d is not None for d in pd):  # each member has its own F (an ensemble): one call each
        return _per_member(fused_rnn_forward, info, in_dims, x, h0, valid, params, activation, save)
    # One F for all members: they are more samples of the batch (the recurrence never mixes them).
    n = info.batch_size
    y, hs, S, Q = fused_rnn_forward(_rows(x, xd, n, 1), _rows(h0, hd, n, 0), _rows(valid, vd, n, 1), params,
                                    activation, save)
    T = y.shape[0]
    split = [t.view(T, n, -1, *t.shape[2:]) for t in (y, hs, *S, *Q)]
    return ((split[0], split[1], split[2:2 + len(S)], split[2 + len(S):]),
            (1, 1, [1] * len(S), [1] * len(Q)))


@fused_rnn_backward.register_vmap
def _(info, in_dims, *args):
    return _per_member(fused_rnn_backward, info, in_dims, *args)


def reference_sequence(activation: str, x: Tensor, h0: Tensor, valid: Tensor | None,
                       params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The GradRNN's `(y, hs)` in closed-form torch ops (any transform, any order of derivative):
    what `FusedSequence` differentiates when a graph of its backward is wanted."""
    spec = spec_for(activation, x.shape[-1], len(params))
    L, dx = spec.n_layers, spec.dx
    W, b = params[0:2 * L:2], params[1:2 * L:2]
    wo = params[2 * L].reshape(-1)
    ys, hs, h = [], [], h0
    for t in range(x.shape[0]):
        u, ds = torch.cat([x[t], h], -1), []
        for k in range(L):
            a = Fn.linear(u, W[k], b[k])
            ds.append(spec.deriv(a))
            u = spec.fn(a)
        y = u @ wo
        if spec.has_out_bias:
            y = y + params[2 * L + 1]
        g = ds[-1] * wo
        for k in range(L - 1, 0, -1):
            g = ds[k - 1] * (g @ W[k])
        h_new = g @ W[0][:, dx:]
        if valid is not None:
            y = torch.where(valid[t], y, torch.zeros_like(y))
            h_new = torch.where(valid[t].unsqueeze(-1), h_new, h)
        h = h_new
        ys.append(y)
        hs.append(h)
    return torch.stack(ys), torch.stack(hs)


class _FusedSequenceFn(torch.autograd.Function):
    """`(x, h0, *params) -> (y, hs, *saved)`; the saved activations are outputs (non-differentiable)
    so that torch.func transforms, which need `setup_context`, can keep them for the backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(activation, valid, x, h0, *params):
        y, hs, S, Q = fused_rnn_forward(x, h0, valid, list(params), activation, True)
        return (y, hs, *S, *Q)

    @staticmethod
    def setup_context(ctx, inputs, output):
        activation, valid, x, h0, *params = inputs
        ctx.activation, ctx.n_layers, ctx.n_params = activation, len(output) // 2, len(params)
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)  # an unused output (usually hs) then costs nothing
        ctx.save_for_backward(x, h0, valid, *output[1:], *params)

    @staticmethod
    def backward(ctx, gy, ghs, *_):
        x, h0, valid, hs, *rest = ctx.saved_tensors
        L = ctx.n_layers
        S, Q, params = rest[:L], rest[L:2 * L - 1], rest[2 * L - 1:]
        need = ctx.needs_input_grad
        need_p = need[4:]
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # A graph of this backward is wanted: differentiate the closed-form recomputation, whose
            # vjp is made of differentiable ops (and equals the first-order result up to rounding).
            return (None, None, *_reference_vjp(ctx.activation, x, h0, valid, params, gy, ghs, need[2:]))
        gx, gh0, gp = fused_rnn_backward(x, h0, valid, hs, list(S), list(Q), list(params), gy, ghs, ctx.activation,
                                         need[2], need[3], any(need_p))
        gp = [g if n else None for g, n in zip(gp, need_p)] if gp else [None] * len(need_p)
        return (None, None, gx if need[2] else None, gh0 if need[3] else None, *gp)


def _reference_vjp(activation, x, h0, valid, params, gy, ghs, need):
    outs, pullback = torch.func.vjp(lambda *a: reference_sequence(activation, a[0], a[1], valid, a[2:]),
                                    x, h0, *params)
    grads = pullback((torch.zeros_like(outs[0]) if gy is None else gy,
                      torch.zeros_like(outs[1]) if ghs is None else ghs))
    return [g if n else None for g, n in zip(grads, need)]


class FusedSequence:
    """`(x, h0, *params) -> (y (T,B), hs (T,B,dh))` of the gradient-RNN in exact mode, one node."""

    @staticmethod
    def apply(spec: Spec, valid: Tensor | None, x: Tensor, h0: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:
        y, hs, *_ = _FusedSequenceFn.apply(spec.activation, valid, x, h0, *params)
        return y, hs


def run_fused_sequence(
    f: MLP, x: Tensor, h0: Tensor, valid: Tensor | None, mode: str
) -> tuple[Tensor, Tensor]:
    """The GradRNN's `(y (T,B), hs (T,B,dh))` for an `ig.MLP` F, exact or detached mode."""
    params = mlp_params(f)
    # (No host sync in a CUDA graph or in traced code: the mask is then kept as given.)
    capturing = torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())
    if valid is not None and not capturing and bool(valid.all()):
        valid = None
    # (Inside a torch.func transform a tensor reports no requires_grad whatever the levels around it.)
    grad_on = torch.is_grad_enabled() and (
        functorch_active() or x.requires_grad or h0.requires_grad or any(p.requires_grad for p in params)
    )
    if mode == "exact" and grad_on:
        y, hs, *_ = _FusedSequenceFn.apply(f.activation_name, valid, x, h0, *params)
        return y, hs
    # Inference, or detached mode: the recurrence needs no graph; y (and its gradients to F's
    # parameters, x and h0 through y_1) comes from one batched forward over all T*B rows.
    with torch.no_grad():
        y, hs, _, _ = fused_rnn_forward(x.detach(), h0.detach(), valid, [p.detach() for p in params],
                                        f.activation_name, False)
    if not grad_on:
        return y, hs
    T, B, dx = x.shape
    if valid is not None and h0.requires_grad:
        # A sample that has not had a valid step yet still holds h0 itself, graph included.
        held = (valid.cumsum(0) == 0).unsqueeze(-1)
        hs = torch.where(held, h0.expand_as(hs), hs)
    hprev = torch.cat([h0.unsqueeze(0), hs[:-1]]) if T > 1 else h0.unsqueeze(0)
    y = f(x, hprev)
    if valid is not None:
        y = torch.where(valid, y, torch.zeros_like(y))
    return y, hs


class FusedBackend(Backend):
    """Whole-sequence gradient-RNN for an `ig.MLP` F with a smooth activation (CPU and CUDA).

    One autograd node for all T steps with a hand-written backward (see the module's docstring):
    the fastest CPU path, and the reference math for the GPU kernels. Single calls
    (`ig.value_and_grad` of an `ig.MLP`: HamiltonianNet, ConservativeField, `ig.Gradient`) run as one
    fused operator too (`fused_call.py`) on CPU from `fused_call_min_rows` rows up, else through
    the closed form. Runs under torch.compile (opaque operators with
    fake implementations), vmap (a batching rule) and double backward (through the closed form).
    Under forward-mode AD the operators have no formula: the sequence then runs step by step
    through the closed form, which "auto" picks directly there, as under torch.func gradient
    transforms (where the fused backward would be a closed-form recomputation anyway).
    """

    name = "fused"
    devices = ("cpu", "cuda")
    slow_contexts = frozenset({"grad_transform", "forward_ad"})

    def __init__(self):
        self._closed = ClosedFormBackend()

    def unsupported(self, f, args, argnums):
        why = super().unsupported(f, args, argnums)
        return why or fused_unsupported(f)

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        from . import fused_call  # (it builds on this module)

        out = fused_call.value_and_grad(f, args, argnums, create_graph, keep_value_graph)
        return out if out is not None else self._closed.value_and_grad(f, args, argnums, create_graph,
                                                                         keep_value_graph)

    def run_sequence(self, f, x, h0, valid, mode):
        if fused_unsupported(f) or len(f.in_sizes) != 2:
            return None
        if "forward_ad" in call_context():
            return None
        check_input_sizes(f, (x, h0), "fused backend", ("x", "h"))
        if x.device.type not in self.devices or h0.device != x.device:
            return None
        params = mlp_params(f)
        dt = x.dtype
        if not dt.is_floating_point or h0.dtype != dt or any(p.dtype != dt or p.device != x.device
                                                               for p in params):
            return None
        if not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled():
            # Inference tensors (made under inference_mode) cannot join an autograd graph; copies can.
            x = x.clone() if x.is_inference() else x
            h0 = h0.clone() if h0.is_inference() else h0
        return run_fused_sequence(f, x, h0, valid, mode)


register_backend(FusedBackend(), override=True)

__all__ = ["FusedBackend", "FusedSequence", "run_fused_sequence", "reference_sequence", "SECOND_DERIVATIVES"]
