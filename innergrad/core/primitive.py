"""The core primitive: value and per-sample gradient of a scalar function, differentiable for training.

Public functions are thin: they validate, set up grad mode (the gradient is computed even under
`torch.no_grad()` / `torch.inference_mode()`), pick a backend and hand over. Differentiation itself
lives in `backends.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import overload

import torch
from torch import nn

from .backends import BACKENDS, Backend, InputError, check_context, check_output, choose_backend, get_backend
from .checks import (
    CouplingError,
    batch_mixing_modules,
    check_input_sizes,
    debug_enabled,
    randomized_coupling_check,
    warn_if_kinked,
)

Tensor = torch.Tensor
MODES = ("exact", "detached")


def _argnums(argnums: int | Sequence[int], n: int, who: str) -> tuple[tuple[int, ...], bool]:
    single = isinstance(argnums, int)
    nums: tuple[int, ...] = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or not all(isinstance(i, int) and not isinstance(i, bool) for i in nums):
        raise ValueError(f"{who}: argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    out = []
    for i in nums:
        if not -n <= i < n:
            raise ValueError(
                f"{who}: argnums={argnums!r} is out of range for {n} positional argument(s); "
                f"valid indices are 0..{n - 1} (or negative from the end)."
            )
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f"{who}: argnums {argnums!r} names an argument twice")
    return tuple(out), single


def _check_args(args: Sequence, argnums: tuple[int, ...], who: str) -> None:
    for i in argnums:
        a = args[i]
        if not isinstance(a, Tensor):
            raise TypeError(
                f"{who}: argument {i} must be a torch.Tensor to differentiate it, got {type(a).__name__}; "
                "wrap it with torch.as_tensor(..., dtype=torch.float32)."
            )
        if not (a.is_floating_point() or a.is_complex()):
            raise TypeError(
                f"{who}: argument {i} has dtype {a.dtype}, but gradients need a floating dtype; "
                "convert it with `.float()` (or `.double()`) before the call."
            )


def _check_mode(mode: str, who: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{who}: mode must be one of {MODES}, got {mode!r}")


def _autograd_ready(a):
    # Inference tensors cannot enter an autograd graph; a clone made outside inference mode can.
    # (Traced code sees no inference tensors, and Dynamo cannot ask.)
    if torch.compiler.is_compiling():
        return a
    return a.clone() if isinstance(a, Tensor) and a.is_inference() else a


@contextmanager
def _grad_enabled():
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _resolve(f, args, argnums, backend: str | Backend, debug: bool | None, who: str, hessians: bool = False) -> Backend:
    mixing = batch_mixing_modules(f)
    if mixing:
        raise CouplingError(
            f"{who}: f contains {', '.join(sorted(set(mixing)))} using batch statistics, so sample i's "
            "output depends on every sample and 'the gradient of f_i w.r.t. its own input' is not what "
            "any backend would compute. Put the module in eval() (running statistics), or use a "
            "per-sample normalisation (LayerNorm, GroupNorm)."
        )
    if isinstance(backend, Backend):
        b = backend
    elif backend == "auto":
        b = choose_backend(f, args, argnums, hessians=hessians)
    else:
        b = get_backend(backend)
        why = b.hessian_unsupported(f, args, argnums) if hessians else b.unsupported(f, args, argnums)
        if why:
            raise ValueError(f"{who}: backend {b.name!r} cannot evaluate this f: {why}. Use backend='auto'.")
        check_context(b, f, args, argnums, who, hessians=hessians)
    if not b.per_sample and debug_enabled(debug) and randomized_coupling_check(f, args, argnums):
        if backend != "auto":
            raise CouplingError(
                f"{who}: f mixes samples of the batch (a random reweighting of the outputs changed the "
                f"gradients of other samples), so backend {b.name!r}'s batch-sum trick is wrong here. "
                "Use backend='func' (each sample evaluated alone) or make f per-sample."
            )
        warnings.warn(
            f"{who}: f mixes samples of the batch; falling back from {b.name!r} to the per-sample 'func' "
            "backend (each sample evaluated alone).",
            stacklevel=3,
        )
        b = choose_backend(f, args, argnums, per_sample=True, hessians=hessians)
    return b


def _validate(f, args, argnums, mode, who) -> tuple[tuple[int, ...], bool]:
    if not callable(f):
        raise TypeError(f"{who}: f must be callable (a function or nn.Module), got {type(f).__name__}")
    nums, single = _argnums(argnums, len(args), who)
    _check_args(args, nums, who)
    _check_mode(mode, who)
    check_input_sizes(f, args, who)
    return nums, single


def _value_and_grad(f, args, argnums, mode, backend, debug, who):
    nums, single = _validate(f, args, argnums, mode, who)
    # Inside inference_mode grad mode reads as off; both mean "no graph wanted".
    grad_on = torch.is_grad_enabled()
    create_graph = grad_on and mode == "exact"
    with _grad_enabled():
        xs = tuple(_autograd_ready(a) for a in args)
        b = _resolve(f, xs, nums, backend, debug, who)
        if create_graph:
            warn_if_kinked(f, who)
        try:
            value, grads = b.value_and_grad(f, xs, nums, create_graph, grad_on)
        except InputError as e:
            raise InputError(f"{who}: {e}") from None
        value = check_output(value, xs, nums)
    if value.dim() == 2:
        value = value.squeeze(1)
    if not grad_on:
        value = value.detach()
    if not create_graph:
        grads = tuple(g.detach() for g in grads)
    return value, (grads[0] if single else grads)


# The return type follows `argnums`: one int gives one gradient, a tuple of ints a tuple of them.
@overload
def value_and_grad(
    f: Callable[..., Tensor], *args: Tensor, argnums: int = 0, mode: str = "exact", backend: str = "auto",
    debug: bool | None = None,
) -> tuple[Tensor, Tensor]: ...


@overload
def value_and_grad(
    f: Callable[..., Tensor], *args: Tensor, argnums: tuple[int, ...] | list[int], mode: str = "exact",
    backend: str = "auto", debug: bool | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]: ...


def value_and_grad(
    f: Callable[..., Tensor],
    *args: Tensor,
    argnums: int | Sequence[int] = 0,
    mode: str = "exact",
    backend: str = "auto",
    debug: bool | None = None,
) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
    """Value of `f(*args)` and its per-sample gradient w.r.t. `args[argnums]`.

    **Arguments:**

    - `f`: maps a batch to one scalar per sample, shape `(B,)` or `(B, 1)`; or a 0-d scalar for
      unbatched input. A function or an `nn.Module`.
    - `*args`: tensors; differentiated ones need a floating dtype and, when batched, the batch in dim 0.
      They may be non-leaf, not require grad, or be inference tensors: none is modified.
    - `argnums`: which argument(s) to differentiate. An int gives one gradient, a tuple a tuple.
    - `mode`: `"exact"` (default) returns a differentiable gradient when grad mode is on, so a loss on
      it trains `f`'s parameters through every second-order term. `"detached"` returns the gradient
      as a constant by-product (as if `.detach()`-ed) while the value keeps its graph: one cheap
      backward, first-order training only. Use exact when the gradient feeds a loss (gradient-RNN
      hidden states, Hamiltonian dynamics, forces); detached when it only steers (inference, sampling,
      or a deliberate approximation).
    - `backend`: `"auto"` or a name from `ig.backends()`.
    - `debug`: also run a randomized check that samples do not interact (default: `INNERGRAD_DEBUG`).

    **Returns:** `(value, grad)`: value of shape `(B,)` (a `(B, 1)` output is squeezed) or `()`, and
    gradients shaped like their arguments. Under `torch.no_grad()` / `inference_mode()` both are
    computed and returned detached. An argument `f` does not use gets zeros.
    """
    return _value_and_grad(f, args, argnums, mode, backend, debug, "innergrad.value_and_grad")


@overload
def grad(
    f: Callable[..., Tensor], *args: Tensor, argnums: int = 0, mode: str = "exact", backend: str = "auto",
    debug: bool | None = None,
) -> Tensor: ...


@overload
def grad(
    f: Callable[..., Tensor], *args: Tensor, argnums: tuple[int, ...] | list[int], mode: str = "exact",
    backend: str = "auto", debug: bool | None = None,
) -> tuple[Tensor, ...]: ...


def grad(
    f: Callable[..., Tensor],
    *args: Tensor,
    argnums: int | Sequence[int] = 0,
    mode: str = "exact",
    backend: str = "auto",
    debug: bool | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Per-sample gradient of `f` w.r.t. `args[argnums]`; see `value_and_grad`."""
    return _value_and_grad(f, args, argnums, mode, backend, debug, "innergrad.grad")[1]


class Gradient(nn.Module):
    """Wrap a scalar module so that `forward(*args)` returns `(value, d module / d args[argnums])`.

    ```python
    G = ig.Gradient(energy, argnums=0)     # energy: (B, d) -> (B,)
    E, dE = G(x)                           # E: (B,), dE: (B, d)
    ```
    Parameters of the wrapped module are this module's parameters, so optimisers see them.
    """

    def __init__(
        self, module: nn.Module, argnums: int | Sequence[int] = 0, mode: str = "exact", backend: str = "auto"
    ):
        super().__init__()
        _check_mode(mode, "innergrad.Gradient")
        if backend != "auto" and backend not in BACKENDS:
            get_backend(backend)  # raises the listing error
        self.f = module
        self.argnums = argnums
        self.mode = mode
        self.backend = backend

    def forward(self, *args: Tensor):
        return _value_and_grad(self.f, args, self.argnums, self.mode, self.backend, None, "innergrad.Gradient")

    def extra_repr(self) -> str:
        return f"argnums={self.argnums}, mode={self.mode!r}, backend={self.backend!r}"


def _as_tuple(x, name: str, who: str) -> tuple[Tensor, ...]:
    t = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    for i, a in enumerate(t):
        if not isinstance(a, Tensor) or not a.is_floating_point():
            got = a.dtype if isinstance(a, Tensor) else type(a).__name__
            raise TypeError(f"{who}: {name}[{i}] must be a floating-point tensor, got {got}")
    return t


def jvp(f: Callable[..., Tensor], primals, tangents) -> tuple[Tensor, Tensor]:
    """Forward-mode Jacobian-vector product: `(f(*primals), J_f(primals) @ tangents)`.

    One forward pass carries the tangent along, so it costs about one evaluation of `f` whatever the
    output size: the choice when inputs are few or a directional derivative is all you need.
    """
    who = "innergrad.jvp"
    ps, ts = _as_tuple(primals, "primals", who), _as_tuple(tangents, "tangents", who)
    if len(ps) != len(ts):
        raise ValueError(f"{who}: got {len(ps)} primals but {len(ts)} tangents; give one tangent per primal")
    for i, (p, t) in enumerate(zip(ps, ts)):
        if p.shape != t.shape:
            raise ValueError(
                f"{who}: tangent {i} has shape {tuple(t.shape)} but its primal has {tuple(p.shape)}; "
                "they must match"
            )
    with torch.inference_mode(False):
        ps = tuple(_autograd_ready(p) for p in ps)
        ts = tuple(_autograd_ready(t) for t in ts)
        value, tangent = torch.func.jvp(f, ps, ts)[:2]
        return value, tangent


def _second_order(f, args, argnums, mode, backend, debug, who, tangents=None, method="auto"):
    """`(value, grads, H or hvps, single)`: the shared body of hessian, value_grad_and_hessian and hvp."""
    nums, single = _validate(f, args, argnums, mode, who)
    grad_on = torch.is_grad_enabled()
    create_graph = grad_on and mode == "exact"
    with _grad_enabled():
        xs = tuple(_autograd_ready(a) for a in args)
        b = _resolve(f, xs, nums, backend, debug, who, hessians=True)
        if create_graph:
            warn_if_kinked(f, who)
        try:
            if tangents is None:
                value, grads, second = b.value_grad_and_hessian(f, xs, nums, create_graph, grad_on)
            else:
                ts = tuple(_autograd_ready(t) for t in tangents)
                value, grads, second = b.value_grad_and_hvp(f, xs, nums, ts, create_graph, grad_on, method)
        except InputError as e:
            raise InputError(f"{who}: {e}") from None
        value = check_output(value, xs, nums)
        if tangents is None:
            second = _blocks(second, xs, nums, value.dim() > 0)
    if value.dim() == 2:
        value = value.squeeze(1)
    if not grad_on:
        value = value.detach()
    if not create_graph:
        grads = tuple(g.detach() for g in grads)
        second = tuple(tuple(h.detach() for h in row) if isinstance(row, tuple) else row.detach() for row in second)
    return value, tuple(grads), second, single


def _blocks(H: Tensor, xs, nums, batched: bool) -> tuple[tuple[Tensor, ...], ...]:
    """Split the flat `(B, n, n)` Hessian into blocks `(B, *shape_i, *shape_j)` for each pair of arguments."""
    shapes = [xs[i].shape[1:] if batched else xs[i].shape for i in nums]
    sizes = [s.numel() for s in shapes]
    lead = H.shape[:1] if batched else ()
    return tuple(
        tuple(b.reshape(*lead, *shapes[i], *shapes[j]) for j, b in enumerate(row.split(sizes, -1)))
        for i, row in enumerate(H.split(sizes, -2))
    )


def hessian(
    f: Callable[..., Tensor],
    *args: Tensor,
    argnums: int | Sequence[int] = 0,
    mode: str = "exact",
    backend: str = "auto",
    debug: bool | None = None,
) -> Tensor | tuple[tuple[Tensor, ...], ...]:
    """Per-sample Hessian of `f` w.r.t. `args[argnums]`.

    ```python
    H = ig.hessian(mlp, x)                               # x: (B, n) -> H: (B, n, n)
    (Hqq, Hqv), (Hvq, Hvv) = ig.hessian(L, q, v, argnums=(0, 1))
    ```

    **Arguments:** as `value_and_grad`. `f` maps a batch to one scalar per sample, `(B,)` or
    `(B, 1)` (or is unbatched, 0-d output).

    **Returns:** for an int `argnums`, `(B, *e, *e)` where `args[argnums]` is `(B, *e)`; for a tuple,
    the blocks as nested tuples (JAX's and torch.func's layout): `H[i][j] = d2f / dx_i dx_j`, shaped
    `(B, *e_i, *e_j)`. Unbatched f: the same without `B`.

    **How:** an `ig.MLP` gets the closed form (`backend="closed_form"`): the Jacobians of the
    pre-activations are carried forward projected on the n requested columns of the first layer
    and weighted by `s''` and the backward vector, O(B * width^2 * n); the result is a first-order
    graph in the parameters, so `mode="exact"` trains through it with one backward. Any other `f`:
    `"autograd"` (n forward-mode jvps of the batch-sum gradient under one vmap, reverse mode where an
    op lacks forward mode) or `"func"` (each sample alone, `vmap(jacfwd(grad(f)))`). Differentiable
    in exact mode with grad mode on; detached in `"detached"` mode and under `no_grad`.
    """
    who = "innergrad.hessian"
    _, _, H, single = _second_order(f, args, argnums, mode, backend, debug, who)
    return H[0][0] if single else H


def value_grad_and_hessian(
    f: Callable[..., Tensor],
    *args: Tensor,
    argnums: int | Sequence[int] = 0,
    mode: str = "exact",
    backend: str = "auto",
    debug: bool | None = None,
):
    """`(value, grad, hessian)` of `f` from one pass: what a Lagrangian network's forward needs.

    `grad` and `hessian` follow `argnums` as in `value_and_grad` and `hessian`. The closed form
    shares one forward of an `ig.MLP` between the three; `mode="detached"` keeps the value's graph.
    """
    who = "innergrad.value_grad_and_hessian"
    value, grads, H, single = _second_order(f, args, argnums, mode, backend, debug, who)
    return (value, grads[0], H[0][0]) if single else (value, grads, H)


def hvp(
    f: Callable[..., Tensor],
    x: Tensor | Sequence[Tensor],
    v: Tensor | Sequence[Tensor],
    method: str = "auto",
    *,
    argnums: int | Sequence[int] = 0,
    mode: str = "exact",
    backend: str = "auto",
    debug: bool | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """Per-sample Hessian-vector product, shaped like the differentiated argument(s).

    ```python
    Hv = ig.hvp(f, x, v)                                 # f(x); x, v: (B, n)
    Hvv_w = ig.hvp(L, (q, qd), w, argnums=1)             # d2L/dqd2 w, for a two-input L(q, qd)
    hq, hqd = ig.hvp(L, (q, qd), (wq, wqd), argnums=(0, 1))
    ```

    **Arguments:**

    - `f`: as `value_and_grad`: `(B,)` (samples independent) or unbatched (0-d output).
    - `x`: the argument tensor, or a tuple of all of `f`'s arguments.
    - `v`: the tangent, shaped like `x[argnums]`; a tuple of tangents for a tuple `argnums`.
    - `method`: how a general backend differentiates the gradient: `"forward"` (a jvp of the
      gradient, the cheapest), `"reverse"` (double backward; works for every op), or `"auto"`
      (forward, falling back to reverse where an op lacks a forward-mode formula). With
      `backend="auto"`, an explicit method skips the closed form and uses `"autograd"`.
    - `argnums`, `mode`, `backend`, `debug`: as `value_and_grad`. An `ig.MLP` gets the closed
      form (one tangent forward and one adjoint pass through the stored activations).

    **Returns:** for an int `argnums`, `H_ii v`; for a tuple, `(sum_j H_ij v_j for each i)`.
    Differentiable when grad mode is on (exact mode).
    """
    who = "innergrad.hvp"
    if method not in ("auto", "forward", "reverse"):
        raise ValueError(f"{who}: method must be 'auto', 'forward' or 'reverse', got {method!r}")
    args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    nums, single = _argnums(argnums, len(args), who)
    vs = _as_tuple(v, "v", who)
    if len(vs) != len(nums):
        raise ValueError(f"{who}: got {len(vs)} tangent(s) for argnums={argnums!r}; give one tangent per "
                         "differentiated argument")
    _check_args(args, nums, who)
    for i, t in zip(nums, vs):
        if t.shape != args[i].shape:
            raise ValueError(f"{who}: v has shape {tuple(t.shape)} but argument {i} has {tuple(args[i].shape)}; "
                             "they must match")
    if method != "auto" and backend == "auto":
        backend = "autograd"
    hv = _second_order(f, args, argnums, mode, backend, debug, who, tangents=vs, method=method)[2]
    return hv[0] if single else tuple(hv)


def divergence(
    field: Callable[[Tensor], Tensor],
    x: Tensor,
    method: str = "exact",
    num_samples: int = 1,
    noise: str = "rademacher",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample divergence `sum_i d field_i / d x_i` of a vector field, shape `(B,)`.

    `field` maps `(B, *event)` to the same shape (a score model, a CNF's velocity). Methods:

    - `"exact"`: one backward per event dimension (`D` of them).
    - `"hutchinson"`: unbiased estimate `E[eps^T J eps]` from `num_samples` probe vectors
      (`"rademacher"` or `"gaussian"`), one backward each.
    - `"elementwise"`: one forward-mode jvp with a tangent of ones, `J 1`, which is the Jacobian's
      diagonal only when `field` acts elementwise (`out_i` depends on `x_i` alone): the shortcut for
      elementwise layers. Wrong for any other field.

    Differentiable when grad mode is on (for training on the divergence).
    """
    who = "innergrad.divergence"
    if method not in ("exact", "hutchinson", "elementwise"):
        raise ValueError(f"{who}: method must be 'exact', 'hutchinson' or 'elementwise', got {method!r}")
    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"{who}: noise must be 'rademacher' or 'gaussian', got {noise!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{who}: num_samples must be a positive int, got {num_samples!r}")
    _as_tuple(x, "x", who)
    if x.dim() < 2:
        raise ValueError(f"{who}: x must be batched, shape (B, D, ...), got shape {tuple(x.shape)}")
    grad_on = torch.is_grad_enabled()
    if method == "elementwise":
        with torch.inference_mode(False):
            out, diag = torch.func.jvp(field, (_autograd_ready(x),), (torch.ones_like(x),))[:2]
        if out.shape != x.shape:
            raise ValueError(f"{who}: field must map x of shape {tuple(x.shape)} to the same shape, got "
                             f"{tuple(out.shape)}")
        return diag.reshape(x.shape[0], -1).sum(1)
    with _grad_enabled():
        x = _autograd_ready(x)
        xs = x.view_as(x) if x.requires_grad else x.detach().requires_grad_()
        out = field(xs)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{who}: field must map x of shape {tuple(x.shape)} to the same shape, got {got}")
        B = x.shape[0]
        flat = out.reshape(B, -1)
        div: Tensor | float = 0.0
        if method == "exact":
            for i in range(flat.shape[1]):
                (gi,) = torch.autograd.grad(flat[:, i].sum(), xs, retain_graph=True, create_graph=grad_on)
                div = div + gi.reshape(B, -1)[:, i]
        else:
            for _ in range(num_samples):
                if noise == "gaussian":
                    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                else:
                    eps = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
                (vjp_,) = torch.autograd.grad(out, xs, eps, retain_graph=True, create_graph=grad_on)
                div = div + (vjp_ * eps).reshape(B, -1).sum(1)
            div = div / num_samples
    assert isinstance(div, Tensor)  # at least one term: D >= 1, num_samples >= 1
    return div if grad_on else div.detach()
