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
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor

SCHEMES = ("forward", "central")


def _segments(trajectory, n: int) -> list[np.ndarray]:
    """Row indices of each trajectory, in order of first appearance, each in the rows' order."""
    if trajectory is None:
        return [np.arange(n)]
    ids = trajectory.detach().cpu().numpy() if isinstance(trajectory, Tensor) else np.asarray(trajectory)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"time_derivative: trajectory must hold one id per row ({n}), got shape {ids.shape}")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique() sorts the ids; the user's order is the order of appearance
    return [np.flatnonzero(inverse == k) for k in order]


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
    - `trajectory`: optional ids, one per row: differences never cross from one trajectory to
      another. Rows of a trajectory need not be contiguous; the output lists the trajectories in
      order of first appearance.
    - `return_rows`: also return the indices (into the input rows) of the returned states, to
      carry other columns (ids, times, energies) along.

    **Returns:** `(x, dx)` (or `(x, dx, rows)`): numpy arrays for numpy input, tensors (same dtype
    and device as `x`) for tensor input.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"time_derivative: scheme must be one of {SCHEMES}, got {scheme!r}")
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
        raise ValueError(f"time_derivative: t must be 1-D (one time per row), got shape {tuple(tt.shape)}")
    if x.ndim not in (1, 2) or x.shape[0] != tt.shape[0]:
        raise ValueError(f"time_derivative: x must be (N,) or (N, D) with N = len(t) = {tt.shape[0]}, "
                         f"got shape {tuple(x.shape)}")
    need = 2 if scheme == "forward" else 3
    t_np = tt.detach().cpu().double().numpy() if is_tensor else tt
    if not np.all(np.isfinite(t_np)):
        raise ValueError("time_derivative: t holds NaN or infinite times; drop or fix those rows")
    rows, lo, hi = [], [], []
    for k, seg in enumerate(_segments(trajectory, tt.shape[0])):
        name = "the trajectory" if trajectory is None else f"trajectory #{k + 1} (in order of appearance)"
        if len(seg) < need:
            raise ValueError(f"time_derivative: {name} has {len(seg)} row(s); the {scheme} scheme needs at "
                             f"least {need}. Drop it or use scheme='forward'.")
        steps = np.diff(t_np[seg])
        if np.any(steps <= 0):
            i = int(np.argmax(steps <= 0))
            raise ValueError(f"time_derivative: t must increase within {name}; row {int(seg[i + 1])} has "
                             f"t = {t_np[seg[i + 1]]:g} after t = {t_np[seg[i]]:g} at row {int(seg[i])}. "
                             "Sort the rows by time or pass trajectory ids.")
        if scheme == "forward":
            rows.append(seg[:-1])
            hi.append(seg[1:])
        else:
            lo.append(seg[:-2])
            rows.append(seg[1:-1])
            hi.append(seg[2:])
    rows_np = np.concatenate(rows)
    hi_np = np.concatenate(hi)

    def take(a, idx):
        return a[torch.as_tensor(idx, device=a.device)] if is_tensor else a[idx]

    x0, x1 = take(x, rows_np), take(x, hi_np)
    t0, t1 = take(tt, rows_np), take(tt, hi_np)
    col = (lambda v: v.unsqueeze(-1)) if is_tensor else (lambda v: v[:, None])
    if x.ndim == 1:
        col = lambda v: v  # noqa: E731
    if scheme == "forward":
        dx = (x1 - x0) / col(t1 - t0)
    else:
        lo_np = np.concatenate(lo)
        xm, tm = take(x, lo_np), take(tt, lo_np)
        h0, h1 = col(t0 - tm), col(t1 - t0)
        dx = (h0 * h0 * x1 - h1 * h1 * xm + (h1 * h1 - h0 * h0) * x0) / (h0 * h1 * (h0 + h1))
    if is_tensor:
        dx = dx.to(x.dtype) if torch.is_floating_point(x) else dx
    return (x0, dx, rows_np) if return_rows else (x0, dx)


# ---------------------------------------------------------------- safe expressions

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {name: getattr(np, name) for name in (
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "exp", "log", "log10", "sqrt",
    "abs", "arctan2", "hypot", "minimum", "maximum")}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def evaluate_expression(expr: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate an arithmetic expression in the column names, e.g. `"3*(1 - cos(q)) + p**2"`.

    Parsed with `ast` and evaluated over a whitelist (numbers, column names, `pi`, `e`, `+ - * / **`,
    and numpy's elementwise functions: `sin cos tan arcsin arccos arctan sinh cosh tanh exp log
    log10 sqrt abs arctan2 hypot minimum maximum`); anything else (attributes, calls of other names,
    subscripts, keywords) is refused, so a data file's expression can never run code.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"energy expression must be a non-empty string, got {expr!r}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"energy expression {expr!r} is not valid arithmetic: {e.msg}") from None
    allowed = sorted(set(columns) | set(_CONSTANTS))

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(
                node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id in columns:
                return np.asarray(columns[node.id], dtype=np.float64)
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise ValueError(f"energy expression {expr!r}: unknown name {node.id!r}; use the state names "
                             f"{allowed} or functions {sorted(_FUNCTIONS)}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords):
            return _FUNCTIONS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"energy expression {expr!r}: {ast.unparse(node)!r} is not allowed; use numbers, the "
                         f"names {allowed}, + - * / ** and the functions {sorted(_FUNCTIONS)}")

    with np.errstate(all="ignore"):
        out = np.broadcast_to(np.asarray(ev(tree), dtype=np.float64), (len(next(iter(columns.values()))),))
    return np.array(out)


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


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e}); save it with numpy.savez") from None
    try:
        with path.open(newline="") as f:
            reader = csv.reader(row for row in f if row.strip() and not row.lstrip().startswith("#"))
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: the CSV file is empty; expected a header line of column names")
            header = [h.strip() for h in header]
            rows = list(reader)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file; give a CSV with a header line, or an .npz") from None
    cols: dict[str, list] = {h: [] for h in header}
    for n, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: data row {n - 1} has {len(row)} fields, the header {len(header)}; "
                             "every row needs a value per column")
        for h, v in zip(header, row):
            cols[h].append(v.strip())
    out = {}
    for h, vals in cols.items():
        try:  # an empty or NA field becomes NaN, reported by row when the column is used
            out[h] = np.array([float(v) if v not in _MISSING else math.nan for v in vals], dtype=np.float64)
        except ValueError:
            out[h] = np.array(vals)  # text column (e.g. trajectory names); numeric use is checked later
    return out


def _numeric(cols: dict, name: str, what: str, path: Path) -> np.ndarray:
    if name not in cols:
        raise ValueError(f"{path}: no column {name!r} for {what}; the file has {sorted(cols)}")
    col = cols[name]
    if col.ndim != 1:
        raise ValueError(f"{path}: column {name!r} must be 1-D (one value per row), got shape {col.shape}")
    if not np.issubdtype(col.dtype, np.number):
        raise ValueError(f"{path}: column {name!r} ({what}) must be numbers, got text such as {col[0]!r}")
    col = col.astype(np.float64)
    bad = ~np.isfinite(col)
    if bad.any():
        raise ValueError(f"{path}: column {name!r} ({what}) has a missing or non-finite value at data row "
                         f"{int(np.argmax(bad)) + 1}; drop or fill that row")
    return col


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
        raise ValueError(f"data file {str(path)!r} does not exist or is not a file; give a .csv or .npz path")
    state = tuple(state)
    if not state:
        raise ValueError("name at least one state column, e.g. --state q,p")
    if len(set(state)) != len(state):
        raise ValueError(f"state columns must differ, got {list(state)}")
    if energy_column is not None and energy is not None:
        raise ValueError("give the true energy either as a column or as an expression, not both")
    cols = _read_columns(path)
    t = _numeric(cols, time, "time", path)
    x = np.stack([_numeric(cols, s, "state", path) for s in state], 1)
    if trajectory is None:
        ids = np.zeros(len(t), dtype=np.int64)
    else:
        if trajectory not in cols:
            raise ValueError(f"{path}: no column {trajectory!r} for trajectory ids; the file has {sorted(cols)}")
        ids = cols[trajectory]
        if ids.ndim != 1:
            raise ValueError(f"{path}: trajectory column {trajectory!r} must be 1-D, got shape {ids.shape}")
        if np.issubdtype(ids.dtype, np.floating) and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)  # CSV numbers arrive as floats; ids read better as ints
    e = None
    if energy_column is not None:
        e = _numeric(cols, energy_column, "energy", path)
    elif energy is not None:
        e = evaluate_expression(energy, {s: x[:, i] for i, s in enumerate(state)})
        if not np.all(np.isfinite(e)):
            raise ValueError(f"energy expression {energy!r} is not finite at data row "
                             f"{int(np.argmax(~np.isfinite(e))) + 1}")
    if len(t) == 0:
        raise ValueError(f"{path}: no data rows")
    return Trajectories(t, x, ids, e, state, str(path))
