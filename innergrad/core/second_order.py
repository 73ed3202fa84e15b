"""Second derivatives by automatic differentiation, for any `f`: the general backends' Hessian and HVP.

Two ways, matching the first-order backends:

- batch-sum (`autograd` backend): the per-sample gradient is `d(sum_b f_b)/dx` (samples independent),
  and its derivative along a tangent `v` (one forward-mode jvp through that gradient) is `H v` for
  every sample at once. The Hessian takes one jvp per column, n of them under one `vmap`, whatever
  the batch size.
- per sample (`func` backend): `vmap` over the batch of `jacfwd(grad(f))`, each sample alone.

Both fall back to reverse-over-reverse where an op has no forward-mode formula. Results are
differentiable by ordinary autograd (the parameters of `f` and upstream inputs), so a loss on a
Hessian trains `f` through third derivatives. Layout: `H` is `(B, n, n)` over the requested
arguments flattened per sample and concatenated in `argnums` order; the primitive splits the blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .backends import _fresh

Tensor = torch.Tensor


def _forward_missing(e: Exception) -> bool:
    """An op without a forward-mode formula or a vmap rule (or an old-style autograd.Function, which
    no torch.func transform can pass): the reverse-mode path still can."""
    msg = str(e).lower()
    return isinstance(e, (RuntimeError, NotImplementedError)) and any(
        w in msg for w in ("forward", "functorch", "vmap"))


def _substitute(args: Sequence[Tensor], argnums: tuple[int, ...], picked: Sequence[Tensor]) -> list:
    xs = list(args)
    for i, t in zip(argnums, picked):
        xs[i] = t
    return xs


def flat_cat(ts: Sequence[Tensor], batched: bool) -> Tensor:
    """Concatenate tensors flattened per sample: `(B, n)` (batched) or `(n,)`."""
    if batched:
        return torch.cat([t.reshape(t.shape[0], -1) for t in ts], -1)
    return torch.cat([t.reshape(-1) for t in ts], -1)


def probe_batched(f: Callable, args: Sequence[Tensor], argnums: tuple[int, ...], check: Callable) -> bool:
    """Whether `f` is batched (one scalar per sample) rather than a 0-d function: one forward without a graph."""
    with torch.no_grad():
        return check(f(*args), args, argnums).dim() > 0


def _batch_sum_grads(f: Callable, args, argnums, check: Callable) -> Callable:
    """`picked -> (per-sample grads, value)` by the batch-sum trick, in torch.func so jvp can push through."""
    nums = tuple(range(len(argnums)))

    def total(*picked):
        xs = _substitute(args, argnums, picked)
        out = check(f(*xs), xs, argnums)
        return out.sum(), out

    def grads(*picked):
        g, (_, out) = torch.func.grad_and_value(total, argnums=nums, has_aux=True)(*picked)
        return g, out

    return grads


def _basis(picked: Sequence[Tensor], batched: bool) -> tuple[Tensor, ...]:
    """For each picked argument, n unit tangents (n = total flattened size per sample), stacked in dim 0."""
    ref = picked[0]
    sizes = [t[0].numel() if batched else t.numel() for t in picked]
    eye = torch.eye(sum(sizes), dtype=ref.dtype, device=ref.device)
    out, off = [], 0
    for t, s in zip(picked, sizes):
        cols = eye[:, off : off + s]
        if batched:
            cols = cols.unsqueeze(1).expand(-1, t.shape[0], -1)
        out.append(cols.reshape(-1, *t.shape).to(t.dtype))
        off += s
    return tuple(out)


def batch_sum_hessian(f: Callable, args, argnums, create_graph: bool, keep_value_graph: bool, check: Callable):
    """`(value, grads, H)` by the batch-sum trick: n forward-mode jvps through the gradient, one vmap."""
    picked = tuple(args[i] for i in argnums)
    batched = probe_batched(f, args, argnums, check)
    grads_fn = _batch_sum_grads(f, args, argnums, check)
    basis = _basis(picked, batched)
    with torch.set_grad_enabled(create_graph):
        try:
            def column(*tangents):
                return torch.func.jvp(grads_fn, picked, tangents, has_aux=True)[1]

            cols = torch.func.vmap(column)(*basis)  # per arg: (n, B, *e_i)
            grads, value = grads_fn(*picked)
        except Exception as e:
            if not _forward_missing(e):
                raise
            return _reverse_hessian(f, args, argnums, create_graph, batched, check)
        # cols[i][j] = d grad_i / d x_j: the j-th column of H.
        H = _columns_to_h(cols, batched)
    if keep_value_graph and not create_graph:
        value = check(f(*args), args, argnums)
    return value, tuple(grads), H


def _columns_to_h(cols: Sequence[Tensor], batched: bool) -> Tensor:
    n = cols[0].shape[0]
    if batched:
        B = cols[0].shape[1]
        rows = torch.cat([c.reshape(n, B, -1) for c in cols], -1)  # (n_col, B, n_row)
        return rows.permute(1, 2, 0)
    return torch.cat([c.reshape(n, -1) for c in cols], -1).T


def _reverse_grads(f, args, argnums, check):
    """`(value, wrt, grads)`: the batch-sum gradient as a differentiable graph (call with grad enabled)."""
    xs = list(args)
    for i in argnums:
        xs[i] = _fresh(xs[i])
    wrt = [xs[i] for i in argnums]
    value = check(f(*xs), xs, argnums)
    grads = torch.autograd.grad(value.sum(), wrt, create_graph=True, materialize_grads=True)
    return value, wrt, grads


def _reverse_hessian(f, args, argnums, create_graph, batched, check):
    """Reverse-over-reverse: one backward per column of the batch-sum gradient."""
    with torch.enable_grad():
        value, wrt, grads = _reverse_grads(f, args, argnums, check)
        g = flat_cat(grads, batched)
        rows = []
        for j in range(g.shape[-1]):
            r = torch.autograd.grad(g[..., j].sum(), wrt, retain_graph=True, create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
            rows.append(flat_cat(r, batched))
        H = torch.stack(rows, -2)
    return value, tuple(grads), H


def batch_sum_hvp(f: Callable, args, argnums, tangents, create_graph: bool, keep_value_graph: bool,
                  check: Callable, method: str = "auto"):
    """`(value, grads, H v)` per argument: one jvp through the batch-sum gradient (or one double backward)."""
    picked = tuple(args[i] for i in argnums)
    if method != "reverse":
        grads_fn = _batch_sum_grads(f, args, argnums, check)
        try:
            with torch.set_grad_enabled(create_graph):
                grads, hv, value = torch.func.jvp(grads_fn, picked, tuple(tangents), has_aux=True)  # type: ignore[misc]  # has_aux adds a third
        except Exception as e:
            if method == "forward" or not _forward_missing(e):
                raise
        else:
            if keep_value_graph and not create_graph:
                value = check(f(*args), args, argnums)
            return value, tuple(grads), tuple(hv)
    with torch.enable_grad():
        value, wrt, grads = _reverse_grads(f, args, argnums, check)
        dot = sum((g * t).sum() for g, t in zip(grads, tangents))
        hv = torch.autograd.grad(dot, wrt, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return value, tuple(grads), tuple(hv)


def _one_sample(f: Callable, args, argnums, check: Callable) -> Callable:
    """`(sample of each arg) -> scalar`: f on a batch of one, used under vmap over the batch."""

    def one(*sample):
        xs = [a.unsqueeze(0) for a in sample]
        return check(f(*xs), xs, argnums).reshape(())

    return one


def per_sample_hessian(f: Callable, args, argnums, create_graph: bool, keep_value_graph: bool, check: Callable):
    """`(value, grads, H)` with each sample evaluated alone: vmap over the batch of jacfwd(grad(f))."""
    if not probe_batched(f, args, argnums, check):
        return batch_sum_hessian(f, args, argnums, create_graph, keep_value_graph, check)
    one = _one_sample(f, args, argnums, check)
    nums = tuple(argnums)

    def inner(*sample):
        g, v = torch.func.grad_and_value(one, argnums=nums)(*sample)
        return g, (g, v)

    def run(jac):
        def per(*sample):
            J, (g, v) = jac(inner, argnums=nums, has_aux=True)(*sample)
            return J, g, v

        return torch.func.vmap(per)(*args)

    with torch.set_grad_enabled(create_graph):
        try:
            J, grads, value = run(torch.func.jacfwd)
        except Exception as e:
            if not _forward_missing(e):
                raise
            J, grads, value = run(torch.func.jacrev)
    B = value.shape[0]
    # J[i][j]: (B, *e_i, *e_j) = d grad_i / d x_j.
    rows = [torch.cat([J[i][j].reshape(B, args[a].shape[1:].numel(), -1) for j in range(len(nums))], -1)
            for i, a in enumerate(nums)]
    H = torch.cat(rows, -2)
    if keep_value_graph and not create_graph:
        value = check(f(*args), args, argnums)
    return value, tuple(grads), H


def per_sample_hvp(f: Callable, args, argnums, tangents, create_graph: bool, keep_value_graph: bool,
                   check: Callable, method: str = "auto"):
    """`(value, grads, H v)` with each sample evaluated alone."""
    if not probe_batched(f, args, argnums, check):
        return batch_sum_hvp(f, args, argnums, tangents, create_graph, keep_value_graph, check, method)
    one = _one_sample(f, args, argnums, check)
    nums = tuple(argnums)
    k = len(nums)

    def gv(*sample):
        g, v = torch.func.grad_and_value(one, argnums=nums)(*sample)
        return g, v

    def per(*xs_and_ts):
        sample, ts = xs_and_ts[: len(args)], xs_and_ts[len(args):]
        picked = tuple(sample[i] for i in nums)

        def of_picked(*p):
            return gv(*_substitute(sample, nums, p))

        if method == "reverse":
            (g, v), vjp_fn = torch.func.vjp(of_picked, *picked)
            # H is symmetric: the vjp of the gradient with the tangent is H v.
            hv = vjp_fn((tuple(ts), torch.zeros_like(v)))
            return g, tuple(hv), v
        g, hv, v = torch.func.jvp(of_picked, picked, tuple(ts), has_aux=True)
        return g, hv, v

    with torch.set_grad_enabled(create_graph):
        try:
            grads, hv, value = torch.func.vmap(per)(*args, *tangents)
        except Exception as e:
            if method == "forward" or not _forward_missing(e):
                raise
            return per_sample_hvp(f, args, argnums, tangents, create_graph, keep_value_graph, check, "reverse")
    assert len(hv) == k
    if keep_value_graph and not create_graph:
        value = check(f(*args), args, argnums)
    return value, tuple(grads), tuple(hv)
