"""`value_and_grad` of an `ig.MLP` as ONE fused operator with a hand-written backward (single calls).

A single call `(F(z), dF/dz)` is the gradient-RNN's step with T = 1 and nothing carried: `h_0 = z`,
no `x`, and the "new hidden state" `g_1 W_1` is the input-gradient itself. So this module runs the
sequence operators' math (`fused.py`: its C++ kernel on CPU, its Python loop elsewhere) on
`x = (1, B, 0)`, `h_0 = z`, and wraps it in its own operators:

- `innergrad::mlp_value_and_grad` `(z, params) -> (y (B,), dF/dz (B, din), saved...)`: the forward
  in blocks of the batch on the cores, keeping each layer's output (or pre-activation) and the
  gradient chain's products for the backward;
- `innergrad::mlp_value_and_grad_backward`: the hand-written backward (second-order terms through
  `s''`), weight gradients summed per thread while each block's factors are in cache.

Both have fake implementations (torch.compile, torch.export) and vmap rules; `_FusedCallFn` joins
them into one differentiable node whose backward, when a graph of it is wanted (create_graph, a
gradient penalty, MAML), is the closed form's vjp (`fused.reference_sequence` with T = 1).

Why it is faster than the closed form and autograd: the same six large matrix products per step,
but the elementwise work (activation, s', s'', the chain's products) runs in fused loops over
blocks that stay in cache, the batch blocks run on separate cores without intra-op barriers, and
nothing of the closed form's graph is kept (less memory). Small batches do not gain (the call's
fixed costs dominate), so the "fused" backend uses this operator from `fused_call_min_rows` up
(a scoped setting; the default follows the measurement in benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.backends import call_context, functorch_active
from ..core.mlp import MLP
from ..core.settings import constant_when_traced, current_settings
from . import cpu as cpu_kernel
from . import fused as fz

Tensor = torch.Tensor

#: Calls of the operators' real implementations (the tests check that the fused path ran with them).
OP_CALLS = {"forward": 0, "backward": 0}


def _no_x(z: Tensor) -> Tensor:
    return z.new_empty(1, z.shape[0], 0)


def _spec(activation: str, n_params: int) -> fz.Spec:
    return fz.spec_for(activation, 0, n_params)


def _check(z: Tensor, params: Sequence[Tensor], activation: str) -> None:
    """ValueError unless the operator's arguments have the sizes, dtypes and devices the loops index by
    (the backend checks them against F first; this guards direct calls of the operators)."""
    if activation not in fz.SECOND_DERIVATIVES:
        raise ValueError(f"mlp_value_and_grad: unknown activation {activation!r}")
    if z.dim() != 2:
        raise ValueError(f"mlp_value_and_grad: z must be (B, input_size), got shape {tuple(z.shape)}")
    L = (len(params) - 1) // 2
    if L < 1:
        raise ValueError(f"mlp_value_and_grad: params must be [W_1, b_1, ..., w_o(, b_o)], got {len(params)}")
    nin = z.shape[1]
    for k in range(L):
        W, b = params[2 * k], params[2 * k + 1]
        if W.dim() != 2 or W.shape[1] != nin or tuple(b.shape) != (W.shape[0],):
            raise ValueError(f"mlp_value_and_grad: W_{k + 1} must be (n, {nin}) with a bias (n,), got "
                             f"{tuple(W.shape)} and {tuple(b.shape)}")
        nin = W.shape[0]
    if params[2 * L].numel() != nin or (len(params) % 2 == 0 and params[-1].numel() != 1):
        raise ValueError(f"mlp_value_and_grad: w_o must have {nin} entries and b_o one")
    for p in params:
        if p.dtype != z.dtype or p.device != z.device:
            raise ValueError(f"mlp_value_and_grad: every parameter must be {z.dtype} on {z.device}, got "
                             f"{p.dtype} on {p.device}")


@torch.library.custom_op(
    "innergrad::mlp_value_and_grad", mutates_args=(),
    schema="(Tensor z, Tensor[] params, str activation, bool save) -> (Tensor, Tensor, Tensor[], Tensor[])",
)
def mlp_value_and_grad(z, params, activation, save):
    """`(y (B,), dF/dz (B, din), S, Q)` for `F = ig.MLP` with these parameters (`fused.mlp_params`
    order); S, Q (each (B, n_k)) are what the backward needs, empty without `save`."""
    OP_CALLS["forward"] += 1
    _check(z, params, activation)
    tc = _triton_on_cpu(activation, z.dtype)
    if tc is not None:
        return tc.forward(z, params, activation, save)
    return _loop_forward(z, params, activation, save)


def _loop_forward(z, params, activation, save):
    """The C++ kernel on CPU (where it covers the activation and dtype), else the Python loop."""
    y, hs, S, Q = fz.sequence_forward(_spec(activation, len(params)), _no_x(z), z, None, params, save)
    return y[0], hs[0], [s[0] for s in S], [q[0] for q in Q]


def _triton_on_cpu(activation: str, dtype: torch.dtype):
    """`triton_call` where the Triton kernels run CPU calls through the interpreter (tests), else None."""
    if not current_settings().triton_interpret_on_cpu:
        return None
    try:
        from . import triton_call
    except ImportError:
        return None
    return triton_call if triton_call.interpreting() and triton_call.supports(activation, dtype) else None


@mlp_value_and_grad.register_fake
def _(z, params, activation, save):
    B = z.shape[0]
    widths = [params[2 * k].shape[0] for k in range((len(params) - 1) // 2)]
    S = [z.new_empty(B, n) for n in widths] if save else []
    Q = [z.new_empty(B, n) for n in widths[:-1]] if save else []
    return z.new_empty(B), z.new_empty(z.shape), S, Q


@torch.library.custom_op(
    "innergrad::mlp_value_and_grad_backward", mutates_args=(),
    schema="(Tensor z, Tensor gz, Tensor[] S, Tensor[] Q, Tensor[] params, Tensor? gy, Tensor? ggz, "
           "str activation, bool need_z, bool need_params) -> (Tensor, Tensor[])",
)
def mlp_value_and_grad_backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params):
    """`(dL/dz, [dL/dparams])` given `gy = dL/dy` and `ggz = dL/d(dF/dz)` (None: zero); what is not
    needed comes back empty."""
    OP_CALLS["backward"] += 1
    _check(z, params, activation)
    _check_saved(z, gz, S, Q, params, gy, ggz)
    tc = _triton_on_cpu(activation, z.dtype)
    if tc is not None:
        return tc.backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params)
    return _loop_backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params)


def _check_saved(z, gz, S, Q, params, gy, ggz) -> None:
    B, L = z.shape[0], (len(params) - 1) // 2
    if len(S) != L or len(Q) != L - 1:
        raise ValueError(f"mlp_value_and_grad_backward: {L} layers need {L} saved arrays and {L - 1} chain "
                         f"products, got {len(S)} and {len(Q)}")
    want = [("gz", gz, z.shape[1]), ("gy", gy, None), ("ggz", ggz, z.shape[1])]
    want += [("S", s, params[2 * k].shape[0]) for k, s in enumerate(S)]
    want += [("Q", q, params[2 * k].shape[0]) for k, q in enumerate(Q)]
    for name, t, n in want:
        if t is None:
            continue
        ok = t.shape == (B,) if n is None else (t.dim() == 2 and t.shape == (B, n))
        if not ok or t.dtype != z.dtype or t.device != z.device:
            raise ValueError(f"mlp_value_and_grad_backward: {name} must have {B} rows"
                             f"{'' if n is None else f' of {n}'}, {z.dtype} on {z.device}; got {tuple(t.shape)} "
                             f"{t.dtype} on {t.device}")


def _loop_backward(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params):
    one = lambda t: None if t is None else t.reshape(1, *t.shape).contiguous()  # noqa: E731
    _, dz, grads = fz.sequence_backward(
        _spec(activation, len(params)), _no_x(z), z, None, one(gz), [one(s) for s in S], [one(q) for q in Q],
        params, one(gy), one(ggz), False, need_z, need_params)
    return z.new_empty(0) if dz is None else dz, grads or []


@mlp_value_and_grad_backward.register_fake
def _(z, gz, S, Q, params, gy, ggz, activation, need_z, need_params):
    return z.new_empty(z.shape) if need_z else z.new_empty(0), [p.new_empty(p.shape) for p in params] if need_params \
        else []


@mlp_value_and_grad.register_vmap
def _(info, in_dims, z, params, activation, save):
    zd, pd = in_dims[:2]
    if any(d is not None for d in pd):  # each member has its own F (an ensemble): one call each
        return fz._per_member(mlp_value_and_grad, info, in_dims, z, params, activation, save)
    # One F for all members: they are more rows of the batch (samples never mix).
    n = info.batch_size
    y, gz, S, Q = mlp_value_and_grad(fz._rows(z, zd, n, 0), params, activation, save)
    split = [t.view(n, -1, *t.shape[1:]) for t in (y, gz, *S, *Q)]
    return ((split[0], split[1], split[2:2 + len(S)], split[2 + len(S):]), (0, 0, [0] * len(S), [0] * len(Q)))


@mlp_value_and_grad_backward.register_vmap
def _(info, in_dims, *args):
    return fz._per_member(mlp_value_and_grad_backward, info, in_dims, *args)


class _FusedCallFn(torch.autograd.Function):
    """`(z, *params) -> (y, dF/dz, *saved)`; the saved activations are non-differentiable outputs, so
    that torch.func transforms (which need `setup_context`) keep them for the backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(activation, z, *params):
        y, gz, S, Q = mlp_value_and_grad(z, list(params), activation, True)
        return (y, gz, *S, *Q)

    @staticmethod
    def setup_context(ctx, inputs, output):
        activation, z, *params = inputs
        ctx.activation, ctx.n_layers = activation, (len(output) - 1) // 2
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)  # an unused output (often y) then costs nothing
        ctx.save_for_backward(z, output[1], *output[2:], *params)

    @staticmethod
    def backward(ctx, gy, ggz, *_):
        z, gz, *rest = ctx.saved_tensors
        L = ctx.n_layers
        S, Q, params = rest[:L], rest[L:2 * L - 1], rest[2 * L - 1:]
        need = ctx.needs_input_grad
        need_p = need[2:]
        if gy is None and ggz is None:
            return (None,) * len(need)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # A graph of this backward is wanted: differentiate the closed-form recomputation (T = 1).
            grads = fz._reference_vjp(ctx.activation, _no_x(z), z, None, params,
                                      None if gy is None else gy.unsqueeze(0),
                                      None if ggz is None else ggz.unsqueeze(0), (False, need[1], *need_p))
            return (None, *grads[1:])
        dz, gp = mlp_value_and_grad_backward(z, gz, list(S), list(Q), list(params), gy, ggz, ctx.activation,
                                             need[1], any(need_p))
        gp = [g if n else None for g, n in zip(gp, need_p)] if gp else [None] * len(need_p)
        if gy is None and len(params) % 2 == 0:
            gp[-1] = None  # b_o reaches only y: no gradient, as autograd has it (not zeros)
        return (None, dz if need[1] else None, *gp)


@constant_when_traced
def _triton_takes(activation: str, dtype: torch.dtype) -> bool:
    try:
        from . import triton_call
    except ImportError:
        return False
    return triton_call.supports(activation, dtype)


@constant_when_traced
def _kernel_missing() -> bool:
    return cpu_kernel.ops() is None


@constant_when_traced
def _call_settings() -> tuple[int, bool, bool]:
    """`(fused_call_min_rows, cpu_kernel, triton_interpret_on_cpu)` in force: read when torch.compile
    traces (Dynamo cannot trace a ContextVar), a constant of the compiled code like any other setting
    it was traced with."""
    st = current_settings()
    return st.fused_call_min_rows, st.cpu_kernel, st.triton_interpret_on_cpu


def call_unsupported(f, args: Sequence[Tensor]) -> str | None:
    """Why the fused operator does not take this call (the closed form then runs it), or None."""
    why = fz.fused_unsupported(f)
    if why:
        return why
    p = f.out.weight
    if p.device.type == "cuda":
        if not _triton_takes(f.activation_name, p.dtype):
            return "on CUDA the fused single-call operator needs triton and one of its activations/dtypes"
    elif p.device.type != "cpu":
        return f"the fused single-call operator runs on CPU and CUDA, not {p.device.type}"
    if len(args) != len(f.in_sizes) or not args:
        return f"F takes {len(f.in_sizes)} inputs, got {len(args)}"
    B = args[0].shape[0] if isinstance(args[0], Tensor) and args[0].dim() == 2 else -1
    for a in args:
        if not isinstance(a, Tensor) or a.dim() != 2 or a.shape[0] != B:
            return "the inputs must be batches (B, n_i) with one B (unbatched and extra dimensions: closed form)"
        if a.dtype != p.dtype or a.device != p.device:
            return f"the inputs must be F's {p.dtype} on {p.device}"
    interpreted = p.device.type == "cpu" and _call_settings()[2] and _triton_takes(f.activation_name, p.dtype)
    if p.device.type == "cpu" and _call_settings()[1] and not interpreted and (
            not cpu_kernel.supports(f.activation_name, p.dtype) or _kernel_missing()):
        return f"the C++ kernel does not run {f.activation_name}/{p.dtype} here (the closed form is as fast)"
    return None


def value_and_grad(f: MLP, args: Sequence[Tensor], argnums: tuple[int, ...], create_graph: bool,
                   keep_value_graph: bool) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """`(F(*args), dF/dargs[argnums])` through the fused operator, or None where the closed form runs
    the call (see `call_unsupported`, forward-mode AD, detached mode, batches under `fused_call_min_rows`)."""
    if call_unsupported(f, args) or "forward_ad" in call_context():
        return None
    B = args[0].shape[0]
    if B == 0 or B < _call_settings()[0]:
        return None
    params = fz.mlp_params(f)
    z = f._concat(tuple(args))
    grad_on = torch.is_grad_enabled() and (functorch_active() or z.requires_grad or
                                           any(p.requires_grad for p in params))
    if grad_on and not create_graph:
        if keep_value_graph:
            return None  # detached mode: the value's graph and a constant gradient, the closed form's way
        grad_on = False
    if grad_on:
        y, gz, *_ = _FusedCallFn.apply(f.activation_name, z, *params)
    else:
        with torch.no_grad():
            y, gz, _, _ = mlp_value_and_grad(z.detach(), [p.detach() for p in params], f.activation_name, False)
    offsets = [0]
    for s in f.in_sizes:
        offsets.append(offsets[-1] + s)
    grads = tuple(gz if len(f.in_sizes) == 1 else gz[:, offsets[i]:offsets[i + 1]] for i in argnums)
    return y, grads


__all__ = ["mlp_value_and_grad", "mlp_value_and_grad_backward", "value_and_grad", "call_unsupported", "OP_CALLS"]
