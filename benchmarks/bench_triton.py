"""GPU timing of the fused Triton gradient-RNN beside the other ways to train the same model.

One training step = forward over T steps, MSE loss on y, backward to every parameter, for
`GradRNN(8, 32, hidden_layers=(w, w), activation="softplus")` in float32.

    python benchmarks/bench_triton.py table                 # T x B x width grid, every way
    python benchmarks/bench_triton.py table --T 64 --B 256 --width 128 --ways triton-tf32,jax
    python benchmarks/bench_triton.py accuracy              # each precision vs the float64 closed form
    python benchmarks/bench_triton.py tune                  # launch shapes of the kernels
    python benchmarks/bench_triton.py profile               # PyTorch profiler of one triton step
    python benchmarks/bench_triton.py resources             # registers / shared memory, no GPU needed

Every way, its timing and its agreement check come from the one benchmark harness
(innergrad/bench/harness.py, also behind `innergrad bench`); this script adds the Triton-specific
commands. Ways: `triton-ieee`, `triton-tf32`, `triton-tf32x3`, `triton-bf16` (the kernels at each dot
precision), any harness way (`closed_form`, `fused`, `naive`: the per-step
`autograd.grad(create_graph=True)`, ...), `jax` (jit of value_and_grad over lax.scan at JAX's default
matmul precision, TF32 on Hopper; the harness's `jax-tf32`) and `jax-highest` (float32 dots; the
harness's `jax`). Times are medians in ms per step, host clock around a synchronised step (launch
overheads included, as a training loop sees them).
"""

from __future__ import annotations

import argparse
import contextlib
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch

import torch  # noqa: E402

import innergrad as ig  # noqa: E402
from innergrad.bench import harness, report  # noqa: E402
from innergrad.bench.harness import Config, gradrnn_way, grid, make_problem  # noqa: E402
from innergrad.bench.measure import time_ms  # noqa: E402

DEVICE = "cuda"
# bench_triton's way names -> the harness's (one harness for every way and device).
WAY_NAMES = {"jax": "jax-tf32", "jax-highest": "jax"}


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def make(T, B, w, backend="closed_form", dtype="float32", reps=10):
    """`(step, rnn, problem)`: the harness's training step of `GradRNN(8, 32, (w, w))` with `backend`."""
    cfg = Config(device=DEVICE, T=T, B=B, width=w, dtype=dtype, reps=reps)
    pb = make_problem(cfg)
    step, rnn = gradrnn_way(pb, cfg, backend)
    return step, rnn, pb


def bench(step, reps: int):
    ts = time_ms(step, reps, warmup=2, device=DEVICE)
    return sorted(ts)[len(ts) // 2], min(ts)


def set_triton(**kw):
    """The Triton kernels' tuning for the steps run inside the returned `with` block (scoped settings:
    the backend object is never changed)."""
    return ig.settings(**{f"triton_{k}": v for k, v in kw.items()})


def cmd_table(a):
    """The T x B x width grid through the harness (median ms, agreement with the first way)."""
    ways = [WAY_NAMES.get(w, w) for w in a.ways.split(",") if w]
    base = Config(device=DEVICE, reps=a.reps)
    results = harness.run(grid(base, _ints(a.T), _ints(a.B), _ints(a.width)), ways)
    if a.json:
        report.save_json(a.json, DEVICE, results)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def cmd_accuracy(a):
    T, B, w = _ints(a.T)[0], _ints(a.B)[0], _ints(a.width)[0]
    _, ref_rnn, ref_pb = make(T, B, w, "closed_form", dtype="float64")
    x, target = ref_pb["x"], ref_pb["target"]
    y, _, hs = ref_rnn(x, return_hidden=True)
    loss = ((y - target) ** 2).mean()
    gref = torch.autograd.grad(loss, list(ref_rnn.parameters()))
    names = [n for n, _ in ref_rnn.named_parameters()]
    print(f"accuracy vs float64 closed form, T={T} B={B} width={w}: relative error (2-norm)")
    print("| way | y | h | worst parameter gradient |")
    print("|---|---|---|---|")
    ways = a.ways.split(",") if a.ways != "all" else [
        "triton-ieee", "triton-tf32x3", "triton-tf32", "triton-bf16", "closed_form", "closed_form-tf32", "jax"]
    for way in ways:
        if way == "jax":
            cfg = Config(device=DEVICE, T=T, B=B, width=w)
            jax_step, _ = harness.WAY_FUNCS["jax-tf32"](make_problem(cfg), cfg)
            _, g = jax_step.convert(jax_step())
            errs = [_rel(gi, ri.cpu()) for gi, ri in zip(g, gref)]
            print(f"| jax (default precision) | - | - | {max(errs):.1e} |")
            continue
        prev = torch.backends.cuda.matmul.allow_tf32
        backend = way
        tuning = contextlib.nullcontext()
        if way.startswith("triton"):
            tuning = set_triton(precision=way.split("-", 1)[1])
            backend = "triton"
        elif way == "closed_form-tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            backend = "closed_form"
        _, rnn, _ = make(T, B, w, backend)
        rnn.load_state_dict({k: v.float() for k, v in ref_rnn.state_dict().items()})
        with tuning:
            y32, _, hs32 = rnn(x.float(), return_hidden=True)
            l32 = ((y32 - target.float()) ** 2).mean()
            g32 = torch.autograd.grad(l32, list(rnn.parameters()))
        errs = {n: _rel(gi, ri) for n, gi, ri in zip(names, g32, gref)}
        worst = max(errs, key=errs.get)
        print(f"| {way} | {_rel(y32, y):.1e} | {_rel(hs32, hs):.1e} | {errs[worst]:.1e} ({worst}) |", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = prev


def cmd_tune(a):
    import itertools

    prec = a.precision
    print(f"tune ({prec}): median ms per training step")
    for T in _ints(a.T):
        for B in _ints(a.B):
            for w in _ints(a.width):
                step, _, _ = make(T, B, w, "triton")
                res = []
                for bb, nw, nb, hoist, rec in itertools.product(
                    _ints(a.block_b), _ints(a.num_warps), _ints(a.width_block), (False, True), (False, True)
                ):
                    if nb > w or (hoist and (nb != w or w > 128)) or (rec and not a.recompute):
                        continue
                    if B <= 256 and bb > 32:
                        continue
                    try:
                        with set_triton(precision=prec, block_b=bb, num_warps=nw, width_block=nb, hoist=hoist,
                                        recompute=rec):
                            med, _ = bench(step, a.reps)
                    except Exception as e:
                        print(f"  T={T} B={B} w={w} bb={bb} nw={nw} nb={nb} hoist={hoist} rec={rec}: "
                              f"FAILED {type(e).__name__}: {str(e)[:100]}", flush=True)
                        continue
                    res.append((med, bb, nw, nb, hoist, rec))
                    print(f"  T={T} B={B} w={w} bb={bb} nw={nw} nb={nb} hoist={hoist} rec={rec}: {med:.3f}",
                          flush=True)
                if res:
                    best = min(res)
                    print(f"BEST T={T} B={B} w={w}: {best}", flush=True)


def cmd_profile(a):
    from torch.profiler import ProfilerActivity, profile

    T, B, w = _ints(a.T)[0], _ints(a.B)[0], _ints(a.width)[0]
    step, _, _ = make(T, B, w, "triton")
    with set_triton(precision=a.precision):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))
    if a.trace:
        prof.export_chrome_trace(a.trace)


def cmd_ncu_target(a):
    """A few steps to run under `ncu` (the kernels are the only gradrnn_* launches)."""
    T, B, w = _ints(a.T)[0], _ints(a.B)[0], _ints(a.width)[0]
    step, _, _ = make(T, B, w, "triton")
    with set_triton(precision=a.precision):
        for _ in range(3):
            step()
        torch.cuda.synchronize()


def cmd_resources(a):
    """Compile both kernels for sm_90 on this machine (no GPU needed) and print their resources."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from innergrad.kernels import triton_rnn

    k = triton_rnn._kernels()
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

    def compile_one(kern, scalars, consts, nw):
        sig = {n: "constexpr" if n in consts else "i32" if n in scalars else "*u8" if n == "VALID" else "*fp32"
               for n in kern.arg_names}
        cx = {(kern.arg_names.index(n),): v for n, v in consts.items()}
        c = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=cx),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": 1})
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
            f.write(c.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        return re.search(r"REG:(\d+)", out).group(1), re.search(r"STACK:(\d+)", out).group(1), c.metadata.shared

    print("| width | precision | block_b | warps | width_block | hoist | fwd regs/stack/smem | bwd regs/stack/smem |")
    print("|---|---|---|---|---|---|---|---|")
    for w in _ints(a.width):
        for nb in _ints(a.width_block):
            if nb > w:
                continue
            for hoist in (False, True) if nb == w and w <= 128 else (False,):
                for nw in _ints(a.num_warps):
                    base = dict(DX=Config.input_size, DH=Config.hidden_size,
                                W=w, DXP=16, DHP=32, WP=w, NB=nb, BLOCK_B=_ints(a.block_b)[0],
                                ACT=0, PREC=k.PREC_CODES[a.precision], HOIST=hoist)
                    f = compile_one(k.gradrnn_fwd_kernel, ("T", "B"),
                                    {**base, "HAS_VALID": False, "HAS_B3": True, "SAVE": True}, nw)
                    b = compile_one(k.gradrnn_bwd_kernel, ("t_lo", "t_hi", "TC", "B"),
                                    {**base, "HAS_VALID": False, "RECOMPUTE": False}, nw)
                    print(f"| {w} | {a.precision} | {base['BLOCK_B']} | {nw} | {nb} | {hoist} | "
                          f"{'/'.join(map(str, f))} | {'/'.join(map(str, b))} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["table", "accuracy", "tune", "profile", "ncu-target", "resources"])
    p.add_argument("--T", default="64,256")
    p.add_argument("--B", default="32,256,4096")
    p.add_argument("--width", default="64,128,256")
    p.add_argument("--ways", default="triton-ieee,triton-tf32,triton-bf16,closed_form,fused,naive,jax",
                   help="harness ways (innergrad bench); 'jax' is JAX's default (TF32) precision here, "
                        "'jax-highest' float32 dots")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--precision", default="tf32")
    p.add_argument("--block-b", default="16,32,64")
    p.add_argument("--num-warps", default="4,8")
    p.add_argument("--width-block", default="32,64,128,256")
    p.add_argument("--recompute", action="store_true", help="tune: also try recomputing in the backward")
    p.add_argument("--json", default="")
    p.add_argument("--trace", default="")
    p.add_argument("--device", default="cuda", help="cpu: a dry run through TRITON_INTERPRET=1")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = a.device
    if a.cmd in ("accuracy", "profile", "ncu-target"):
        a.T = a.T if a.T != "64,256" else "64"
        a.B = a.B if a.B != "32,256,4096" else "256"
        a.width = a.width if a.width != "64,128,256" else "128"
    cmd = {"table": cmd_table, "accuracy": cmd_accuracy, "tune": cmd_tune, "profile": cmd_profile,
           "ncu-target": cmd_ncu_target, "resources": cmd_resources}[a.cmd]
    with ig.settings(triton_interpret_on_cpu=a.device == "cpu"):  # cpu: a dry run through the interpreter
        cmd(a)


if __name__ == "__main__":
    main()
