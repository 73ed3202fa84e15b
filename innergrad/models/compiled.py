"""The compiled gradient-RNN: `GradRNN(..., compile=True)` or `ig.compile(model)`.

Unrolling all T steps into one `torch.compile` graph makes compile time grow with T (about a
minute at T=64, no result in 280 s at T=256, measured). This module compiles ONE step and loops
over time instead, so compile time stays flat in T:

- the step: for an F with a closed-form input-gradient (`value_and_input_grad`, e.g. `ig.MLP`)
  that first-order graph is compiled directly; for any other F, value and gradient are first
  traced into one graph of ordinary ops (`make_fx` over `torch.func.grad`, parameters as explicit
  inputs) and that graph is compiled: PyTorch cannot compile a double backward, but it can
  compile the single backward of this graph, which is the same thing;
- when the backend has a whole-sequence path (the "fused" backend for an `ig.MLP`, "triton"),
  that path is the step loop already and nothing is compiled;
- on CUDA the whole training step of the sequence (the T forward steps, and their backward) is
  captured once as two CUDA graphs and replayed, which removes the thousands of kernel launches
  per step that dominate at small sizes.

The first call for each input signature is checked against the eager path (values and a random
vector-Jacobian product); on a mismatch or an error the model falls back to eager with a warning.
The time spent compiling, capturing and checking is recorded in `CompiledSequence.stats` (and
printed by `innergrad bench`), never folded into step times.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .sequence import eager_sequence, sequence_backend, step_loop

Tensor = torch.Tensor


class CompileFallbackWarning(UserWarning):
    """The compiled gradient-RNN did not match (or failed) and the model runs eagerly instead."""


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-7, torch.float32: 2e-3}.get(dtype, 5e-2)


# --- compiled steps ---------------------------------------------------------------------------

def compiled_step(F: nn.Module, mode: str, backend: str = "inductor") -> Callable:
    """`step(x_t, h) -> (y_t (B,), h_t (B, H))`, one compiled graph of value and input-gradient.

    F with `value_and_input_grad` (closed form): that first-order graph is compiled. Otherwise value
    and gradient are traced together with `make_fx` (parameters as explicit inputs) on first use,
    and the traced graph is compiled.
    """
    detached = mode == "detached"
    if callable(getattr(F, "value_and_input_grad", None)):
        fn = torch.compile(lambda x_t, h: F.value_and_input_grad(x_t, h, argnums=1), backend=backend,
                           dynamic=False)

        def step(x_t, h):
            y, (g,) = fn(x_t, h)
            return y.reshape(-1), (g.detach() if detached else g)

        return step

    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    names = [n for n, _ in F.named_parameters()]
    bnames = [n for n, _ in F.named_buffers()]
    cache: dict[Any, Callable] = {}

    def value_and_grad(*flat):
        n, m = len(names), len(bnames)
        params, buffers = dict(zip(names, flat[:n])), dict(zip(bnames, flat[n:n + m]))
        x_t, h = flat[n + m:]

        def total(hh):
            out = functional_call(F, (params, buffers), (x_t, hh)).reshape(-1)
            return out.sum(), out

        g, y = torch.func.grad(total, has_aux=True)(h)
        return y, g

    def step(x_t, h):
        # Parameters and buffers are inputs of the traced graph, never constants baked into it.
        flat = [p for _, p in F.named_parameters()] + [b for _, b in F.named_buffers()]
        key = (tuple(x_t.shape), tuple(h.shape), x_t.dtype, x_t.device)
        fn = cache.get(key)
        if fn is None:
            gm = make_fx(value_and_grad)(*[t.detach() for t in flat], x_t.detach(), h.detach())
            fn = cache[key] = torch.compile(gm, backend=backend, dynamic=False)
        y, g = fn(*flat, x_t, h)
        return y, (g.detach() if detached else g)

    return step


# --- CUDA graphs --------------------------------------------------------------------------------

class _GraphEntry:
    """A captured forward (and, for training, backward) of the sequence for one input signature."""

    def __init__(self):
        self.generation = 0
        self.train = False


class _Rerun:
    """Stands in for a CUDA graph where none can be captured (tests on CPU): replay re-runs the code."""

    def __init__(self, fn: Callable[[], None]):
        self.replay = fn


def _capture(fn: Callable, x: Tensor, h0: Tensor, valid: Tensor | None, params: list[Tensor],
             train: bool, warmup: int = 2, emulate: bool = False) -> _GraphEntry:
    """Capture `fn(x, h0, valid) -> (y, hs)` (and its backward when `train`) as CUDA graphs.

    Inputs are copied into static tensors before each replay; outputs and gradients are read from
    static tensors after it. `emulate` re-runs `fn` instead of capturing (for tests without CUDA).
    """
    e = _GraphEntry()
    e.train = train
    e.x = x.detach().clone().requires_grad_(x.requires_grad and train)
    e.h0 = h0.detach().clone().requires_grad_(h0.requires_grad and train)
    e.valid = None if valid is None else valid.clone()
    inputs = [e.x, e.h0, *params]
    e.need = [t.requires_grad for t in inputs] if train else [False] * len(inputs)
    wrt = [t for t, n in zip(inputs, e.need) if n]
    grad_ctx = torch.enable_grad if train else torch.no_grad

    def forward():
        with grad_ctx():
            e.out = fn(e.x, e.h0, e.valid)

    def backward():
        outs = [o for o, n in zip(e.out, e.out_needs) if n]
        grads = iter(torch.autograd.grad(outs, wrt, [g for g in e.gout if g is not None], allow_unused=True))
        e.gin = [next(grads) if n else None for n in e.need]

    if emulate:
        forward()
        e.fwd = _Rerun(forward)
        e.bwd = _Rerun(backward)
    else:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), grad_ctx():
            for _ in range(warmup):  # lazy initialisation (cuBLAS workspaces, compiled code) off the graph
                out = fn(e.x, e.h0, e.valid)
                if train:
                    outs = [o for o in out if o.requires_grad]
                    torch.autograd.grad(outs, wrt, [torch.ones_like(o) for o in outs], allow_unused=True)
                del out
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        e.fwd = torch.cuda.CUDAGraph()
        with torch.cuda.graph(e.fwd, pool=pool):
            forward()
    if train:
        e.out_needs = [o.requires_grad for o in e.out]
        e.gout = [torch.empty_like(o) if n else None for o, n in zip(e.out, e.out_needs)]
        if not emulate:
            e.bwd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(e.bwd, pool=pool):
                backward()
            torch.cuda.synchronize()
            # The captured autograd graph has done its work; dropping it frees the parameters'
            # gradient-accumulator nodes made on the capture stream (later eager graphs make new ones
            # on their own stream instead of syncing with the capture stream).
            e.out = [o.detach() for o in e.out]
    return e


class _Replay(torch.autograd.Function):
    """Replays a captured sequence; its backward replays the captured backward."""

    @staticmethod
    def forward(ctx, e: _GraphEntry, x: Tensor, h0: Tensor, valid: Tensor | None, *params: Tensor):
        e.x.copy_(x)
        e.h0.copy_(h0)
        if valid is not None:
            e.valid.copy_(valid)
        e.fwd.replay()
        e.generation += 1
        ctx.e, ctx.generation = e, e.generation
        # Clones: the next replay overwrites the static outputs.
        y, hs = (o.detach().clone() for o in e.out)
        if e.train and not e.out_needs[1]:
            ctx.mark_non_differentiable(hs)
        return y, hs

    @staticmethod
    def backward(ctx, gy: Tensor | None, ghs: Tensor | None):
        e = ctx.e
        if e.generation != ctx.generation:
            raise RuntimeError(
                "innergrad: a compiled GradRNN was run again before the backward of an earlier call; "
                "its CUDA graphs hold the state of one call at a time. Call backward before the next "
                "forward (or run that model with compile=False)."
            )
        for g_static, g in zip(e.gout, (gy, ghs)):
            if g_static is not None:
                if g is None:
                    g_static.zero_()
                else:
                    g_static.copy_(g)
        e.bwd.replay()
        grads = [g.clone() if g is not None else None for g in e.gin]
        return (None, grads[0], grads[1], None, *grads[2:])


def _replay_inference(e: _GraphEntry, x: Tensor, h0: Tensor, valid: Tensor | None):
    e.x.copy_(x)
    e.h0.copy_(h0)
    if valid is not None:
        e.valid.copy_(valid)
    e.fwd.replay()
    return tuple(o.clone() for o in e.out)


# --- the runner ---------------------------------------------------------------------------------

class CompiledSequence:
    """Runs a GradRNN's sequence compiled (see the module docstring); one per model.

    **Arguments:**

    - `cuda_graphs`: capture the training step as CUDA graphs on CUDA devices (default True).
    - `check`: compare the first call of each input signature against eager (default True).
    - `backend`: the `torch.compile` backend for compiled steps (`"inductor"`; `"aot_eager"` traces
      the same graphs without generating code, quick for tests).
    """

    def __init__(self, cuda_graphs: bool = True, check: bool = True, backend: str = "inductor"):
        self.cuda_graphs, self.check, self.backend = cuda_graphs, check, backend
        self._emulate_graphs = False  # tests: exercise the graph plumbing on CPU by re-running
        self._entries: dict[Any, Any] = {}
        self._steps: dict[Any, Callable] = {}
        #: one record per compiled signature: strategy, compile_s, check error, fallback reason.
        self.stats: list[dict[str, Any]] = []

    def __deepcopy__(self, memo):  # graphs and compiled code belong to one model's tensors
        return CompiledSequence(self.cuda_graphs, self.check, self.backend)

    def __getstate__(self):
        return {"cuda_graphs": self.cuda_graphs, "check": self.check, "backend": self.backend}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def compile_seconds(self) -> float:
        """Total seconds spent compiling, capturing and checking so far."""
        return sum(s["compile_s"] for s in self.stats)

    def _inner(self, model, x: Tensor, h0: Tensor) -> tuple[str, Callable]:
        """The sequence function to run (and capture): a backend's sequence path or compiled steps."""
        if sequence_backend(model, x, h0) is not None:
            return "sequence", lambda a, b, c: eager_sequence(model, a, b, c)
        key = (model.mode, id(model.F))
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = compiled_step(model.F, model.mode, self.backend)
        return "compiled_steps", lambda x, h0, valid: step_loop(step, x, h0, valid)

    def __call__(self, model, x: Tensor, h0: Tensor, valid: Tensor | None):
        """`(y, hs)` for the time-major `x`, or None to let the model run eagerly."""
        if valid is not None and bool(valid.all()):
            valid = None
        params = [p for p in model.parameters() if p is not getattr(model, "h0", None)]
        train = torch.is_grad_enabled() and (
            x.requires_grad or h0.requires_grad or any(p.requires_grad for p in params)
        )
        graphs = (self.cuda_graphs and x.is_cuda) or self._emulate_graphs
        if not graphs and sequence_backend(model, x, h0) is not None:
            return None  # the fused/triton sequence path is the compiled loop already
        key = (
            tuple(x.shape), tuple(h0.shape), x.dtype, str(x.device), valid is not None, model.mode,
            model.backend, train, x.requires_grad, h0.requires_grad,
            tuple((p.data_ptr(), p.requires_grad) for p in params),
        )
        entry = self._entries.get(key)
        if entry is None:
            entry = self._build(key, model, x, h0, valid, params, train, graphs)
        if entry == "eager":
            return None
        return entry(x, h0, valid)

    def _build(self, key, model, x, h0, valid, params, train, graphs):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"signature": f"T={x.shape[0]} B={x.shape[1]} {x.dtype} {x.device}",
                                  "train": train, "check_max_rel_err": None, "fallback": None}
        try:
            kind, inner = self._inner(model, x, h0)
            record["strategy"] = ("cuda_graphs+" if graphs else "") + kind
            if graphs:
                graph = _capture(inner, x, h0, valid, params, train, emulate=not x.is_cuda)
                if train:
                    def run(a, b, c):
                        return _Replay.apply(graph, a, b, c, *params)
                else:
                    def run(a, b, c):
                        return _replay_inference(graph, a, b, c)
            else:
                run = inner
            entry = run
            if self.check:
                err = _check(model, run, x, h0, valid, params, train)
                record["check_max_rel_err"] = err
                if not err <= _tolerance(x.dtype):
                    raise _Mismatch(f"compiled and eager results differ by {err:.2e} (relative)")
        except Exception as exc:  # any failure: run eagerly, say why, and never retry this signature
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            record["fallback"] = reason
            warnings.warn(
                f"innergrad.compile: the compiled GradRNN ({record.get('strategy', 'setup')}) "
                f"{'did not match eager' if isinstance(exc, _Mismatch) else 'failed'} for "
                f"{record['signature']}: {reason}. This model runs eagerly for these inputs.",
                CompileFallbackWarning,
                stacklevel=4,
            )
            entry = "eager"
        record["compile_s"] = time.perf_counter() - t0
        self.stats.append(record)
        self._entries[key] = entry
        return entry


class _Mismatch(RuntimeError):
    pass


def _check(model, run, x, h0, valid, params, train) -> float:
    """Max relative difference between `run` and the eager path: outputs, and gradients of a random
    projection of them (w.r.t. the parameters, x and h0) when training."""
    gen = torch.Generator(device=x.device).manual_seed(1234)
    results = []
    for fn in (lambda a, b, c: eager_sequence(model, a, b, c), run):
        xi = x.detach().clone().requires_grad_(x.requires_grad and train)
        hi = h0.detach().clone().requires_grad_(h0.requires_grad and train)
        with torch.enable_grad() if train else torch.no_grad():
            y, hs = fn(xi, hi, valid)
            vals = [y.detach().clone(), hs.detach().clone()]
            if train:
                gen.manual_seed(1234)
                cy = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)
                ch = torch.randn(hs.shape, generator=gen, device=y.device, dtype=y.dtype)
                loss = (y * cy).sum() + ((hs * ch).sum() if hs.requires_grad else 0)
                wrt = [t for t in (xi, hi, *params) if t.requires_grad]
                vals += [g if g is not None else torch.zeros_like(w) for g, w in
                         zip(torch.autograd.grad(loss, wrt, allow_unused=True), wrt)]
        results.append(vals)
    err = 0.0
    for a, b in zip(*results):
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        err = max(err, diff / (scale + 1e-30) if scale > 0 else diff)
    return err


def enable(model: nn.Module, **options) -> nn.Module:
    """Turn on the compiled path of a GradRNN in place (the `compile=True` of its constructor)."""
    if not (hasattr(model, "compiled") and hasattr(model, "cell") and hasattr(model, "_run_sequence")):
        raise TypeError(
            f"innergrad.compile expects an ig.GradRNN, got {type(model).__name__}; for other modules "
            "use torch.compile(model)."
        )
    model.compiled = CompiledSequence(**options)
    return model


def compile(model: nn.Module, *, cuda_graphs: bool = True, check: bool = True,  # noqa: A001
            backend: str = "inductor") -> nn.Module:
    """Compile a GradRNN's steps (and on CUDA capture its training step as CUDA graphs), in place.

    ```python
    rnn = ig.compile(ig.GradRNN(8, 32))     # same as ig.GradRNN(8, 32, compile=True)
    y, h = rnn(x)                           # first call per input shape: compile + check vs eager
    print(rnn.compiled.stats)               # strategy, compile seconds, check error, fallbacks
    ```

    Compile time does not grow with T (one step is compiled; the time loop is captured). The first
    call per input signature is checked against eager; on a mismatch or failure the model warns
    (`CompileFallbackWarning`) and runs eagerly for those inputs. On CUDA a graph holds one call's
    state: call backward before the next forward of the same model. Returns the model.
    """
    return enable(model, cuda_graphs=cuda_graphs, check=check, backend=backend)


__all__ = ["CompiledSequence", "CompileFallbackWarning", "compile", "compiled_step", "eager_sequence"]
