"""Guards around the batch-sum trick and second-order training.

The per-sample gradient of `f` is computed by most backends as `d(sum_i f_i)/dx`, which equals the
per-sample gradient only when sample i's output does not depend on sample j's input. And a loss on
the gradient trains `f` through its second derivative, which is zero almost everywhere for
piecewise-linear activations. Both failures are silent in plain PyTorch; this module makes them loud.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import ShapeError


class SecondOrderWarning(UserWarning):
    """Training through the gradient of `f` where `f`'s second derivative is zero almost everywhere."""


class CouplingError(ValueError):
    """`f` mixes samples of the batch, so the batch-sum trick would not give per-sample gradients."""


_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Threshold)
_warned: set[str] = set()


def modules_of(f: Callable) -> list[nn.Module]:
    """The modules reachable from `f`: itself, a bound method's owner, a partial's function or closure cells."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(obj: object, depth: int) -> None:
        if depth > 3 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            return
        if isinstance(obj, functools.partial):
            visit(obj.func, depth + 1)
            for a in (*obj.args, *obj.keywords.values()):
                visit(a, depth + 1)
            return
        owner = getattr(obj, "__self__", None)
        if owner is not None:
            visit(owner, depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                visit(cell.cell_contents, depth + 1)
            except ValueError:  # empty cell
                pass

    visit(f, 0)
    return found


def _submodules(f: Callable) -> Iterator[nn.Module]:
    for m in modules_of(f):
        yield from m.modules()


def batch_mixing_modules(f: Callable) -> list[str]:
    """Names of modules in `f` that compute statistics across the batch as `f` is configured now."""
    out = []
    for m in _submodules(f):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # Batch statistics are used in training mode, and in eval mode without running stats.
            if m.training or not m.track_running_stats:
                out.append(type(m).__name__)
    return out


def warn_if_kinked(f: Callable, where: str) -> None:
    """Warn once per activation type when `f` is trained through its gradient but has zero curvature."""
    kinked = sorted({type(m).__name__ for m in _submodules(f) if isinstance(m, _KINKED)})
    kinked += sorted(getattr(m, "activation_name", "") for m in _submodules(f)
                     if getattr(m, "activation_name", "") == "relu")
    new = [k for k in kinked if k not in _warned]
    if not new:
        return
    _warned.update(new)
    warnings.warn(
        f"{where}: f uses {', '.join(new)}, whose second derivative is zero almost everywhere, so a loss "
        "on the gradient of f gives f's parameters no second-order signal (they train only through "
        "f's value, if at all). Use a smooth activation: softplus, SiLU, tanh or GELU.",
        SecondOrderWarning,
        stacklevel=4,
    )


def check_even_dim(dim: object, who: str, size: str, halves: str, system: str) -> None:
    """A state of two halves (positions and momenta, q and q') needs an even int size >= 2."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
        raise ValueError(f"{who}: dim is the {size} and must be an even int >= 2 ({halves}), got {dim!r}. "
                         f"For a 1-D {system} use dim=2.")


def check_input_sizes(f: Callable, args: Sequence, who: str, names: Sequence[str] | None = None) -> None:
    """Raise ShapeError where `args` do not fit the input sizes `f` declares (`f.in_sizes`, as `ig.MLP` does).

    Run in Python before any backend or kernel: the fused kernels index F's weights by F's sizes, so
    an input smaller than F expects would be read past its end, and a larger one silently mixed
    with the wrong weights. A module without `in_sizes` is not checked here.
    """
    sizes = getattr(f, "in_sizes", None)
    if sizes is None:
        return
    sizes = tuple(sizes)
    names = tuple(names) if names is not None else tuple(f"input {i}" for i in range(len(args)))
    if len(args) != len(sizes):
        raise ShapeError(f"{who}: F takes {len(sizes)} input(s) of sizes {sizes} (F.in_sizes), got {len(args)}")
    for name, a, size in zip(names, args, sizes):
        if isinstance(a, torch.Tensor) and (a.dim() == 0 or a.shape[-1] != size):
            raise ShapeError(
                f"{who}: F takes {name} of size {size} in the last dimension (F.in_sizes={sizes}), but {name} "
                f"has shape {tuple(a.shape)}; build F for these sizes, or pass inputs of F's sizes"
            )


def debug_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("INNERGRAD_DEBUG", "") not in ("", "0", "false", "False")


def randomized_coupling_check(f: Callable, args: tuple, argnums: tuple[int, ...], rtol: float = 1e-4) -> bool:
    """True when the batch-sum gradient is not the per-sample one.

    If samples are independent, `d(sum_i w_i f_i)/dx_j = w_j df_j/dx_j` for any weights `w`; a random
    sign vector exposes any sample that feeds another's output. Costs one forward and two backwards.
    """
    with torch.enable_grad():
        xs = list(args)
        for i in argnums:
            xs[i] = xs[i].detach().requires_grad_()
        out = f(*xs).reshape(-1)
        if out.numel() < 2:
            return False
        w = torch.randint(0, 2, out.shape, device=out.device).to(out.dtype) * 2 - 1
        wrt = [xs[i] for i in argnums]
        g = torch.autograd.grad(out.sum(), wrt, retain_graph=True, allow_unused=True, materialize_grads=True)
        gw = torch.autograd.grad((w * out).sum(), wrt, allow_unused=True, materialize_grads=True)
    for a, b in zip(g, gw):
        scale = w.reshape(-1, *([1] * (a.dim() - 1)))
        expect = a * scale
        tol = rtol * (expect.abs().max() + b.abs().max() + 1e-30)
        if (b - expect).abs().max() > tol:
            return True
    return False
