"""Benchmark: one training step of the gradient-RNN, done every way, side by side.

The one harness for every way and device: `innergrad bench` (options in innergrad/cli/bench.py) and
the scripts in benchmarks/ call it.

One step = forward over T steps (`y_t = F(x_t, h_{t-1})`, `h_t = dF/dh`), MSE against a target,
backward to F's parameters. Every way gets the same weights and data, and the table says whether
its loss and gradients agree with the naive loop's. Ways:

- `naive`: `torch.autograd.grad(F(x_t, h).sum(), h, create_graph=True)` per step (how users write
  it; made correct);
- `torch_func`: `vmap(grad_and_value(F))` per step;
- `autograd`, `func`, `closed_form`, `fused`, `triton`: `ig.GradRNN(..., backend=<name>)`, every
  registered backend that runs here;
- `fused_loop` (CPU): the fused backend's Python loop, which runs where its C++ kernel cannot be
  built: what the kernel gains;
- `compiled`: `ig.GradRNN(..., compile=True)` (its compile time is reported on its own);
- `compiled_fused`: the same with `backend="fused"` (on CUDA: the fused op replayed as CUDA graphs);
- `compiled_user_step`: `torch.compile(fullgraph=True)` of the user's whole step (forward, loss,
  `backward()`) around a default `ig.GradRNN`: the fused operators as nodes of the compiled graph;
- `jax`: `jax.jit(jax.value_and_grad(loss))` over `lax.scan` with `jax.grad` inside, when JAX is
  installed.

Times are the median of `reps` (>= 10 by default) after warm-up (`--interleave`: round-robin over
the ways); the first call is reported on its own (it includes any compilation). Memory is the peak
allocated during one step above what was allocated before it (CUDA: `max_memory_allocated`; CPU:
the peak of live tensor bytes from the profiler's allocation events, with the fused op's reusable
buffers freed first so that they count; JAX: its allocator's peak on GPU, not measured on CPU).
For CUDA-graph ways, whose replays allocate nothing, it is the memory their graphs keep reserved
(when larger).
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from . import single_call
from .measure import CLOCKS, peak_mib, sync
from .report import agreement_tolerance, device_name, format_scaling, format_table
from .single_call import Unsupported

Tensor = torch.Tensor

WAYS = ("naive", "torch_func", "autograd", "func", "closed_form", "fused", "fused_loop", "triton", "compiled",
        "compiled_fused", "compiled_user_step", "jax", "matmul_floor")
#: `innergrad bench --model`: the gradient-RNN and the single-call models (`single_call.MODELS`).
MODEL_NAMES = ("gradrnn", *single_call.MODELS)
SWEEP_T = (64, 256)
SWEEP_B = (32, 256, 4096)
SWEEP_WIDTH = (64, 128, 512)


@dataclass
class Config:
    """One benchmark configuration (F = MLP with `layers` hidden layers of `width`)."""

    device: str = "cpu"
    T: int = 64
    B: int = 256
    width: int = 128
    input_size: int = 8
    hidden_size: int = 32
    layers: int = 2
    activation: str = "softplus"
    dtype: str = "float32"
    reps: int = 10
    warmup: int = 2
    seed: int = 0
    memory: bool = True
    interleave: bool = False  # timed steps round-robin over the ways (see run_config)
    clock: str = "wall"  # "wall", or "cpu": the process's CPU time per step (all its threads; see CLOCKS)
    model: str = "gradrnn"  # or a single-call model of `single_call.MODELS` (hnn, field, dhnn, lnn)
    dim: int = 2  # state size of a single-call model (its x is (B, dim))


@dataclass
class Result:
    way: str
    config: dict
    ms: float | None = None  # median ms per training step
    ms_all: list[float] = field(default_factory=list)
    first_s: float | None = None  # the first call (compilation, capture, checks included)
    compile_s: float | None = None  # what the compiled way reports as compile+capture+check
    peak_mib: float | None = None
    loss: float | None = None
    max_rel_diff: float | None = None  # gradients vs the reference way
    agrees: bool | None = None
    skipped: str | None = None  # why the way did not run
    note: str = ""


# `Unsupported` (from single_call): a way that cannot run this configuration here (missing package,
# device, backend); reported as n/a.


# --- the problem -------------------------------------------------------------------------------

def make_problem(cfg: Config) -> dict[str, Any]:
    """Shared weights (an `ig.MLP`) and data, identical for every way."""
    from ..core.mlp import MLP

    dt = getattr(torch, cfg.dtype)
    dev = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    F = MLP((cfg.input_size, cfg.hidden_size), (cfg.width,) * cfg.layers, cfg.activation).to(dev, dt)
    x = torch.randn(cfg.T, cfg.B, cfg.input_size, generator=g).to(dev, dt)
    target = torch.randn(cfg.T, cfg.B, generator=g).to(dev, dt)
    h0 = torch.zeros(cfg.B, cfg.hidden_size, device=dev, dtype=dt)
    return {"F": F, "x": x, "target": target, "h0": h0, "state": {k: v.detach().clone() for k, v in
                                                                    F.state_dict().items()}}


# One training step's loss and step function, shared with the single-call models.
_loss = single_call.mse
_step_fn = single_call.training_step


def way_naive(pb, cfg):
    F, x, h0 = pb["F"], pb["x"], pb["h0"]

    def forward():
        h, ys = h0, []
        for t in range(x.shape[0]):
            if not h.requires_grad:
                h = h.detach().requires_grad_()
            y = F(x[t], h)
            (h,) = torch.autograd.grad(y.sum(), h, create_graph=True)
            ys.append(y)
        return torch.stack(ys)

    return _step_fn(forward, list(F.parameters()), pb["target"]), None


def way_torch_func(pb, cfg):
    from torch.func import functional_call, grad_and_value, vmap

    F, x, h0 = pb["F"], pb["x"], pb["h0"]
    params = dict(F.named_parameters())

    def single(p, xt, ht):
        return functional_call(F, p, (xt.unsqueeze(0), ht.unsqueeze(0))).squeeze(0)

    gv = vmap(grad_and_value(single, argnums=2), in_dims=(None, 0, 0))

    def forward():
        h, ys = h0, []
        for t in range(x.shape[0]):
            h, y = gv(params, x[t], h)
            ys.append(y)
        return torch.stack(ys)

    return _step_fn(forward, list(F.parameters()), pb["target"]), None


def gradrnn_way(pb, cfg, backend: str, compile: bool = False):
    from ..core.backends import BACKENDS
    from ..models.gradrnn import GradRNN

    if backend != "auto":
        b = BACKENDS.get(backend)
        if b is None:
            raise Unsupported(f"backend {backend!r} is not registered here")
        why = b.unsupported(pb["F"], (pb["x"][0], pb["h0"]), (1,))
        if why:
            raise Unsupported(why)
    m = GradRNN(cfg.input_size, cfg.hidden_size, (cfg.width,) * cfg.layers, cfg.activation,
                backend=backend, compile=compile).to(pb["x"].device, pb["x"].dtype)
    m.F.load_state_dict(pb["state"])
    x = pb["x"]

    def forward():
        return m(x)[0]

    return _step_fn(forward, list(m.F.parameters()), pb["target"]), m


def _backend_way(name):
    def way(pb, cfg):
        return gradrnn_way(pb, cfg, name)

    way.__name__ = f"way_{name}"
    return way


def _inside(step: Callable, context: Callable[[], Any]) -> Callable:
    """`step` run inside `context()`, so only this way's steps see the change, not the ways around it."""

    def inside_step():
        with context():
            return step()

    return inside_step


def way_fused_loop(pb, cfg):
    from ..kernels import cpu as cpu_kernel

    if not cfg.device.startswith("cpu"):
        raise Unsupported("the fused backend's Python loop is its CPU fallback")
    step, m = gradrnn_way(pb, cfg, "fused")
    return _inside(step, cpu_kernel.python_loop), m


TRITON_PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16")


def _triton_way(precision: str):
    """The triton backend with its dot precision set to `precision` while this way's steps run."""

    def way(pb, cfg):
        from ..core.settings import settings

        step, m = gradrnn_way(pb, cfg, "triton")
        return _inside(step, lambda: settings(triton_precision=precision)), m

    way.__name__ = f"way_triton_{precision}"
    return way


def way_compiled(pb, cfg):
    return gradrnn_way(pb, cfg, "auto", compile=True)


def way_compiled_fused(pb, cfg):
    return gradrnn_way(pb, cfg, "fused", compile=True)


def way_compiled_user_step(pb, cfg):
    _, m = gradrnn_way(pb, cfg, "auto")
    step = single_call.compiled_user_step(lambda x, t: _loss(m(x)[0], t), list(m.F.parameters()), pb["x"],
                                          pb["target"])
    return step, m


def way_jax(pb, cfg, precision: str = "highest"):
    import numpy as np

    # "highest" is PyTorch's default float32 matmul precision; JAX's GPU default is TF32 ("jax-tf32").
    jax, jnp, dev, act = single_call.jax_setup(cfg)
    F = pb["F"]
    names = [n for n, _ in F.named_parameters()]

    def put(t: Tensor):
        return jax.device_put(np.asarray(t.detach().cpu().numpy()), dev)

    params = {n: put(p) for n, p in F.named_parameters()}
    x, target, h0 = put(pb["x"]), put(pb["target"]), put(pb["h0"])
    L = cfg.layers

    mlp = single_call.jax_mlp(act, L)

    def Fj(pr, xt, h):
        return mlp(pr, jnp.concatenate([xt, h], -1))

    def loss(pr):
        def body(h, xt):
            y = Fj(pr, xt, h)
            g = jax.grad(lambda hh: Fj(pr, xt, hh).sum())(h)
            return g, y

        _, ys = jax.lax.scan(body, h0, x)
        return ((ys - target) ** 2).mean()

    vg = jax.jit(jax.value_and_grad(loss))
    return single_call.jax_step(vg, params, precision, dev, lambda g: [g[n] for n in names], pb["x"].device), None


def matmul_floor_step(shapes: Sequence[tuple[int, int, int, bool]], reps: int, device: str, dtype: torch.dtype,
                      what: str) -> Callable:
    """A "way" that runs only a step's matrix products: `(m, k, n, transposed_a)` each `reps` times,
    through torch.mm on ONE thread (into preallocated outputs), nothing else; its time divided by the
    number of threads is the step's matmul floor: the products at this machine's measured one-core
    speed, split over the cores without any loss (a bound no way can beat; MKL's own two-thread
    products pay barriers, which on a shared machine made them slower than the fused kernel).
    Measured in the same run as the ways, so under the same load."""
    g = torch.Generator().manual_seed(0)
    ops = []
    for m, k, n, ta in shapes:
        a = torch.randn(*((k, m) if ta else (m, k)), generator=g).to(device, dtype)
        b = torch.randn(k, n, generator=g).to(device, dtype)
        ops.append((a.t() if ta else a, b, torch.empty(m, n, device=device, dtype=dtype)))
    flop = 2 * reps * sum(m * k * n for m, k, n, _ in shapes)

    threads = torch.get_num_threads()

    def step():
        from ..core.settings import settings

        with settings(threads=1):
            for _ in range(reps):
                for a, b, c in ops:
                    torch.mm(a, b, out=c)
        return None

    step.floor = True  # type: ignore[attr-defined]
    step.scale = 1.0 / threads  # type: ignore[attr-defined]
    step.flop = flop  # type: ignore[attr-defined]
    step.note = (f"{what}: {flop / 1e9:.2f} GFLOP of products on one thread, time / {threads} threads"  # type: ignore[attr-defined]
                 " (a bound: perfect scaling)")
    return step


def way_matmul_floor(pb, cfg):
    """The GradRNN step's matrix products per time step (as the fused kernel does them): forward
    [x|h] W1^T, then per layer k >= 2 u W_k^T, the chain's g W_k and g_1 W1h; backward hb W1h^T, the
    chain's qb W_k^T and ab W_k, the weight gradients (two per layer), dL/dh and dL/dx."""
    if cfg.model != "gradrnn":
        raise Unsupported("the matmul floor of single-call models: see single_call.way_matmul_floor")
    B, dx, dh, w, L = cfg.B, cfg.input_size, cfg.hidden_size, cfg.width, cfg.layers
    din = dx + dh
    fwd = [(B, din, w, False)] + [(B, w, w, False)] * (L - 1) * 2 + [(B, w, dh, False)]
    bwd = [(B, dh, w, False)] + [(B, w, w, False)] * (L - 1) * 2 + [(w, B, din, True), (w, B, dh, True)]
    bwd += [(w, B, w, True)] * (L - 1) * 2 + [(B, w, dh, False), (B, w, dx, False)]
    return matmul_floor_step(fwd + bwd, cfg.T, cfg.device, getattr(torch, cfg.dtype),
                             "the fused kernel's products"), None


WAY_FUNCS: dict[str, Callable] = {
    "naive": way_naive,
    "torch_func": way_torch_func,
    "autograd": _backend_way("autograd"),
    "func": _backend_way("func"),
    "closed_form": _backend_way("closed_form"),
    "fused": _backend_way("fused"),
    "fused_loop": way_fused_loop,
    "triton": _backend_way("triton"),
    "compiled": way_compiled,
    "compiled_fused": way_compiled_fused,
    "compiled_user_step": way_compiled_user_step,
    "matmul_floor": way_matmul_floor,
    **{f"triton-{p}": _triton_way(p) for p in TRITON_PRECISIONS},
    "jax-tf32": functools.partial(way_jax, precision="tensorfloat32"),
    "jax": way_jax,
}


class _Way:
    """One way, built and warmed up, waiting for its timed steps."""

    def __init__(self, way: str, cfg: Config):
        self.res = Result(way, asdict(cfg))
        self.step: Callable | None = None
        self.model = None
        self.out = None
        self.kept_bytes: int | None = None

    def fail(self, e: Exception) -> None:
        self.res.skipped = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        self.step = None

    @property
    def graphs(self) -> bool:
        c = getattr(self.model, "compiled", None)
        return c is not None and any(s.get("strategy", "").startswith("cuda_graphs") for s in c.stats)


def prepare(way: str, pb: dict, cfg: Config) -> _Way:
    """Build a way and time its first call (compilation included)."""
    w = _Way(way, cfg)
    cuda = cfg.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        reserved_before = torch.cuda.memory_reserved()
    try:
        w.step, w.model = ways_for(cfg.model)[way](pb, cfg)
    except Unsupported as e:
        w.res.skipped = str(e)
        return w
    try:
        t0 = time.perf_counter()
        w.out = w.step()
        sync(cfg.device)
        w.res.first_s = time.perf_counter() - t0
    except Exception as e:  # report and go on: one broken way must not hide the others
        w.fail(e)
        return w
    if cuda and w.graphs:
        torch.cuda.empty_cache()  # what the graphs keep, not the allocator's spare cache
        w.kept_bytes = torch.cuda.memory_reserved() - reserved_before
    return w


def _warm_up(w: _Way, cfg: Config) -> None:
    step = w.step
    if step is None:
        return
    try:
        for _ in range(cfg.warmup):
            w.out = step()
        sync(cfg.device)
    except Exception as e:
        w.fail(e)


def _time_step(w: _Way, cfg: Config) -> None:
    step = w.step
    if step is None:
        return
    try:
        clock = CLOCKS[cfg.clock]
        t0 = clock()
        w.out = step()
        sync(cfg.device)
        w.res.ms_all.append((clock() - t0) * 1e3)
    except Exception as e:
        w.fail(e)


def finish(w: _Way, cfg: Config) -> Any:
    """Median time, memory, compile notes; returns (loss, grads) for the agreement check."""
    res = w.res
    res.ms = statistics.median(res.ms_all)
    try:
        res.peak_mib = peak_mib(w.step, cfg, w.kept_bytes)
    except Exception as e:
        res.note = f"memory not measured: {type(e).__name__}"
    compiled = getattr(w.model, "compiled", None)
    if compiled is not None:
        stats = compiled.stats
        res.compile_s = sum(s["compile_s"] for s in stats)
        fb = [s["fallback"] for s in stats if s.get("fallback")]
        strategies = sorted({s.get("strategy", "") for s in stats})
        res.note = "; ".join(x for x in (", ".join(strategies), *(f"fell back: {f}" for f in fb)) if x)
        if not stats:
            res.note = "no compilation needed (the fused sequence path runs as is)"
    if res.way == "fused" and cfg.device.startswith("cpu"):
        res.note = _fused_cpu_note(cfg) if cfg.model == "gradrnn" else _fused_call_note(cfg)
    loss, grads = getattr(w.step, "convert", lambda out: out)(w.out)
    res.loss = float(loss)
    return loss, [g.detach().clone() if g is not None else None for g in grads]


def _fused_cpu_note(cfg: Config) -> str:
    from ..kernels import cpu as cpu_kernel
    from ..kernels import fused

    if fused.kernel_for(cfg.activation, getattr(torch, cfg.dtype)) is not None:
        blocks = fused.cpu_blocks(cfg.B, cfg.width)
        return f"C++ CPU kernel, {blocks} block(s) of the batch on {torch.get_num_threads()} threads"
    if not cpu_kernel.in_use():
        return "Python loop (the C++ kernel is turned off)"
    if not cpu_kernel.supports(cfg.activation, getattr(torch, cfg.dtype)):
        return f"Python loop (the C++ kernel does not cover {cfg.activation}/{cfg.dtype})"
    return f"Python loop: the C++ kernel is unavailable ({cpu_kernel.unavailable_reason()})"


def _fused_call_note(cfg: Config) -> str:
    from ..core.settings import current_settings
    from ..kernels import fused

    kernel = fused.kernel_for(cfg.activation, getattr(torch, cfg.dtype)) is not None
    auto = "fused" if cfg.B >= current_settings().fused_call_min_rows else "closed form"
    return (f"the fused single-call operator ({'C++ kernel' if kernel else 'Python loop'}, "
            f"{fused.cpu_blocks(cfg.B, cfg.width)} block(s)); \"auto\" runs the {auto} at B={cfg.B}")


def _rel_diff(a: Sequence[Tensor | None], b: Sequence[Tensor | None]) -> float:
    err = 0.0
    if len(a) != len(b):
        return math.inf
    for x, y in zip(a, b):
        if x is None and y is None:
            continue
        # (A parameter the loss does not reach, e.g. an output bias under a gradient-only loss, has no
        # gradient in one way and zeros in another: the same thing.)
        if x is None:
            assert y is not None  # both None was skipped above
            x = torch.zeros_like(y)
        y = torch.zeros_like(x) if y is None else y
        x, y = x.double().cpu(), y.double().cpu()
        err = max(err, float((x - y).abs().max() / (y.abs().max() + 1e-30)))
    return err


# The agreement column's tolerance: the largest relative difference of loss and gradients from the
# reference way. float32 sums over T steps and a batch in another order differ by ~1e-5; float64 by ~1e-13.
def run_config(cfg: Config, ways: Sequence[str], log: Callable[[str], None] | None = None) -> list[Result]:
    """Every way on one configuration; the first way that runs is the agreement reference.

    By default each way's timed steps run in a row, after its warm-up. With `cfg.interleave` they
    go round-robin over the ways, so a drift in the load of a shared machine hits every way alike;
    but then one way's idle-spinning thread pool (OpenMP, XLA) can slow the next, on CPU.
    """
    pb = make_problem(cfg) if cfg.model == "gradrnn" else single_call.make_problem(cfg)
    prepared = []
    for way in ways:
        if log:
            log(f"  {way} ...")
        prepared.append(prepare(way, pb, cfg))
    live = [w for w in prepared if w.step is not None]
    if cfg.interleave:
        for w in live:
            _warm_up(w, cfg)
        for _ in range(cfg.reps):
            for w in live:
                if w.step is not None:
                    _time_step(w, cfg)
    else:
        for w in live:
            _warm_up(w, cfg)
            for _ in range(cfg.reps):
                if w.step is not None:
                    _time_step(w, cfg)
    results, ref = [], None
    for w in prepared:
        res = w.res
        if w.step is not None and getattr(w.step, "floor", False):  # a floor, not a training step
            floor: Any = w.step
            res.ms_all = [t * floor.scale for t in res.ms_all]
            res.ms = statistics.median(res.ms_all)
            res.note = f"{floor.note}; {res.ms and floor.flop / res.ms / 1e6:.0f} GFLOP/s"
        elif w.step is not None:
            out = finish(w, cfg)
            if ref is None:
                ref = out
                res.max_rel_diff = 0.0
            else:
                res.max_rel_diff = _rel_diff(out[1], ref[1])
                loss_diff = abs(float(out[0]) - float(ref[0])) / (abs(float(ref[0])) + 1e-30)
                res.max_rel_diff = max(res.max_rel_diff, loss_diff)
            res.agrees = res.max_rel_diff <= agreement_tolerance(cfg.dtype)  # NaN: False
        results.append(res)
    del prepared, live
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return results


# --- reporting ----------------------------------------------------------------------------------

def grid(base: Config, Ts: Sequence[int], Bs: Sequence[int], widths: Sequence[int]) -> list[Config]:
    """`base` at every (T, B, width); `SWEEP_T`, `SWEEP_B`, `SWEEP_WIDTH` give the full grid."""
    return [replace(base, T=T, B=B, width=W) for W in widths for T in Ts for B in Bs]


def ways_for(model: str) -> dict[str, Callable]:
    """`{way: function}` for a model of the benchmark (`gradrnn` or one of `single_call.MODELS`)."""
    if model == "gradrnn":
        return WAY_FUNCS
    if model not in single_call.MODELS:
        raise ValueError(f"unknown benchmark model {model!r}; choose from {MODEL_NAMES}")
    return single_call.WAY_FUNCS


def available_ways(device: str, model: str = "gradrnn") -> list[str]:
    """The ways worth trying on `device` (unsupported ones are reported as n/a anyway)."""
    from ..core.backends import BACKENDS

    funcs = ways_for(model)
    order = WAYS if model == "gradrnn" else tuple(single_call.WAY_FUNCS)
    return [w for w in order if w in funcs and
            (w not in ("autograd", "func", "closed_form", "fused", "triton") or w in BACKENDS)]


def run(cfgs: Sequence[Config], ways: Sequence[str], out: Callable[[str], None] = print,
        progress: bool = True) -> list[Result]:
    """Run and print every configuration; returns all results."""
    allres: list[Result] = []
    for cfg in cfgs:
        size = f"T={cfg.T}, B={cfg.B}" if cfg.model == "gradrnn" else f"{cfg.model}, dim={cfg.dim}, B={cfg.B}"
        out(f"\n### {size}, width={cfg.width} ({cfg.layers} layers, {cfg.activation}), "
            f"{cfg.dtype}, {device_name(cfg.device)}{', CPU time per step' if cfg.clock == 'cpu' else ''}\n")
        log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else None
        res = run_config(cfg, ways, log)
        allres += res
        out(format_table(res))
    if len(cfgs) > 1:
        out(format_scaling(allres))
    return allres


__all__ = ["Config", "Result", "WAYS", "grid", "run", "run_config", "format_table"]
