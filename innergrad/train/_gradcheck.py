"""The gradient-check suite of a trained GradRNN (`innergrad check`): gradcheck, gradgradcheck and
every backend against autograd, on a float64 copy; one row per check.
"""

from __future__ import annotations

import torch

from ..data.sequences import SequenceData


def check_model(model, data: SequenceData | None = None, n_seq: int = 3, n_steps: int = 4, seed: int = 0) -> list[dict]:
    """Verify a trained GradRNN's gradients on a float64 copy; returns one row per check.

    - `gradcheck` / `gradgradcheck` (exact mode) of `(y, h_T)` with respect to x, h0 and every
      parameter, for each backend that can run the model (fast mode: random projections of the
      Jacobian against finite differences). Backends without double backward skip gradgradcheck.
    - Backends against each other (float64): y, h_T and the parameter gradients of a fixed
      random loss, in exact and detached mode, versus the `autograd` reference; for a model on a
      GPU also in float32 on that device (where fused kernels such as `triton` run).

    Each row: `{"check", "backend", "error", "tolerance", "passed", "note", "skipped"}` (a skipped
    check does not count as failed).
    """
    import copy

    from torch.func import functional_call

    from ..core.backends import BACKENDS

    m64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    D, H = m64.input_size, m64.hidden_size
    g = torch.Generator().manual_seed(seed)
    if data is not None:
        x = torch.from_numpy(data.x[:n_seq, :n_steps]).double().transpose(0, 1).contiguous()
    else:
        x = torch.randn(n_steps, n_seq, D, generator=g, dtype=torch.float64)
    h0 = 0.1 * torch.randn(x.shape[1], H, generator=g, dtype=torch.float64)
    names = [n for n, _ in m64.named_parameters()]
    params = [p.detach().clone() for _, p in m64.named_parameters()]

    def runner(backend: str, mode: str):
        m = copy.deepcopy(m64)
        m.backend, m.mode = backend, mode

        def f(x_, h0_, *ps):
            y, h = functional_call(m, dict(zip(names, ps)), (x_,), {"h0": h0_})
            return y, h

        return f

    usable = []
    for name, b in BACKENDS.items():
        why = b.unsupported(m64.F, (x[0], h0), (1,))
        if why is None:
            usable.append(name)
    rows: list[dict] = []

    def row(check, backend, passed, error=None, tol=None, note="", skipped=False):
        rows.append({"check": check, "backend": backend, "passed": bool(passed), "error": error,
                     "tolerance": tol, "note": note, "skipped": skipped})

    _gradchecks(usable, runner, tuple(t.clone().requires_grad_() for t in (x, h0, *params)), row)
    w = torch.randn(x.shape[0], x.shape[1], generator=g, dtype=torch.float64)
    v = torch.randn(x.shape[1], H, generator=g, dtype=torch.float64)

    ref_name = _agreement(usable, runner, (x, h0, *params), w, v, row)
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        _compare_on_device(model, x, h0, w, v, dev, row)
    # Both modes must agree on the forward pass: detached changes only what training sees.
    with torch.no_grad():
        ye, he = runner(ref_name, "exact")(x, h0, *params)
        yd, hd = runner(ref_name, "detached")(x, h0, *params)
    err = max(float((ye - yd).abs().max()), float((he - hd).abs().max()))
    row("exact and detached forward agree", ref_name, err <= 1e-12, err, "1.0e-12")
    return rows


def _agreement(usable: list[str], runner, inputs: tuple, w, v, row) -> str:
    """Every usable backend against the reference (autograd) in exact and detached mode: y, h_T and the
    gradients of the loss `sum(w * y) + sum(v * h_T)`; returns the reference's name."""
    x, h0, *params = inputs

    def outputs(name, mode):
        f = runner(name, mode)
        ins = tuple(t.clone().requires_grad_() for t in (x, h0, *params))
        y, h = f(*ins)
        grads = torch.autograd.grad((w * y).sum() + (v * h).sum(), ins, allow_unused=True, materialize_grads=True)
        return [y.detach(), h.detach(), *grads]

    ref_name = "autograd" if "autograd" in usable else usable[0]
    for mode in ("exact", "detached"):
        ref = outputs(ref_name, mode)
        scale = max(float(t.abs().max()) for t in ref)
        tol = 1e-9 * max(1.0, scale)
        for name in usable:
            if name == ref_name:
                continue
            try:
                got = outputs(name, mode)
                err = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                row(f"{mode} mode: y, h_T, grads vs {ref_name}", name, err <= tol, err, f"{tol:.1e}")
            except Exception as e:
                row(f"{mode} mode: y, h_T, grads vs {ref_name}", name, False, note=_first_line(e))
    return ref_name


def _gradchecks(usable: list[str], runner, inputs: tuple, row) -> None:
    """gradcheck and gradgradcheck (exact mode, fast) for each usable backend; a failure is a row, not a crash."""
    from ..core.backends import BACKENDS

    for name in usable:
        f = runner(name, "exact")
        try:
            ok = torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-6, rtol=1e-4, raise_exception=True)
            row("gradcheck d(y, h_T)/d(x, h0, params)", name, ok, tol="atol 1e-6, rtol 1e-4")
        except Exception as e:  # a failed check is a result to report, not a crash
            row("gradcheck d(y, h_T)/d(x, h0, params)", name, False, note=_first_line(e))
        if not BACKENDS[name].double_backward:
            row("gradgradcheck (second order)", name, True, note="backend has no double backward", skipped=True)
            continue
        try:
            ok = torch.autograd.gradgradcheck(f, inputs, fast_mode=True, atol=1e-5, rtol=1e-3,
                                              raise_exception=True)
            row("gradgradcheck (second order)", name, ok, tol="atol 1e-5, rtol 1e-3")
        except Exception as e:
            row("gradgradcheck (second order)", name, False, note=_first_line(e))


def _compare_on_device(model, x, h0, w, v, dev, row) -> None:
    """Backends against autograd on the model's own (GPU) device in float32, where fused kernels run."""
    import copy

    from ..core.backends import BACKENDS

    m32 = copy.deepcopy(model).to(device=dev, dtype=torch.float32).eval()
    x, h0, w, v = (t.to(device=dev, dtype=torch.float32) for t in (x, h0, w, v))
    usable = [n for n, b in BACKENDS.items() if b.unsupported(m32.F, (x[0], h0), (1,)) is None]

    def outputs(name, mode):
        m32.backend, m32.mode = name, mode
        ps = list(m32.parameters())
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        y, h = m32(xi, h0=hi)
        grads = torch.autograd.grad((w * y).sum() + (v * h).sum(), [xi, hi, *ps], materialize_grads=True)
        return [y.detach(), h.detach(), *grads]

    if "autograd" not in usable:
        return
    for mode in ("exact", "detached"):
        ref = outputs("autograd", mode)
        tol = 1e-3 * max(1.0, max(float(t.abs().max()) for t in ref))
        for name in usable:
            if name == "autograd":
                continue
            check = f"{mode} mode on {dev.type} (float32) vs autograd"
            try:
                got = outputs(name, mode)
                err = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                row(check, name, err <= tol, err, f"{tol:.1e}")
            except Exception as e:
                row(check, name, False, note=_first_line(e))


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]




__all__ = ["check_model"]
