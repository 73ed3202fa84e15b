"""Sampled trajectories: finite-difference time derivatives and trajectory files (CSV, npz).

A measured trajectory rarely comes with its time derivative, and its time stamps are rarely even:
`time_derivative` takes the stamps as given and keeps differences inside each trajectory.
`load_trajectories` reads named columns (time, state, trajectory id, energy) from a CSV or `.npz`
file, and `evaluate_expression` computes a column from the state names without Python's `eval`.
"""

from __future__ import annotations

import ast
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .sequences import DataError

Tensor = torch.Tensor

SCHEMES = ("forward", "central")


def _segments(trajectory, n: int) -> list[np.ndarray]:
    """Row indices of each trajectory, in order of first appearance, each in the rows' order."""
    if trajectory is None:
        return [np.arange(n)]
    ids = trajectory.detach().cpu().numpy() if isinstance(trajectory, Tensor) else np.asarray(trajectory)
    if ids.ndim != 1 or len(ids) != n:
        raise DataError(f"time_derivative: trajectory must hold one id per row ({n}), got shape {ids.shape}")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique() sorts the ids; the user's order is the order of appearance
    return [np.flatnonzero(inverse == k) for k in order]


def _prepare(t, x, scheme: str):
    """Check the scheme and shapes; return `(t, x, is_tensor, t as float64 numpy)`, t finite."""
    if scheme not in SCHEMES:
        raise DataError(f"time_derivative: scheme must be one of {SCHEMES}, got {scheme!r}")
    is_tensor = isinstance(x, Tensor)
    if is_tensor:
        tt = torch.as_tensor(t, device=x.device)
        if not torch.is_floating_point(tt):
            tt = tt.to(x.dtype if torch.is_floating_point(x) else torch.float64)
    else:
        x = np.asarray(x)
        tt = np.asarray(t.detach().cpu().numpy() if isinstance(t, Tensor) else t, dtype=np.float64)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
    if tt.ndim != 1:
        raise DataError(f"time_derivative: t must be 1-D (one time per row), got shape {tuple(tt.shape)}")
    if x.ndim not in (1, 2) or x.shape[0] != tt.shape[0]:
        raise DataError(f"time_derivative: x must be (N,) or (N, D) with N = len(t) = {tt.shape[0]}, "
                         f"got shape {tuple(x.shape)}")
    t_np = tt.detach().cpu().double().numpy() if is_tensor else tt
    if not np.all(np.isfinite(t_np)):
        raise DataError("time_derivative: t holds NaN or infinite times; drop or fix those rows")
    return tt, x, is_tensor, t_np


def _stencil_rows(t_np: np.ndarray, trajectory, n: int, scheme: str):
    """Row indices `(rows, lo, hi)` of each difference, never crossing trajectories (`lo` is None for forward)."""
    need = 2 if scheme == "forward" else 3
    rows, lo, hi = [], [], []
    for k, seg in enumerate(_segments(trajectory, n)):
        name = "the trajectory" if trajectory is None else f"trajectory #{k + 1} (in order of appearance)"
        if len(seg) < need:
            raise DataError(f"time_derivative: {name} has {len(seg)} row(s); the {scheme} scheme needs at "
                             f"least {need}. Drop it or use scheme='forward'.")
        steps = np.diff(t_np[seg])
        if np.any(steps <= 0):
            i = int(np.argmax(steps <= 0))
            raise DataError(f"time_derivative: t must increase within {name}; row {int(seg[i + 1])} has "
                             f"t = {t_np[seg[i + 1]]:g} after t = {t_np[seg[i]]:g} at row {int(seg[i])}. "
                             "Sort the rows by time or pass trajectory ids.")
        if scheme == "forward":
            rows.append(seg[:-1])
            hi.append(seg[1:])
        else:
            lo.append(seg[:-2])
            rows.append(seg[1:-1])
            hi.append(seg[2:])
    return np.concatenate(rows), (np.concatenate(lo) if lo else None), np.concatenate(hi)


def _check_finite_states(x, is_tensor: bool) -> None:
    bad = (~torch.isfinite(x.detach()).reshape(len(x), -1).all(1)).cpu().numpy() if is_tensor \
        else ~np.isfinite(x.reshape(len(x), -1)).all(1)
    if bad.any():
        raise DataError(f"time_derivative: x holds NaN or infinite values at row {int(np.argmax(bad))}; drop or "
                         "fix those rows")


def _weights(t_np: np.ndarray, rows_np, lo_np, hi_np):
    """Stencil weights `(w_lo, w_mid, w_hi)` for x[lo], x[rows], x[hi] (`w_lo` None for forward)."""
    # Weights from the steps alone, in float64: no h^2 * x products that overflow for |x| near the
    # dtype's limit, and no float32 differences of t that lose every digit when steps are small against t.
    t0, t1 = t_np[rows_np], t_np[hi_np]
    if lo_np is None:
        w_hi = 1.0 / (t1 - t0)
        return None, -w_hi, w_hi
    h0, h1 = t0 - t_np[lo_np], t1 - t0
    return -h1 / (h0 * (h0 + h1)), (h1 - h0) / (h0 * h1), h0 / (h1 * (h0 + h1))


def _apply_stencil(x, is_tensor: bool, weights, rows_np, lo_np, hi_np):
    """`sum(w * x[idx])` in float64, returned in x's dtype; returns `(dx, per-row finite mask)`."""
    w_lo, w_mid, w_hi = weights
    if is_tensor:  # torch arithmetic in float64, so gradients still flow to x
        x64 = x.to(torch.float64)

        def term(w, idx):
            wt = torch.as_tensor(w, dtype=torch.float64, device=x.device)
            return (wt[:, None] if x.ndim == 2 else wt) * x64[torch.as_tensor(idx, device=x.device)]
    else:
        x64 = x.astype(np.float64)

        def term(w, idx):
            return (w[:, None] if x.ndim == 2 else w) * x64[idx]

    dx = term(w_hi, hi_np) + term(w_mid, rows_np)
    if w_lo is not None:
        dx = dx + term(w_lo, lo_np)
    if is_tensor:
        dx = dx.to(x.dtype) if torch.is_floating_point(x) else dx
        finite = torch.isfinite(dx.detach()).reshape(len(dx), -1).all(1).cpu().numpy()
    else:
        with np.errstate(over="ignore"):
            dx = dx.astype(x.dtype)
        finite = np.isfinite(dx).reshape(len(dx), -1).all(1)
    return dx, finite


def time_derivative(t, x, scheme: str = "forward", trajectory=None, *, return_rows: bool = False):
    """Finite-difference time derivatives of sampled trajectories with uneven time stamps.

    **Arguments:**

    - `t`: times, shape `(N,)`, increasing within each trajectory (any spacing).
    - `x`: states, shape `(N,)` or `(N, D)`, row `i` sampled at `t[i]`.
    - `scheme`: `"forward"`: the rows `x[:-1]` with `(x[i+1] - x[i]) / (t[i+1] - t[i])`;
      `"central"`: the interior rows `x[1:-1]` with the three-point derivative for uneven steps,
      `(h0^2 x[i+1] - h1^2 x[i-1] + (h1^2 - h0^2) x[i]) / (h0 h1 (h0 + h1))` where
      `h0 = t[i] - t[i-1]`, `h1 = t[i+1] - t[i]` (second order; on even steps it is
      `(x[i+1] - x[i-1]) / (2 h)`, and it is exact for quadratics).
      Computed in float64 whatever x's dtype (weights from the steps first, so no `h^2 x` overflows)
      and returned in x's dtype; NaN/inf in x, or a derivative that does not fit x's dtype, is a
      DataError (a ValueError) naming the row.
    - `trajectory`: optional ids, one per row: differences never cross from one trajectory to
      another. Rows of a trajectory need not be contiguous; the output lists the trajectories in
      order of first appearance.
    - `return_rows`: also return the indices (into the input rows) of the returned states, to
      carry other columns (ids, times, energies) along.

    **Returns:** `(x, dx)` (or `(x, dx, rows)`): numpy arrays for numpy input, tensors (same dtype
    and device as `x`) for tensor input.
    """
    tt, x, is_tensor, t_np = _prepare(t, x, scheme)
    rows_np, lo_np, hi_np = _stencil_rows(t_np, trajectory, tt.shape[0], scheme)
    _check_finite_states(x, is_tensor)
    dx, finite = _apply_stencil(x, is_tensor, _weights(t_np, rows_np, lo_np, hi_np), rows_np, lo_np, hi_np)
    if not finite.all():
        k = int(np.argmax(~finite))
        t0, t1 = t_np[rows_np], t_np[hi_np]
        raise DataError(f"time_derivative: dx/dt at row {int(rows_np[k])} does not fit {x.dtype} (it overflows; "
                         f"the step there is {t1[k] - t0[k]:g}); pass x in float64 or check the time stamps")
    x0 = x[torch.as_tensor(rows_np, device=x.device)] if is_tensor else x[rows_np]
    return (x0, dx, rows_np) if return_rows else (x0, dx)


# ---------------------------------------------------------------- safe expressions

_BINARY = {ast.Add: (np.add, "+"), ast.Sub: (np.subtract, "-"), ast.Mult: (np.multiply, "*"),
           ast.Div: (np.true_divide, "/"), ast.Pow: (np.power, "**")}
_UNARY = {ast.UAdd: np.positive, ast.USub: np.negative}
# name: (numpy ufunc, exact number of arguments). Only pure element-wise functions, called with exactly
# their arity: a ufunc's extra positional argument is `out=`, which would write into a column.
_FUNCTIONS = {name: (getattr(np, name), arity) for name, arity in (
    ("sin", 1), ("cos", 1), ("tan", 1), ("arcsin", 1), ("arccos", 1), ("arctan", 1), ("sinh", 1), ("cosh", 1),
    ("tanh", 1), ("exp", 1), ("log", 1), ("log10", 1), ("sqrt", 1), ("abs", 1), ("arctan2", 2), ("hypot", 2),
    ("minimum", 2), ("maximum", 2))}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPRESSION_CHARS = 2000
MAX_EXPRESSION_NODES = 500
MAX_EXPRESSION_DEPTH = 40


def _expr_error(expr: str, what: str) -> DataError:
    shown = expr if len(expr) <= 80 else expr[:77] + "..."
    return DataError(f"energy expression {shown!r}: {what}")


def _depth(node: ast.AST, limit: int) -> int:
    """The tree's depth, stopping (iteratively, no recursion) once it passes `limit`."""
    stack, deepest = [(node, 1)], 0
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack += [(c, d + 1) for c in ast.iter_child_nodes(n)]
    return deepest


def _parse_expression(expr: str, columns: Mapping[str, np.ndarray]) -> ast.Expression:
    """Check the text and its size, parse it, and check the tree's size and depth (before any evaluation)."""
    if not isinstance(expr, str) or not expr.strip():
        raise DataError(f"energy expression must be a non-empty string, got {str(expr)[:80]!r}")
    if not columns:
        raise DataError("energy expression: no columns to evaluate it on; name at least one state column")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise _expr_error(expr, f"{len(expr)} characters, more than the {MAX_EXPRESSION_CHARS} allowed; write "
                                "the energy as a column of the data file instead (--energy-column)")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise _expr_error(expr, f"not valid arithmetic: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # ValueError: e.g. a null byte in the text
        raise _expr_error(expr, "nested too deeply to read; simplify it") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_EXPRESSION_NODES:
        raise _expr_error(expr, f"{n_nodes} terms, more than the {MAX_EXPRESSION_NODES} allowed; write the "
                                "energy as a column of the data file instead (--energy-column)")
    if _depth(tree, MAX_EXPRESSION_DEPTH) > MAX_EXPRESSION_DEPTH:
        raise _expr_error(expr, f"nested more than {MAX_EXPRESSION_DEPTH} levels deep; simplify it")
    return tree


class _Evaluator:
    """Evaluates a parsed expression node by node over float64 copies of the columns, checking each result."""

    def __init__(self, expr: str, columns: Mapping[str, np.ndarray], row_name, finite: bool):
        self.expr, self.source, self.finite = expr, expr.strip(), finite
        self.allowed = sorted(set(columns) | set(_CONSTANTS))
        self.n = len(np.asarray(next(iter(columns.values()))))
        self.row_name = row_name or (lambda i: f"data row {i + 1}")
        # copies: nothing reaches the caller's
        self.cols = {k: np.array(v, dtype=np.float64) for k, v in columns.items()}
        if any(c.shape != (self.n,) for c in self.cols.values()):
            raise DataError(f"energy expression: every column must be 1-D of one length, got shapes "
                             f"{[c.shape for c in self.cols.values()][:5]}")
        # rows the caller gave finite
        self.given = np.logical_and.reduce([np.isfinite(c) for c in self.cols.values()])

    def src(self, node, k: int = 60) -> str:
        text = ast.get_source_segment(self.source, node) or ast.unparse(node)
        return text if len(text) <= k else text[: k - 3] + "..."

    def checked(self, value, node):
        value = np.asarray(value)
        if np.iscomplexobj(value):
            raise _expr_error(self.expr, f"{self.src(node)!r} is a complex number; keep it real")
        if not self.finite:
            return value
        n = self.n
        bad = ~np.isfinite(np.broadcast_to(value, (n,))) & self.given
        if bad.any():
            i = int(np.argmax(bad))
            at = f" at {self.row_name(i)}" if value.ndim else ""
            kind = ("not a real number (e.g. sqrt or log of a negative, or inf - inf)"
                    if np.isnan(np.broadcast_to(value, (n,))[i]) else "infinite (an overflow or a division by zero)")
            raise _expr_error(self.expr, f"{self.src(node)!r} is {kind}{at}; change the expression or drop the "
                                         "rows where it is undefined")
        return value

    def ev(self, node):
        expr, src, ev, checked = self.expr, self.src, self.ev, self.checked
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(
                node.value, bool):
            try:
                v = np.float64(float(node.value))
            except OverflowError:
                v = np.float64(np.inf)
            if not np.isfinite(v):
                raise _expr_error(expr, f"the number {src(node, 40)!r} is not a finite float64; use a "
                                        "number below 1.8e308")
            return v
        if isinstance(node, ast.Name):
            if node.id in self.cols:
                return self.cols[node.id]
            if node.id in _CONSTANTS:
                return np.float64(_CONSTANTS[node.id])
            raise _expr_error(expr, f"unknown name {node.id[:40]!r}; use the state names {self.allowed} or the "
                                    f"functions {sorted(_FUNCTIONS)}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            fn, _ = _BINARY[type(node.op)]
            return checked(fn(ev(node.left), ev(node.right)), node)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return checked(_UNARY[type(node.op)](ev(node.operand)), node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            fn, arity = _FUNCTIONS[node.func.id]
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise _expr_error(expr, f"{src(node)!r} is not allowed: {node.func.id} takes plain "
                                        "arguments only (no keywords such as out=, no *args)")
            if len(node.args) != arity:
                raise _expr_error(expr, f"{node.func.id} takes exactly {arity} argument{'s' * (arity > 1)}, got "
                                        f"{len(node.args)} in {src(node)!r}")
            return checked(fn(*(ev(a) for a in node.args)), node)
        raise _expr_error(expr, f"{src(node)!r} is not allowed; use numbers, the names {self.allowed}, "
                                f"+ - * / ** and the functions {sorted(_FUNCTIONS)}")


def evaluate_expression(expr: str, columns: Mapping[str, np.ndarray], row_name=None, *,
                        finite: bool = True) -> np.ndarray:
    """Evaluate an arithmetic expression in the column names, e.g. `"3*(1 - cos(q)) + p**2"`.

    Parsed with `ast` and evaluated over a whitelist: numbers, column names, `pi`, `e`, `+ - * / **`,
    and numpy's pure element-wise functions called with exactly their number of arguments (`sin cos
    tan arcsin arccos arctan sinh cosh tanh exp log log10 sqrt abs`; two: `arctan2 hypot minimum
    maximum`). Anything else (attributes, calls of other names, keywords such as `out=`, extra or
    starred arguments, subscripts) is refused, so an expression can never run code or write into the
    columns. Constants must be finite; every intermediate result is checked, and a value that stops
    being a finite real number (overflow, division by zero, `sqrt`/`log` of a negative) is reported
    with the sub-expression and the first row where it happens. At most `MAX_EXPRESSION_CHARS`
    characters, `MAX_EXPRESSION_NODES` syntax nodes and `MAX_EXPRESSION_DEPTH` levels of nesting.
    `row_name(i)` names row `i` in messages (default: `data row i+1`). Rows where a column is already
    NaN or infinite give NaN/inf without an error (the caller's input); `finite=False` lets values
    leave the finite reals without an error too (for paths of a model that may diverge).
    Raises a one-line DataError (a ValueError).
    """
    tree = _parse_expression(expr, columns)
    evaluator = _Evaluator(expr, columns, row_name, finite)
    with np.errstate(all="ignore"):
        out = evaluator.ev(tree.body)
    return np.array(np.broadcast_to(out, (evaluator.n,)), dtype=np.float64)


# ---------------------------------------------------------------- trajectory files


@dataclass
class Trajectories:
    """Columns read from a trajectory file: times, states, trajectory ids and (optional) energies."""

    t: np.ndarray  # (N,)
    x: np.ndarray  # (N, D)
    trajectory: np.ndarray  # (N,) ids (all equal when the file holds one trajectory)
    energy: np.ndarray | None  # (N,) or None
    state_names: tuple[str, ...]
    source: str

    def split(self, ids) -> Trajectories:
        keep = np.isin(self.trajectory, np.asarray(list(ids), dtype=self.trajectory.dtype))
        return Trajectories(self.t[keep], self.x[keep], self.trajectory[keep],
                            None if self.energy is None else self.energy[keep], self.state_names, self.source)

    @property
    def ids(self) -> list:
        """Trajectory ids in order of first appearance."""
        _, first = np.unique(self.trajectory, return_index=True)
        return [self.trajectory[i] for i in sorted(first)]


_MISSING = ("", "NA", "N/A", "null")


@dataclass
class _Columns:
    """A file's columns as read: numbers (npz arrays) or CSV text, with each row's line in the file."""

    path: Path
    values: dict  # name -> np.ndarray (npz) or list[str] (CSV cells)
    lines: list[int] | None  # CSV: the file line of each data row; None for npz

    def at(self, i: int) -> str:
        """Row `i` as a person finds it: the data row (1-based) and, for a CSV, its line in the file."""
        return f"data row {i + 1}" + (f" (line {self.lines[i]})" if self.lines is not None else f" (index {i})")

    def where(self, i: int) -> str:
        return f"{self.at(i)} of {self.path}"

    def __contains__(self, name) -> bool:
        return name in self.values

    def names(self) -> list[str]:
        return sorted(self.values)


def _read_columns(path: Path) -> _Columns:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return _Columns(path, {k: np.asarray(z[k]) for k in z.files}, None)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npz file ({e}); save it with numpy.savez") from None
    try:
        with path.open(newline="") as f:
            numbered = [(n, line) for n, line in enumerate(f, start=1)
                        if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file; give a CSV with a header line, or an .npz") from None
    if not numbered:
        raise DataError(f"{path}: the CSV file is empty; expected a header line of column names")
    try:
        parsed = list(csv.reader(line for _, line in numbered))
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    if len(parsed) != len(numbered):  # a quoted field spanning lines: fall back to data-row counting
        raise DataError(f"{path}: a quoted field spans several lines; put every row on one line")
    header = [h.strip() for h in parsed[0]]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}, line {numbered[0][0]}: duplicate column name(s) {dup} in the header")
    cols: dict[str, list] = {h: [] for h in header}
    for (line, _), row in zip(numbered[1:], parsed[1:]):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}; every "
                             "row needs a value per column")
        for h, v in zip(header, row):
            cols[h].append(v.strip())
    return _Columns(path, cols, [line for line, _ in numbered[1:]])


def _numeric(cols: _Columns, name: str, what: str, path: Path) -> np.ndarray:
    """Column `name` as float64; a missing, malformed or non-finite cell is named by its line (or row) and
    column, with the offending value."""
    if name not in cols:
        raise DataError(f"{path}: no column {name!r} for {what}; the file has {cols.names()}")
    col = cols.values[name]
    if cols.lines is None:  # npz: an array
        if col.ndim != 1:
            raise DataError(f"{path}: column {name!r} must be 1-D (one value per row), got shape {col.shape}")
        if not (np.issubdtype(col.dtype, np.number) and not np.iscomplexobj(col)):
            raise DataError(f"{path}: column {name!r} ({what}) must be real numbers, got dtype {col.dtype}")
        col = col.astype(np.float64)
        bad = ~np.isfinite(col)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: column {name!r} ({what}) has a missing or non-finite value at "
                             f"{cols.at(i)}: {col[i]}; drop or fill that row")
        return col
    out = np.empty(len(col), dtype=np.float64)
    for i, cell in enumerate(col):
        if cell in _MISSING:
            raise DataError(f"{path}: column {name!r} ({what}) has a missing or non-finite value at "
                             f"{cols.at(i)}: {cell!r}; drop or fill that row")
        try:
            v = float(cell)
        except ValueError:
            raise DataError(f"{path}: column {name!r} ({what}) must be numbers, got text {cell[:40]!r} at "
                             f"{cols.at(i)}; fix that cell or name another column") from None
        if not math.isfinite(v):
            raise DataError(f"{path}: column {name!r} ({what}) has a missing or non-finite value at "
                             f"{cols.at(i)}: {cell[:40]!r}; drop or fill that row")
        out[i] = v
    return out


def _ids(cols: _Columns, name: str, path: Path) -> np.ndarray:
    """Trajectory ids: integers where every cell is one, else the text (never a missing cell)."""
    if name not in cols:
        raise DataError(f"{path}: no column {name!r} for trajectory ids; the file has {cols.names()}")
    ids = cols.values[name]
    if cols.lines is None:
        if ids.ndim != 1:
            raise DataError(f"{path}: trajectory column {name!r} must be 1-D, got shape {ids.shape}")
        if np.issubdtype(ids.dtype, np.floating):
            bad = ~np.isfinite(ids)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{path}: trajectory column {name!r} is {ids[i]} at {cols.at(i)}; give every "
                                 "row an id")
            if np.all(ids == np.round(ids)):
                ids = ids.astype(np.int64)
        return ids
    for i, cell in enumerate(ids):
        if cell in _MISSING:
            raise DataError(f"{path}: trajectory column {name!r} is missing at {cols.at(i)}; give every row an id")
    try:
        nums = np.array([float(c) for c in ids], dtype=np.float64)
    except ValueError:
        return np.array(ids)
    if np.all(np.isfinite(nums)) and np.all(nums == np.round(nums)):
        return nums.astype(np.int64)  # CSV numbers read better as ints
    return np.array(ids)


def load_trajectories(
    path: str | Path,
    time: str = "t",
    state: Sequence[str] = ("q", "p"),
    trajectory: str | None = None,
    energy_column: str | None = None,
    energy: str | None = None,
) -> Trajectories:
    """Read trajectories from a CSV file (a header line of names, `#` comment lines allowed) or an
    `.npz` file (one 1-D array per name).

    `time` names the time column; `state` the state columns in order (`q..., p...` for a
    Hamiltonian model); `trajectory` an id column (numbers or text) when the file holds several;
    `energy_column` a column of true energies, or `energy` an expression in the state names
    (see `evaluate_expression`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist or is not a file; give a .csv or .npz path")
    state = tuple(state)
    if not state:
        raise DataError("name at least one state column, e.g. --state q,p")
    if len(set(state)) != len(state):
        raise DataError(f"state columns must differ, got {list(state)}")
    if energy_column is not None and energy is not None:
        raise DataError("give the true energy either as a column or as an expression, not both")
    cols = _read_columns(path)
    t = _numeric(cols, time, "time", path)
    xs = [_numeric(cols, s, "state", path) for s in state]
    lengths = {n: len(c) for n, c in ((time, t), *zip(state, xs))}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{path}: the columns have different lengths {lengths}; give one value per row in each")
    x = np.stack(xs, 1)
    if len(t) == 0:
        raise DataError(f"{path}: no data rows")
    if trajectory is None:
        ids = np.zeros(len(t), dtype=np.int64)
    else:
        ids = _ids(cols, trajectory, path)
        if len(ids) != len(t):
            raise DataError(f"{path}: trajectory column {trajectory!r} has {len(ids)} values for {len(t)} rows")
    e = None
    if energy_column is not None:
        e = _numeric(cols, energy_column, "energy", path)
    elif energy is not None:
        e = evaluate_expression(energy, {s: x[:, i] for i, s in enumerate(state)}, row_name=cols.where)
    if e is not None and len(e) != len(t):
        raise DataError(f"{path}: column {energy_column!r} has {len(e)} values for {len(t)} rows")
    return Trajectories(t, x, ids, e, state, str(path))
