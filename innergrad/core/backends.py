"""The backend registry: each way of computing (value, per-sample gradient) is one small class.

A backend overrides one method, `value_and_grad`, and declares what it can do. The public functions
in `primitive.py` prepare the inputs (grad mode, inference tensors, validation) and pick a backend;
backends only differentiate. To add one: subclass `Backend`, then `register_backend(MyBackend())`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

Tensor = torch.Tensor


#: What the caller's context may ask of a backend, read from PyTorch's state by `call_context`.
CONTEXTS = {
    "vmap": "torch.func.vmap",
    "grad_transform": "a torch.func gradient transform (grad, vjp, jacrev)",
    "forward_ad": "forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad)",
    "compile": "torch.compile / torch.export tracing",
    "create_graph": "create_graph=True (a differentiable gradient)",
}


def call_context(create_graph: bool = False) -> frozenset[str]:
    """The contexts of `CONTEXTS` the current call runs in (functorch transforms, tracing, ...)."""
    if torch.compiler.is_compiling():
        # Dynamo runs functorch transforms itself; what the traced code may use is what tracing allows.
        return frozenset({"compile", "create_graph"} if create_graph else {"compile"})
    ctx = {"create_graph"} if create_graph else set()
    for interp in torch._C._functorch.get_interpreter_stack() or ():
        kind = interp.key()
        if kind == torch._C._functorch.TransformType.Vmap:
            ctx.add("vmap")
        elif kind == torch._C._functorch.TransformType.Grad:
            ctx.add("grad_transform")
        elif kind == torch._C._functorch.TransformType.Jvp:
            ctx.add("forward_ad")
    if torch.autograd.forward_ad._current_level >= 0:
        ctx.add("forward_ad")
    return frozenset(ctx)


def functorch_active() -> bool:
    """Whether the call runs inside a torch.func transform (vmap, grad, jvp, ...)."""
    return not torch.compiler.is_compiling() and bool(torch._C._functorch.get_interpreter_stack())


class Backend:
    """One way to compute `f(*args)` and `d f / d args[argnums]`, per sample.

    Capabilities (class attributes):
    - `per_sample`: the gradient is per-sample even when `f` mixes samples of the batch (true
      per-sample evaluation); if False the backend uses the batch-sum trick.
    - `double_backward`: in exact mode the returned gradient can itself be differentiated twice
      (needed by `gradgradcheck` and by losses on a Hessian). Fused kernels may lack it.
    - `devices`: device types it runs on.
    - `hessians`: it computes per-sample Hessians and Hessian-vector products
      (`value_grad_and_hessian`, `value_grad_and_hvp`); "auto" skips it for those when False.
    - `contexts`: the calling contexts it computes correctly in (see `call_context`);
      `slow_contexts`: those it serves but where another backend is faster, so "auto" passes it over.
    """

    name: str = ""
    per_sample: bool = False
    double_backward: bool = True
    hessians: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu", "meta")
    contexts: frozenset[str] = frozenset(CONTEXTS)
    slow_contexts: frozenset[str] = frozenset()

    def context_unsupported(self, context: frozenset[str]) -> str | None:
        """Why this backend cannot run in `context` (from `call_context`), or None when it can."""
        missing = sorted(context - self.contexts)
        if not missing:
            return None
        return "it cannot run under " + " or ".join(CONTEXTS[c] for c in missing)

    def unsupported(self, f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...]) -> str | None:
        """Why this backend cannot evaluate `f` here, or None when it can."""
        dev = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        if dev not in self.devices:
            return f"runs on {self.devices}, not on {dev}"
        return None

    def hessian_unsupported(self, f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...]) -> str | None:
        """Why this backend cannot give second derivatives of `f` here, or None when it can."""
        return self.unsupported(f, args, argnums) if self.hessians else "it computes no Hessians"

    def value_and_grad(
        self,
        f: Callable,
        args: Sequence[Tensor],
        argnums: tuple[int, ...],
        create_graph: bool,
        keep_value_graph: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Return `(value, grads)`: value is `f`'s raw output; grads match `args[i]` for `i in argnums`.

        `create_graph`: the gradients must be differentiable (exact mode with grad mode on).
        `keep_value_graph`: the value's graph must survive (it will be backpropagated later).
        Called with grad mode enabled; the caller detaches what must be detached.
        """
        raise NotImplementedError

    def value_grad_and_hessian(
        self, f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...], create_graph: bool,
        keep_value_graph: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """`(value, grads, H)`, H per sample `(B, n, n)` over `args[argnums]` flattened per sample and
        concatenated in order (`(n, n)` for an unbatched f). As `value_and_grad` otherwise."""
        raise NotImplementedError

    def value_grad_and_hvp(
        self, f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...], tangents: Sequence[Tensor],
        create_graph: bool, keep_value_graph: bool, method: str = "auto",
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """`(value, grads, hvps)`: `hvps[i] = sum_j d2f/dx_i dx_j tangents[j]`, shaped like `args[argnums[i]]`.
        `method` ("auto", "forward", "reverse") is how a general backend differentiates the gradient."""
        raise NotImplementedError

    def run_sequence(
        self, f: Callable, x: Tensor, h0: Tensor, valid: Tensor | None, mode: str
    ) -> tuple[Tensor, Tensor] | None:
        """Optional whole-sequence path for the gradient-RNN (fused or compiled backends).

        `x`: (T, B, input_size), `h0`: (B, hidden), `valid`: (T, B) bool or None; `f(x_t, h) -> (B,)`.
        Return `(y (T, B), hs (T, B, hidden))` with the GradRNN's masking semantics, honouring grad
        mode and `mode` ("exact"/"detached"); or None to let the GradRNN run step by step.
        """
        return None


def _fresh(t: Tensor) -> Tensor:
    """A new autograd node for `t`, so `autograd.grad` w.r.t. it gives the partial derivative of `f`.

    A view keeps the link to `t`'s history (exact mode then reaches upstream inputs) without counting
    paths that reach `f` through other arguments computed from `t`. A tensor without history gets a
    private leaf; the caller's tensor is never modified.
    """
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_()


def _vjp_value_and_grad(f, args, argnums):
    """The batch-sum trick through `torch.func.vjp`: inside a torch.func transform tensors cannot be
    made to require grad, and the vjp's result is differentiable by the enclosing transforms and by
    ordinary autograd alike (so it serves create_graph too)."""

    def g(*picked):
        xs = list(args)
        for i, t in zip(argnums, picked):
            xs[i] = t
        return check_output(f(*xs), xs, argnums)

    out, pullback = torch.func.vjp(g, *(args[i] for i in argnums))
    return out, tuple(pullback(torch.ones_like(out)))


class AutogradBackend(Backend):
    """`torch.autograd.grad(f(...).sum(), args, create_graph=...)`: the batch-sum trick.

    Cheapest general backend; exact only when samples of the batch do not interact.
    """

    name = "autograd"
    hessians = True

    def value_grad_and_hessian(self, f, args, argnums, create_graph, keep_value_graph):
        from .second_order import batch_sum_hessian

        return batch_sum_hessian(f, args, argnums, create_graph, keep_value_graph, check_output)

    def value_grad_and_hvp(self, f, args, argnums, tangents, create_graph, keep_value_graph, method="auto"):
        from .second_order import batch_sum_hvp

        return batch_sum_hvp(f, args, argnums, tangents, create_graph, keep_value_graph, check_output, method)

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        if functorch_active() or torch.compiler.is_compiling():
            # (aot_autograd cannot differentiate an autograd.grad(create_graph=True) a second time.)
            return _vjp_value_and_grad(f, args, argnums)
        xs = list(args)
        for i in argnums:
            xs[i] = _fresh(xs[i])
        out = check_output(f(*xs), xs, argnums)
        grads = torch.autograd.grad(
            out.sum(),
            [xs[i] for i in argnums],
            create_graph=create_graph,
            retain_graph=create_graph or keep_value_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return out, tuple(grads)


class _Unbatched(Exception):
    """Raised inside vmap when `f` reduces a one-sample batch to a 0-d output: `f` is unbatched."""


class FuncBackend(Backend):
    """`vmap(grad_and_value(f))` from torch.func, with `functional_call` for modules.

    Each sample is evaluated alone (as a batch of one), so the gradient is truly per-sample even when
    `f` would mix samples. Slower than `autograd` in eager mode.
    """

    name = "func"
    per_sample = True
    hessians = True

    def value_grad_and_hessian(self, f, args, argnums, create_graph, keep_value_graph):
        from .second_order import per_sample_hessian

        return per_sample_hessian(f, args, argnums, create_graph, keep_value_graph, check_output)

    def value_grad_and_hvp(self, f, args, argnums, tangents, create_graph, keep_value_graph, method="auto"):
        from .second_order import per_sample_hvp

        return per_sample_hvp(f, args, argnums, tangents, create_graph, keep_value_graph, check_output, method)

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        module = f if isinstance(f, nn.Module) else None
        params = dict(module.named_parameters()) if module is not None else {}
        buffers = dict(module.named_buffers()) if module is not None else {}
        n = len(args)

        def call(p, *a):
            return functional_call(module, (p, buffers), a) if module is not None else f(*a)

        def one_sample(p, *a):
            out = call(p, *(t.unsqueeze(0) for t in a))
            if out.dim() == 0:
                raise _Unbatched
            if out.dim() > 2 or out.numel() != 1:
                shape = ("B", *out.shape[1:])
                raise InputError(
                    f"f must return one scalar per sample, shape (B,) or (B, 1), or a 0-d scalar for "
                    f"unbatched input; got shape {shape}. Reduce the extra dimensions (e.g. `.sum(-1)`)."
                )
            return out.reshape(())

        def whole(p, *a):
            return call(p, *a)

        shifted = tuple(i + 1 for i in argnums)
        whole_gv = grad_and_value(whole, argnums=shifted)
        try:
            gv = vmap(grad_and_value(one_sample, argnums=shifted), in_dims=(None, *([0] * n)))
            grads, value = self._run(gv, params, args, create_graph, keep_value_graph, f, args)
        except _Unbatched:
            grads, value = self._run(whole_gv, params, args, create_graph, keep_value_graph, f, args)
        except (ValueError, RuntimeError, TypeError):
            # A 1-D argument may be one unbatched sample (a single state (dim,)) that `f` cannot
            # take a piece of; the original error stands when it is not that either.
            if not any(args[i].dim() == 1 for i in argnums):
                raise
            try:
                grads, value = self._run(whole_gv, params, args, create_graph, keep_value_graph, f, args)
            except Exception:
                pass
            else:
                return value, tuple(grads)
            raise
        return value, tuple(grads)

    @staticmethod
    def _run(gv, params, args, create_graph, keep_value_graph, f, raw_args):
        if create_graph:
            return gv(params, *args)
        # torch.func.grad ignores an outer no_grad: the gradient is computed, but no graph is built
        # around it. The value is recomputed with its graph when the caller needs one.
        with torch.no_grad():
            grads, value = gv(params, *args)
        if keep_value_graph:
            value = f(*raw_args)
        return grads, value


class ClosedFormBackend(Backend):
    """Value and input-gradient in one forward pass, for modules that declare them.

    A module joins by defining `value_and_input_grad(*args, argnums) -> (value, grads)` built from
    ordinary differentiable ops (`ig.MLP` does, for Linear layers and smooth activations). The
    gradient is then a first-order graph: training needs a single backward, and it compiles.
    """

    name = "closed_form"
    hessians = True

    def unsupported(self, f, args, argnums):
        why = super().unsupported(f, args, argnums)
        if why:
            return why
        if not callable(getattr(f, "value_and_input_grad", None)):
            return "f does not define value_and_input_grad(*args, argnums) (ig.MLP does)"
        return None

    def hessian_unsupported(self, f, args, argnums):
        why = Backend.unsupported(self, f, args, argnums)
        if why:
            return why
        if not callable(getattr(f, "value_grad_and_hessian", None)):
            return "f does not define value_grad_and_hessian(*args, argnums) (ig.MLP does)"
        return None

    def value_grad_and_hessian(self, f, args, argnums, create_graph, keep_value_graph):
        value, grads, H = f.value_grad_and_hessian(*args, argnums=argnums)
        value = check_output(value, args, argnums)
        if not create_graph:
            grads, H = tuple(g.detach() for g in grads), H.detach()
        return value, tuple(grads), H

    def value_grad_and_hvp(self, f, args, argnums, tangents, create_graph, keep_value_graph, method="auto"):
        # The protocol's inputs are vectors (..., n_i), as ig.MLP's: tangents concatenate on the last dim.
        v = torch.cat(tuple(tangents), -1)
        value, grads, hv = f.value_grad_and_hvp(*args, tangent=v, argnums=argnums)
        value = check_output(value, args, argnums)
        hvs = tuple(hv.split([t.shape[-1] for t in tangents], -1))
        if not create_graph:
            grads, hvs = tuple(g.detach() for g in grads), tuple(h.detach() for h in hvs)
        return value, tuple(grads), hvs

    def value_and_grad(self, f, args, argnums, create_graph, keep_value_graph):
        value, grads = f.value_and_input_grad(*args, argnums=argnums)
        if not create_graph:
            grads = tuple(g.detach() for g in grads)
        return value, tuple(grads)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, *, override: bool = False) -> Backend:
    """Add `backend` to the registry under `backend.name` (used by `backend="<name>"`)."""
    if not backend.name or backend.name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto'; got {backend.name!r}")
    if backend.name in BACKENDS and not override:
        raise ValueError(f"backend {backend.name!r} is already registered; pass override=True to replace it")
    BACKENDS[backend.name] = backend
    return backend


for _b in (ClosedFormBackend(), AutogradBackend(), FuncBackend()):
    register_backend(_b)


def backends() -> list[str]:
    """Names accepted by `backend=`: `"auto"` followed by every registered backend."""
    return ["auto", *BACKENDS]


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends are {backends()}")
    return BACKENDS[name]


#: "auto" tries these in order and takes the first registered one that supports the call: the GPU
#: kernel, then the whole-sequence CPU/CUDA path (which uses the closed form for single steps),
#: then the per-step backends. The kernels register themselves when `models` imports them; a name
#: not registered (triton not installed) is skipped. A backend registered by a user is reached by
#: name (`backend="mine"`), never silently by "auto".
AUTO_ORDER: tuple[str, ...] = ("triton", "fused", "closed_form", "autograd", "func")


def choose_backend(
    f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...], per_sample: bool = False,
    context: frozenset[str] | None = None, hessians: bool = False,
) -> Backend:
    """The first backend of `AUTO_ORDER` that supports this call (and is per-sample if asked, and
    gives second derivatives if `hessians`) in `context` (default: `call_context()`), skipping those
    that are slow there."""
    ctx = call_context() if context is None else context
    for name in AUTO_ORDER:
        b = BACKENDS.get(name)
        if b is None or (per_sample and not b.per_sample):
            continue
        if (b.hessian_unsupported if hessians else b.unsupported)(f, args, argnums):
            continue
        if b.context_unsupported(ctx) or ctx & b.slow_contexts:
            continue
        return b
    raise RuntimeError(f"no registered backend can evaluate {f!r}")  # func supports everything


def check_context(b: Backend, f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...], who: str,
                  context: frozenset[str] | None = None, hessians: bool = False) -> None:
    """Raise a clear error when an explicitly chosen backend cannot run in the caller's context,
    naming the backend "auto" would take there."""
    ctx = call_context() if context is None else context
    why = b.context_unsupported(ctx)
    if why:
        alt = choose_backend(f, args, argnums, context=ctx, hessians=hessians).name
        raise ValueError(f"{who}: backend {b.name!r} was asked for, but {why}. Use backend={alt!r} "
                         f"(or backend='auto', which picks it here).")


__all__ = ["Backend", "BACKENDS", "CONTEXTS", "register_backend", "backends", "get_backend", "choose_backend",
           "call_context", "check_context"]


class InputError(ValueError):
    """Bad input to a public call; the public function prefixes its own name to the message."""


def check_output(out: Tensor, args: Sequence[Tensor], argnums: tuple[int, ...]) -> Tensor:
    """Validate `f`'s output: 0-d (unbatched) or one scalar per sample, (B,) or (B, 1)."""
    if not isinstance(out, Tensor):
        raise InputError(f"f must return a tensor, got {type(out).__name__}")
    if out.dim() == 0:
        return out
    batch = out.shape[0]
    if out.dim() > 2 or (out.dim() == 2 and out.shape[1] != 1):
        raise InputError(
            f"f must return one scalar per sample, shape (B,) or (B, 1), or a 0-d scalar for unbatched "
            f"input; got shape {tuple(out.shape)}. Reduce the extra dimensions (e.g. `.sum(-1)`) or "
            "differentiate each output separately."
        )
    for i in argnums:
        a = args[i]
        if a.dim() == 0 or a.shape[0] != batch:
            raise InputError(
                f"f returned {batch} values (batch size {batch}) but argument {i} has shape "
                f"{tuple(a.shape)}; differentiated arguments need the batch in dimension 0. Put the "
                "batch first, or return a 0-d scalar for an unbatched function."
            )
    return out
