"""The gradient-RNN as two fused Triton kernels (forward over all T steps, backward in reverse time).

For `F = ig.MLP((dx, dh), hidden_layers=(w, w), activation)` on `z = [x, h]`:

    a1 = z W1^T + b1,  a2 = s(a1) W2^T + b2,  y = s(a2) . w3 + b3,
    u  = (s'(a2) * w3) W2,  h_t = (s'(a1) * u) W1h          (W1h = W1[:, dx:])

The forward kernel keeps h on chip for all T steps and saves (a1, a2, u) per step, or lets the
backward recompute them when memory is short. The backward kernel runs time in reverse carrying
dL/dh (which needs s'' of the activation) and writes the per-step factors of the weight gradients
into a scratch buffer; the weight gradients are then a few large matrix products over that scratch,
off the recurrence's critical path. Long sequences are processed in time chunks so that the scratch
stays bounded.

Training needs one backward through this op; a graph of that backward (gradient penalties,
`gradgradcheck`, MAML) is a closed-form recomputation (`fused.reference_sequence`). Triton is optional (the `triton`
extra): without it this module raises ImportError and the package registers no "triton" backend.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.activations import kernel_codes
from ..core.backends import BACKENDS, Backend, call_context, functorch_active, register_backend
from ..core.checks import check_input_sizes
from ..core.mlp import MLP
from ..core.settings import constant_when_traced, current_settings
from .fused import _per_member, _reference_vjp, _rows

if importlib.util.find_spec("triton") is None:  # checked without importing triton (slow, and
    # its interpret/compile mode must be chosen late: see `_kernels`)
    raise ImportError("innergrad's 'triton' backend needs triton: pip install 'innergrad[triton]'")

Tensor = torch.Tensor

ACTIVATIONS = tuple(kernel_codes("triton"))
PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16")
_MAX_WIDTH = 256  # hidden width the kernels keep in registers (larger spills)
_MAX_IO = 128  # input_size and hidden_size
_TORCH_PRECISION = {"highest": "ieee", "high": "tf32", "medium": "bf16"}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _kernels():
    """The kernel module, loaded once per mode (compiled, or the CPU interpreter under TRITON_INTERPRET=1).

    Triton fixes a kernel's mode when its `@triton.jit` runs, i.e. when the module is imported; loading
    the file under a mode-specific name lets a process that sets `TRITON_INTERPRET=1` late (a test)
    still get interpreted kernels.
    """
    name = "innergrad.kernels._triton_kernels" + ("_interpreted" if _interpreting() else "_compiled")
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("triton_kernels.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return mod


def _pad(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


class _Cfg:
    """Static description of one call: sizes, activation, precision, launch shape."""

    def __init__(self, dx, dh, w, act, prec, block_b, num_warps, nb, hoist, recompute, scratch_bytes):
        self.dx, self.dh, self.w, self.nb = dx, dh, w, nb
        self.act, self.prec = act, prec
        self.block_b, self.num_warps, self.hoist = block_b, num_warps, hoist
        self.recompute, self.scratch_bytes = recompute, scratch_bytes

    def consts(self, k):
        return dict(
            DX=self.dx, DH=self.dh, W=self.w, DXP=_pad(self.dx), DHP=_pad(self.dh), WP=_pad(self.w), NB=self.nb,
            BLOCK_B=self.block_b, ACT=k.ACT_CODES[self.act], HOIST=self.hoist,
            PREC=k.PREC_CODES["bf16_emulated" if self.prec == "bf16" and _interpreting() else self.prec],
        )


# Launch shapes that ran out of on-chip resources once, and what replaced them (per process).
_DOWNGRADED: dict[tuple, tuple[bool, int]] = {}


def _launch(kernel, grid, cfg: _Cfg, *args, **kw):
    """Launch `kernel`; where the shape needs more shared memory than the GPU has (hoisted weights at
    higher dot precisions), fall back to re-reading the weights, then to narrower column blocks."""
    k = _kernels()
    name = getattr(getattr(kernel, "fn", kernel), "__name__", "")
    key = (name, cfg.w, cfg.prec, cfg.num_warps, cfg.block_b, cfg.hoist, cfg.nb)
    if key in _DOWNGRADED:
        cfg.hoist, cfg.nb = _DOWNGRADED[key]
    while True:
        try:
            return kernel[grid](*args, num_warps=cfg.num_warps, num_stages=1, **kw, **cfg.consts(k))
        except Exception as e:  # triton.runtime.errors.OutOfResources, without importing triton here
            if type(e).__name__ != "OutOfResources" or (not cfg.hoist and cfg.nb <= 16):
                raise
            if cfg.hoist:
                cfg.hoist = False
            else:
                cfg.nb //= 2
            _DOWNGRADED[key] = (cfg.hoist, cfg.nb)


def _forward(cfg: _Cfg, x, h0, valid, W1, b1, W2, b2, w3, b3, save: bool):
    """Launch the forward kernel: `(Y (T, B), HS (T, B, dh), saved (3, T, B, w) or None)`."""
    k = _kernels()
    T, B, _ = x.shape
    Y = x.new_empty(T, B)
    HS = x.new_empty(T, B, cfg.dh)
    saved = x.new_empty(3, T, B, cfg.w) if save else None
    dummy = Y
    grid = (_cdiv(B, cfg.block_b),)
    _launch(
        k.gradrnn_fwd_kernel, grid, cfg,
        x, h0, valid if valid is not None else dummy, W1, b1, W2, b2, w3, b3 if b3 is not None else dummy,
        Y, HS, *(saved if save else (dummy, dummy, dummy)),
        T, B, HAS_VALID=valid is not None, HAS_B3=b3 is not None, SAVE=save,
    )
    return Y, HS, saved


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _backward(cfg: _Cfg, x, h0, valid, W1, b1, W2, b2, w3, HS, saved, dY, dHS, need_x: bool):
    """Launch the backward kernel over time chunks; return (dx, dh0, dW1, db1, dW2, db2, dw3, db3)."""
    k = _kernels()
    T, B, dx = x.shape
    dh, w = cfg.dh, cfg.w
    nprog = _cdiv(B, cfg.block_b)
    GH = x.new_zeros(B, dh)
    dW1h, dW1x, dW2 = W1.new_zeros(w, dh), W1.new_zeros(w, dx), W2.new_zeros(w, w)
    db1, db2, dw3 = b1.new_zeros(w), b2.new_zeros(w), b2.new_zeros(w)
    dX = torch.empty_like(x) if need_x else None
    per_step = B * (7 * w + 2 * dh) * x.element_size()
    TC = max(1, min(T, cfg.scratch_bytes // per_step))
    Sflat = x.new_empty(7 * TC * B * w)
    Qflat = x.new_empty(2 * TC * B * dh)
    a1s, a2s, us = saved if saved is not None else (dY, dY, dY)
    dummy = dY
    W1x = W1[:, :dx]
    grid = (nprog,)
    t_hi = T
    while t_hi > 0:
        t_lo = max(0, t_hi - TC)
        n = t_hi - t_lo
        S = Sflat[: 7 * n * B * w].view(7, n, B, w)
        Q = Qflat[: 2 * n * B * dh].view(2, n, B, dh)
        _launch(
            k.gradrnn_bwd_kernel, grid, cfg,
            x, h0, HS, valid if valid is not None else dummy, W1, b1, W2, b2, w3,
            a1s, a2s, us, dY, dHS, GH, S, Q,
            t_lo, t_hi, n, B, HAS_VALID=valid is not None, RECOMPUTE=saved is None,
        )
        rows = n * B
        dW1h.addmm_(S[0:2].reshape(2 * rows, w).T, Q.reshape(2 * rows, dh))
        da1 = S[1].reshape(rows, w)
        dW1x.addmm_(da1.T, x[t_lo:t_hi].reshape(rows, dx))
        dW2.addmm_(S[2:4].reshape(2 * rows, w).T, S[4:6].reshape(2 * rows, w))
        db1 += da1.sum(0)
        db2 += S[3].reshape(rows, w).sum(0)
        dw3 += S[6].reshape(rows, w).sum(0)
        if need_x:
            torch.mm(da1, W1x, out=dX[t_lo:t_hi].view(rows, dx))
        t_hi = t_lo
    dW1 = torch.cat([dW1x, dW1h], 1)
    db3 = (dY if valid is None else dY * valid).sum().view(1)
    return dX, GH, dW1, db1, dW2, db2, dw3, db3


def _cfg_args(cfg: _Cfg) -> tuple[str, str, list[int]]:
    """A `_Cfg` as operator arguments (activation, precision, launch ints); `_cfg_from` inverts it."""
    return cfg.act, cfg.prec, [cfg.block_b, cfg.num_warps, cfg.nb, int(cfg.hoist), int(cfg.recompute),
                               cfg.scratch_bytes]


def _check_launch(x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec, **per_step) -> None:
    """Raise ValueError unless the tensors have the sizes, dtype, device and layout the kernels index by.

    The kernels read raw pointers at offsets computed from these sizes: a mismatch would read past
    a buffer on the GPU. The backend checks sizes against F before it gets here; this guards direct
    calls of the operators. `per_step`: name -> tensor that must be (T, B, width) or given shape.
    """
    if x.dim() != 3:
        raise ValueError(f"triton kernels: x must be (T, B, input_size), got shape {tuple(x.shape)}")
    T, B, dx = x.shape
    dh, w = (h0.shape[-1] if h0.dim() == 2 else -1), W1.shape[0]
    want = {"h0": (h0, (B, dh)), "W1": (W1, (w, dx + dh)), "b1": (b1, (w,)), "W2": (W2, (w, w)), "b2": (b2, (w,)),
            "w3": (w3, (w,))}
    if b3 is not None:
        want["b3"] = (b3, (1,))
    want.update(per_step)
    for name, (t, shape) in want.items():
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"triton kernels: {name} must have shape {tuple(shape)} for x {tuple(x.shape)}, "
                             f"h0 {tuple(h0.shape)} and W1 {tuple(W1.shape)}; got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
            raise ValueError(f"triton kernels: {name} must be contiguous, {x.dtype} on {x.device}; got "
                             f"{t.dtype} on {t.device}{'' if t.is_contiguous() else ', not contiguous'}")
    if not x.is_contiguous():
        raise ValueError("triton kernels: x must be contiguous")
    if valid is not None and (tuple(valid.shape) != (T, B) or valid.dtype != torch.uint8 or not valid.is_contiguous()):
        raise ValueError(f"triton kernels: valid must be a contiguous uint8 (T, B) = {(T, B)} tensor, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    if act not in ACTIVATIONS or prec not in PRECISIONS:
        raise ValueError(f"triton kernels: act must be one of {ACTIVATIONS} and prec one of {PRECISIONS}, "
                         f"got {act!r}, {prec!r}")


def _cfg_from(x: Tensor, h0: Tensor, W1: Tensor, act: str, prec: str, launch: list[int]) -> _Cfg:
    block_b, num_warps, nb, hoist, recompute, scratch = launch
    return _Cfg(x.shape[-1], h0.shape[-1], W1.shape[0], act, prec, block_b, num_warps, nb, bool(hoist),
                bool(recompute), scratch)


# The kernels as opaque operators with fake implementations and vmap rules, joined into one
# differentiable function as the fused CPU path is (see `fused.py`): torch.compile traces them,
# vmap batches them, and a graph of the backward goes through the closed-form recomputation.

@torch.library.custom_op(
    "innergrad::triton_rnn_forward", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor? valid, Tensor W1, Tensor b1, Tensor W2, Tensor b2, Tensor w3, "
           "Tensor? b3, str act, str prec, int[] launch, bool save) -> (Tensor, Tensor, Tensor)",
)
def triton_rnn_forward(x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec, launch, save):
    """`(Y (T,B), HS (T,B,dh), saved (3,T,B,w))`; saved is empty without `save` or when recomputed."""
    _check_launch(x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec)
    cfg = _cfg_from(x, h0, W1, act, prec, launch)
    Y, HS, saved = _forward(cfg, x, h0, valid, W1, b1, W2, b2, w3, b3, save=save and not cfg.recompute)
    return Y, HS, x.new_empty(0) if saved is None else saved


@triton_rnn_forward.register_fake
def _(x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec, launch, save):
    T, B, _ = x.shape
    keep = save and not launch[4]
    saved = x.new_empty(3, T, B, W1.shape[0]) if keep else x.new_empty(0)
    return x.new_empty(T, B), x.new_empty(T, B, h0.shape[-1]), saved


@torch.library.custom_op(
    "innergrad::triton_rnn_backward", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor? valid, Tensor W1, Tensor b1, Tensor W2, Tensor b2, Tensor w3, "
           "Tensor HS, Tensor saved, Tensor dY, Tensor dHS, str act, str prec, int[] launch, bool need_x) "
           "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def triton_rnn_backward(x, h0, valid, W1, b1, W2, b2, w3, HS, saved, dY, dHS, act, prec, launch, need_x):
    """`(dX, dh0, dW1, db1, dW2, db2, dw3, db3)`; dX is empty without `need_x`."""
    T, B = x.shape[:2]
    steps = {"HS": (HS, (T, B, h0.shape[-1])), "dY": (dY.contiguous(), (T, B)),
             "dHS": (dHS.contiguous(), (T, B, h0.shape[-1]))}
    if saved.numel():
        steps["saved"] = (saved, (3, T, B, W1.shape[0]))
    _check_launch(x, h0, valid, W1, b1, W2, b2, w3, None, act, prec, **steps)
    cfg = _cfg_from(x, h0, W1, act, prec, launch)
    out = _backward(cfg, x, h0, valid, W1, b1, W2, b2, w3, HS, saved if saved.numel() else None,
                    dY.contiguous(), dHS.contiguous(), need_x=need_x)
    return (x.new_empty(0) if out[0] is None else out[0], *out[1:])


@triton_rnn_backward.register_fake
def _(x, h0, valid, W1, b1, W2, b2, w3, HS, saved, dY, dHS, act, prec, launch, need_x):
    return (x.new_empty(x.shape) if need_x else x.new_empty(0), h0.new_empty(h0.shape), W1.new_empty(W1.shape),
            b1.new_empty(b1.shape), W2.new_empty(W2.shape), b2.new_empty(b2.shape), w3.new_empty(w3.shape),
            w3.new_empty(1))


@triton_rnn_forward.register_vmap
def _(info, in_dims, x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec, launch, save):
    args = (x, h0, valid, W1, b1, W2, b2, w3, b3, act, prec, launch, save)
    if any(d is not None for d in in_dims[3:9]):  # an ensemble of F: one launch per member
        return _per_member(triton_rnn_forward, info, in_dims, *args)
    n = info.batch_size
    Y, HS, saved = triton_rnn_forward(_rows(x, in_dims[0], n, 1), _rows(h0, in_dims[1], n, 0),
                                      _rows(valid, in_dims[2], n, 1), *args[3:])
    T = Y.shape[0]
    return ((Y.view(T, n, -1), HS.view(T, n, -1, HS.shape[-1]),
             saved.view(3, T, n, -1, saved.shape[-1]) if saved.numel() else saved.new_empty(n, 0)),
            (1, 1, 2 if saved.numel() else 0))


@triton_rnn_backward.register_vmap
def _(info, in_dims, *args):
    return _per_member(triton_rnn_backward, info, in_dims, *args)


class _FusedGradRNN(torch.autograd.Function):
    """`(x, h0, valid, W1, b1, W2, b2, w3, b3) -> (Y, HS, saved)`: all T steps in one kernel each way."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, h0, valid, W1, b1, W2, b2, w3, b3, cfg_args):
        return triton_rnn_forward(x, h0, valid, W1, b1, W2, b2, w3, b3, *cfg_args, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, valid, W1, b1, W2, b2, w3, b3, cfg_args = inputs
        ctx.cfg_args, ctx.has_b3 = cfg_args, b3 is not None
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(x, h0, valid, W1, b1, W2, b2, w3, b3, output[1], output[2])

    @staticmethod
    def backward(ctx, dY, dHS, _):
        x, h0, valid, W1, b1, W2, b2, w3, b3, HS, saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # A graph of this backward is wanted (create_graph, a gradient penalty, MAML): the
            # closed-form recomputation's vjp is differentiable and equals the kernels' gradients.
            params = (W1, b1, W2, b2, w3.view(1, -1), *((b3,) if b3 is not None else ()))
            act = ctx.cfg_args[0]
            grads = _reference_vjp(act, x, h0, None if valid is None else valid.view(torch.bool), params, dY, dHS,
                                   (need[0], need[1], *need[3:8], need[8]))
            gx, gh0, gW1, gb1, gW2, gb2, gw3, *gb3 = grads
            return (gx, gh0, None, gW1, gb1, gW2, gb2, None if gw3 is None else gw3.view(-1),
                    gb3[0] if gb3 else None, None)
        out = triton_rnn_backward(x, h0, valid, W1, b1, W2, b2, w3, HS, saved, dY, dHS, *ctx.cfg_args, need[0])
        dX, dh0, dW1, db1, dW2, db2, dw3, db3 = out
        return (dX if need[0] else None, dh0, None, dW1, db1, dW2, db2, dw3, db3 if ctx.has_b3 else None, None)


_TRITON_FIELDS = ("precision", "block_b", "num_warps", "hoist", "width_block", "recompute", "save_bytes",
                  "scratch_bytes", "interpret_on_cpu")


@constant_when_traced
def _triton_settings_tuple() -> tuple:
    st = current_settings()
    return tuple(getattr(st, f"triton_{k}") for k in _TRITON_FIELDS)


def _triton_settings() -> dict:
    """The `triton_*` scoped settings in force (read once when torch.compile traces: Dynamo cannot
    trace a ContextVar; a compiled graph keeps the launch shape it was traced with)."""
    return dict(zip(_TRITON_FIELDS, _triton_settings_tuple()))


class TritonBackend(Backend):
    """Fused Triton kernels for the whole gradient-RNN sequence (`GradRNN` on CUDA).

    Takes `ig.MLP((input_size, hidden_size), hidden_layers=(w, w), activation)` with `w <= 256`,
    `input_size, hidden_size <= 128`, activation softplus, tanh, sigmoid, silu or sin, float32 (or
    float64), masks included; anything else falls back to the next backend of "auto". Single
    `value_and_grad` calls go to the closed form. Contexts as the "fused" backend: torch.compile,
    vmap and double backward (through the closed form); step by step under forward-mode AD.

    Settings (scoped: `with ig.settings(triton_precision="tf32", ...)`, see `ig.Settings`):

    - `triton_precision`: `None` (default) follows `torch.get_float32_matmul_precision()` ("highest"
      -> `"ieee"` fp32, "high" -> `"tf32"`, "medium" -> `"bf16"` operands with fp32 accumulation), or
      one of `"ieee"`, `"tf32"`, `"tf32x3"`, `"bf16"`. float64 inputs always use ieee.
    - `triton_block_b`, `triton_num_warps`: launch shape (None: 16 rows of the batch per program, 8 warps).
    - `triton_hoist`: load the weights once, before the time loop, instead of re-reading them every step
      (None: at width 128, where the compiler keeps them in shared memory; falls back by itself
      where they do not fit).
    - `triton_width_block`: the second layer goes in column blocks of this width, so that no full
      width-by-width weight tile is live at once (None: the whole layer when hoisted, else 64, or 32
      at width 64: the fastest on an H100).
    - `triton_recompute`: recompute a1, a2, u in the backward instead of saving them (None: only when
      the saved tensors would exceed `triton_save_bytes`, 2 GiB by default).
    - `triton_scratch_bytes`: bound of the backward's scratch (256 MiB); longer sequences go in chunks.
    - `triton_interpret_on_cpu`: also run on CPU tensors through Triton's interpreter (needs
      `TRITON_INTERPRET=1`; slow, for tests only). Off by default so that "auto" never picks it on CPU.
    """

    name = "triton"
    per_sample = True
    devices = ("cuda",)
    slow_contexts = frozenset({"grad_transform", "forward_ad"})

    # -- capability ------------------------------------------------------------------------------
    def _device_ok(self, dev: torch.device) -> str | None:
        if dev.type == "cuda":
            return None
        if dev.type == "cpu" and _triton_settings()["interpret_on_cpu"] and _interpreting():
            return None
        return (f"runs on cuda (or on cpu through TRITON_INTERPRET=1 with ig.settings(triton_interpret_on_cpu=True)), "
                f"not on {dev.type}")

    def _model_why(self, f: Callable) -> str | None:
        if not isinstance(f, MLP):
            return f"f must be an ig.MLP, got {type(f).__name__}"
        if len(f.in_sizes) != 2:
            return f"f must take two inputs (x, h), it takes {len(f.in_sizes)}"
        if len(f.layers) != 2 or f.layers[0].out_features != f.layers[1].out_features:
            widths = tuple(lin.out_features for lin in f.layers)
            return f"f must have two hidden layers of equal width, got {widths}"
        w = f.layers[0].out_features
        if w > _MAX_WIDTH:
            return f"hidden width {w} is over the kernel's {_MAX_WIDTH}"
        if max(f.in_sizes) > _MAX_IO:
            return f"input/hidden sizes {f.in_sizes} are over the kernel's {_MAX_IO}"
        if f.activation_name not in ACTIVATIONS:
            return f"activation {f.activation_name!r} is not one of {ACTIVATIONS}"
        return None

    def unsupported(self, f, args, argnums):
        dev = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))
        why = self._device_ok(dev) or self._model_why(f)
        if why:
            return why
        p = f.layers[0].weight
        if p.dtype not in (torch.float32, torch.float64):
            return f"f's parameters must be float32 or float64, got {p.dtype}"
        if any(isinstance(a, Tensor) and a.dtype != p.dtype for a in args):
            return f"inputs must have f's dtype {p.dtype}"
        return None

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        # Single calls: the fused single-call operator (its CUDA kernel is `triton_call.py`) where it
        # takes the call, else the closed form.
        from . import fused_call

        out = fused_call.value_and_grad(f, args, argnums, create_graph, keep_value_graph)
        if out is not None:
            return out
        return BACKENDS["closed_form"].value_and_grad(f, args, argnums, create_graph, keep_value_graph)

    # -- the whole-sequence path -----------------------------------------------------------------
    def config(self, f: MLP, x: Tensor) -> _Cfg:
        T, B, dx = x.shape
        dh, w = f.in_sizes[1], f.layers[0].out_features
        st = _triton_settings()
        if x.dtype == torch.float64:
            prec = "ieee"
        else:
            prec = st["precision"] or _TORCH_PRECISION.get(torch.get_float32_matmul_precision(), "ieee")
        wp = _pad(w)
        block_b = st["block_b"] or 16
        num_warps = st["num_warps"] or 8
        # At width 128 the hoisted weights fit on chip (the compiler keeps them in shared memory);
        # other widths re-read column blocks of W2 each step (measured faster on an H100 at 64).
        hoist = st["hoist"] if st["hoist"] is not None else wp == 128
        nb = min(st["width_block"] or (wp if hoist else 64 if wp > 64 else 32), wp)
        hoist = hoist and nb == wp and wp <= 128
        recompute = st["recompute"]
        if recompute is None:
            recompute = 3 * T * B * w * x.element_size() > st["save_bytes"]
        return _Cfg(dx, dh, w, f.activation_name, prec, block_b, num_warps, nb, hoist, recompute,
                    st["scratch_bytes"])

    def run_sequence(self, f, x, h0, valid, mode):
        if self.unsupported(f, (x, h0), (1,)) or "forward_ad" in call_context():
            return None
        check_input_sizes(f, (x, h0), "triton backend", ("x", "h"))
        T, B, _ = x.shape
        if T == 0 or B == 0:
            return None
        cfg = self.config(f, x)
        l1, l2, out = f.layers[0], f.layers[1], f.out
        params = (l1.weight, l1.bias, l2.weight, l2.bias, out.weight, out.bias)
        W1, b1, W2, b2, w3, b3 = (p.contiguous() if p is not None else None for p in params)
        xc, h0c = x.contiguous(), h0.contiguous()
        v = valid.contiguous().view(torch.uint8) if valid is not None else None
        # (Inside a torch.func transform a tensor reports no requires_grad whatever the levels around it.)
        wants_graph = torch.is_grad_enabled() and (functorch_active() or x.requires_grad or h0.requires_grad
                                                   or any(p is not None and p.requires_grad for p in params))
        cargs = _cfg_args(cfg)
        if not wants_graph:
            with torch.no_grad():
                Y, HS, _ = triton_rnn_forward(xc, h0c, v, W1, b1, W2, b2, w3.view(-1), b3, *cargs, False)
            return Y, HS
        if mode == "exact":
            Y, HS, _ = _FusedGradRNN.apply(xc, h0c, v, W1, b1, W2, b2, w3.view(-1), b3, cargs)
            return Y, HS
        # Detached: h is a constant by-product, so y is F evaluated once over all (t, b) pairs at the
        # kernel's hidden states, through ordinary autograd (h0 keeps its graph, as step by step).
        with torch.no_grad():
            _, HS, _ = triton_rnn_forward(xc, h0c, v, W1, b1, W2, b2, w3.view(-1), b3, *cargs, False)
        if valid is not None and h0.requires_grad:
            seen = valid.cumsum(0) > 0  # before a sample's first valid step its h is h0 itself
            HS = torch.where(seen.unsqueeze(-1), HS, h0.unsqueeze(0))
        Hprev = torch.cat([h0.unsqueeze(0), HS[:-1]], 0)
        y = f(x.reshape(T * B, -1), Hprev.reshape(T * B, -1)).view(T, B)
        if valid is not None:
            y = torch.where(valid, y, torch.zeros_like(y))
        return y, HS


def fused_gradrnn(
    f: MLP, x: Tensor, h0: Tensor | None = None, valid: Tensor | None = None, mode: str = "exact",
    backend: TritonBackend | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the fused kernels directly: `(y (T, B), hs (T, B, hidden))` for x (T, B, input_size).

    The same as `GradRNN(..., F=f, backend="triton")` without the module; raises ValueError where
    the kernels do not apply.
    """
    b = backend or BACKENDS["triton"]
    if h0 is None:
        h0 = x.new_zeros(x.shape[1], f.in_sizes[1])
    why = b.unsupported(f, (x, h0), (1,))
    if why:
        raise ValueError(f"fused_gradrnn: the triton kernels cannot run this call: {why}")
    return b.run_sequence(f, x, h0, valid, mode)


register_backend(TritonBackend(), override=True)

__all__ = ["TritonBackend", "fused_gradrnn", "ACTIVATIONS", "PRECISIONS"]

from . import triton_call as _triton_call  # noqa: E402, F401  (the single-call operator's CUDA kernels)
