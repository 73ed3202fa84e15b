"""Sequence data for the gradient-RNN: the built-in teacher data set, `.npz` and long-form CSV files.

Everything becomes a `SequenceData`: `x` (N, T, input_size) and `y` (N, T) or None, float64 where the
source is (float64 arrays, CSV text, the built-in set) and float32 otherwise, so that a `--dtype float64`
run trains on the data as given; `lengths` (N,) int64 (sequences shorter than T are padded at the end;
padding is never read). Loaders
validate strictly and raise `DataError` naming the file and what is wrong: nothing is silently
dropped, so an unexpected column or key is an error too.
"""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InnergradError
from ..core.files import regular_file, write_output

NPZ_KEYS = ("x", "y", "lengths")


class DataError(InnergradError):
    """A data file (or in-memory data) that cannot be used: the message names the file and the fault."""


@dataclass
class SequenceData:
    """A batch of variable-length sequences, batch-first.

    - `x`: (N, T, input_size). `y`: (N, T) targets, or None (prediction input). Both float64 where the
      source is float64 (arrays, CSV text, the built-in set), else float32.
    - `lengths`: (N,) int64 in `[1, T]`; steps `t >= lengths[i]` are padding (zeros here).
    - `ids`: one name per sequence (CSV `sequence` values; `"0".."N-1"` for arrays).
    - `source`: where the data came from (a path or `"synthetic"`); `info`: extra facts (noise level).
    """

    x: np.ndarray
    y: np.ndarray | None
    lengths: np.ndarray
    ids: list[str] = field(default_factory=list)
    source: str = "<arrays>"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.x))]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.x.shape[2])

    @property
    def full_length(self) -> bool:
        """True when no sequence is padded."""
        return bool((self.lengths == self.seq_len).all())

    def mask(self) -> np.ndarray:
        """(N, T) bool: True on real (non-padding) steps."""
        return np.arange(self.seq_len)[None, :] < self.lengths[:, None]

    def subset(self, idx) -> SequenceData:
        idx = np.asarray(idx, dtype=np.int64)
        return SequenceData(
            self.x[idx], None if self.y is None else self.y[idx], self.lengths[idx],
            [self.ids[i] for i in idx], self.source, dict(self.info),
        )

    def split(self, val_fraction: float, seed: int) -> tuple[SequenceData, SequenceData]:
        """`(train, validation)` by whole sequences, from a permutation seeded by `seed`.

        The validation part has `round(val_fraction * N)` sequences, at least 1 (and at least 1 is
        left for training), so the same data, fraction and seed always give the same split.
        """
        n = len(self)
        if n < 2:
            raise DataError(
                f"{self.source}: {n} sequence(s) cannot be split into training and validation; "
                "give at least 2 sequences"
            )
        n_val = min(max(1, int(round(val_fraction * n))), n - 1)
        perm = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    @classmethod
    def from_arrays(cls, x, y=None, lengths=None, source: str = "<arrays>", ids=None) -> SequenceData:
        """Validate and wrap arrays (see `load_npz` for the rules); raises `DataError`."""
        x, y, lengths = validate_arrays(x, y, lengths, source)
        return cls(x, y, lengths, list(ids) if ids is not None else [], source)

    def save(self, path: str | Path, y_pred: np.ndarray | None = None, *, overwrite: bool = True,
             inputs=(), option: str = "--out") -> Path:
        """Write `.npz` (x, y, lengths[, y_pred]) or long-form `.csv`, chosen by the suffix, through
        `core/files.write_output` (atomic; never onto one of `inputs`; an existing file only with
        `overwrite`, which the library's default keeps)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays = {"x": self.x, "lengths": self.lengths}
            if self.y is not None:
                arrays["y"] = self.y
            if y_pred is not None:
                arrays["y_pred"] = y_pred.astype(np.float32)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            content: bytes | str = buf.getvalue()
        elif suffix == ".csv":
            fh = io.StringIO(newline="")
            w = csv.writer(fh)
            cols = ["sequence", "t", *(f"x{k}" for k in range(self.input_size))]
            cols += ["y"] if self.y is not None else []
            cols += ["y_pred"] if y_pred is not None else []
            w.writerow(cols)
            for i in range(len(self)):
                for t in range(int(self.lengths[i])):
                    row = [self.ids[i], t, *(repr(float(v)) for v in self.x[i, t])]
                    if self.y is not None:
                        row.append(repr(float(self.y[i, t])))
                    if y_pred is not None:
                        row.append(repr(float(y_pred[i, t])))
                    w.writerow(row)
            content = fh.getvalue()
        else:
            raise InnergradError(f"{path}: unknown output format {suffix!r}; use a .npz or .csv file name")
        return write_output(path, content, inputs=inputs, overwrite=overwrite, option=option)


# ------------------------------------------------------------------------------- validation


def _shape(a) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ")"


def _numeric(a: np.ndarray, name: str, where: str) -> np.ndarray:
    if a.dtype.kind not in "fiub":
        raise DataError(
            f"{where}: '{name}' has dtype {a.dtype}, but numbers are needed; store it as float32 or float64"
        )
    return a


def _first_bad(bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return "[" + ", ".join(str(i) for i in idx) + "]"


def validate_arrays(x, y, lengths, where: str, require_y: bool = False):
    """Check shapes, dtypes, lengths and finiteness; return `(x, y | None, lengths int64)`, x and y in
    float64 when given in float64, else float32."""
    x = np.asarray(x)
    _numeric(x, "x", where)
    if x.ndim != 3:
        hint = " (for a single feature use x[..., None])" if x.ndim == 2 else ""
        raise DataError(f"{where}: 'x' must have shape (N, T, input_size), 3 dimensions; got {_shape(x)}{hint}")
    N, T, D = x.shape
    if N == 0 or T == 0 or D == 0:
        raise DataError(
            f"{where}: 'x' has shape {_shape(x)}: it holds no data (N sequences, T steps and input_size "
            "must all be at least 1)"
        )
    if y is None and require_y:
        raise DataError(f"{where}: targets 'y' are missing; training and evaluation need y of shape (N, T)")
    if y is not None:
        y = np.asarray(y)
        _numeric(y, "y", where)
        if y.ndim == 3 and y.shape[2] == 1:
            raise DataError(
                f"{where}: 'y' must have shape (N, T) = ({N}, {T}), got {_shape(y)}; drop the last axis "
                "(y[..., 0]): the gradient-RNN predicts one scalar per step"
            )
        if y.ndim != 2:
            raise DataError(f"{where}: 'y' must have shape (N, T) = ({N}, {T}), 2 dimensions; got {_shape(y)}")
        if y.shape != (N, T):
            raise DataError(
                f"{where}: x and y lengths do not match: x has N={N} sequences of T={T} steps, so y must "
                f"have shape ({N}, {T}); got {_shape(y)}"
            )
    if lengths is None:
        lengths = np.full(N, T, dtype=np.int64)
    else:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.shape[0] != N:
            raise DataError(f"{where}: 'lengths' must have shape (N,) = ({N},), got {_shape(lengths)}")
        if lengths.dtype.kind not in "iu":
            raise DataError(
                f"{where}: 'lengths' must hold integers (steps per sequence), got dtype {lengths.dtype}"
            )
        bad = (lengths < 1) | (lengths > T)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{where}: lengths[{i}] = {int(lengths[i])} is outside [1, T={T}]; each sequence needs at "
                "least one step and at most the padded length T"
            )
        lengths = lengths.astype(np.int64)
    valid = np.arange(T)[None, :] < lengths[:, None]
    x = x.astype(_storage_dtype(x))
    bad = ~np.isfinite(x) & valid[:, :, None]
    if bad.any():
        at = _first_bad(bad)
        raise DataError(f"{where}: x{at} is {x[tuple(np.argwhere(bad)[0])]}; x must be finite (no NaN or inf)")
    x = np.where(valid[:, :, None], x, 0.0).astype(x.dtype)
    if y is not None:
        y = y.astype(_storage_dtype(y))
        bad = ~np.isfinite(y) & valid
        if bad.any():
            at = _first_bad(bad)
            raise DataError(f"{where}: y{at} is {y[tuple(np.argwhere(bad)[0])]}; y must be finite (no NaN or inf)")
        y = np.where(valid, y, 0.0).astype(y.dtype)
    return x, y, lengths


def _storage_dtype(a: np.ndarray):
    # float64 stays float64 (a float64 model then sees the data as given); anything else is float32.
    return np.float64 if a.dtype == np.float64 else np.float32


def _existing(path: str | Path) -> Path:
    p = regular_file(path, "the data file", DataError)
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path given to --data")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; --data needs a .npz or .csv file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty (0 bytes); it needs sequences (x, y)")
    return p


# ------------------------------------------------------------------------------- file formats


def load_npz(path: str | Path, require_y: bool = True) -> SequenceData:
    """Load `x: (N, T, input_size)`, `y: (N, T)` and optional `lengths: (N,)` from an `.npz` archive.

    `require_y=False` (prediction input) makes `y` optional. Values past a sequence's length are
    padding: they may be anything (NaN included) and are replaced by zeros. Raises `DataError`.
    """
    p = _existing(path)
    with open(p, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise DataError(
            f"{p}: holds a single array (.npy format), not an .npz archive of named arrays; save x and y "
            "together with numpy.savez(path, x=x, y=y)"
        )
    if not head.startswith(b"PK"):
        raise DataError(
            f"{p}: not an .npz archive (an .npz is a zip file of named arrays, as numpy.savez writes); "
            "save the data with numpy.savez(path, x=x, y=y)"
        )
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{p}: a damaged .npz archive ({e}); write it again with numpy.savez(path, x=x, y=y)") from None
    with z:
        keys = set(z.files)
        extra = sorted(keys - set(NPZ_KEYS) - {"y_pred"})
        if extra:
            raise DataError(
                f"{p}: unexpected array(s) {extra}; an innergrad .npz holds only {list(NPZ_KEYS)} "
                "(lengths optional). Remove or rename them so nothing is silently ignored"
            )
        if "x" not in keys:
            raise DataError(f"{p}: missing key 'x' (inputs of shape (N, T, input_size)); found {sorted(keys)}")
        if require_y and "y" not in keys:
            raise DataError(f"{p}: missing key 'y' (targets of shape (N, T)); found {sorted(keys)}")
        try:
            arrays = {k: z[k] for k in NPZ_KEYS if k in keys}
        except ValueError:  # object arrays need pickle, which is never enabled
            raise DataError(
                f"{p}: an array holds Python objects, which could only be read with pickle (never enabled "
                "here, as it can run code); store plain numeric arrays"
            ) from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{p}: a damaged .npz archive ({e}); write it again with numpy.savez") from None
    x, y, lengths = validate_arrays(arrays["x"], arrays.get("y"), arrays.get("lengths"), str(p), require_y)
    return SequenceData(x, y, lengths, source=str(p))


_XCOL = re.compile(r"^x(\d+)$")


def _read_csv_rows(p: Path) -> list[list[str]]:
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            return list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e}); is it really a CSV?") from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e})") from None


def _csv_header(p: Path, rows: list[list[str]], require_y: bool) -> tuple[int, list[str], list[str], bool]:
    """Find and check the header: `(its row index, column names, input names x0..xk, has y)`."""
    header_line = next((i for i, r in enumerate(rows) if any(c.strip() for c in r)), None)
    if header_line is None:
        raise DataError(f"{p}: the file is empty (no header); expected a header 'sequence,t,x0,...,xk,y'")
    header = [c.strip() for c in rows[header_line]]
    where = f"{p}, line {header_line + 1}"
    if len(set(header)) != len(header):
        dup = sorted({c for c in header if header.count(c) > 1})
        raise DataError(f"{where}: duplicate column(s) {dup} in the header")
    for need in ("sequence", "t"):
        if need not in header:
            raise DataError(
                f"{where}: missing column '{need}'; the header must be 'sequence,t,x0,...,xk,y', got {header}"
            )
    xcols = sorted((int(m.group(1)), c) for c in header if (m := _XCOL.match(c)))
    if not xcols:
        raise DataError(f"{where}: no input columns; name them x0, x1, ... (got {header})")
    if [k for k, _ in xcols] != list(range(len(xcols))):
        raise DataError(
            f"{where}: input columns must be x0..x{len(xcols) - 1} without gaps, got {[c for _, c in xcols]}"
        )
    has_y = "y" in header
    if require_y and not has_y:
        raise DataError(f"{where}: missing column 'y' (the target); the header must be 'sequence,t,x0,...,xk,y'")
    known = {"sequence", "t", "y", "y_pred", *(c for _, c in xcols)}
    extra = [c for c in header if c not in known]
    if extra:
        raise DataError(
            f"{where}: unexpected column(s) {extra}; the header must be 'sequence,t,x0,...,xk,y'. Remove "
            "them so nothing is silently ignored"
        )
    return header_line, header, [c for _, c in xcols], has_y


def _csv_cells(p: Path, line: int, r: list[str], col: dict[str, int], value_cols: list[str]):
    """Check one data row's cells: `(sequence label, step t, the values of value_cols)`."""
    sid = r[col["sequence"]].strip()
    if not sid:
        raise DataError(f"{p}, line {line}: empty 'sequence' label")
    ts = r[col["t"]].strip()
    try:
        t = int(ts)
    except ValueError:
        raise DataError(f"{p}, line {line}: column 't' must be an integer step index, got {ts!r}") from None
    if t < 0:
        raise DataError(f"{p}, line {line}: column 't' must be >= 0, got {t}")
    vals = []
    for c in value_cols:
        s = r[col[c]].strip()
        try:
            v = float(s)
        except ValueError:
            raise DataError(f"{p}, line {line}: column '{c}' must be a number, got {s!r}") from None
        if not math.isfinite(v):
            raise DataError(f"{p}, line {line}: column '{c}' is {s!r}; values must be finite (no NaN or inf)")
        vals.append(v)
    return sid, t, vals


def _check_steps(p: Path, seqs: dict[str, dict[int, tuple[list[float], float, int]]]) -> None:
    if not seqs:
        raise DataError(f"{p}: has a header but no data rows; add one row per (sequence, t)")
    for sid, steps in seqs.items():  # before any allocation: a stray t=1e8 must not ask for gigabytes first
        L = max(steps) + 1
        if len(steps) != L:
            missing = next(t for t in range(L) if t not in steps)
            raise DataError(
                f"{p}: sequence {sid!r} has steps up to t={L - 1} but no row for t={missing}; every step "
                "from 0 to the last must be present"
            )


def load_csv(path: str | Path, require_y: bool = True) -> SequenceData:
    """Load long-form CSV: a header `sequence,t,x0,...,xk,y` and one row per (sequence, step).

    `sequence` is any label; `t` counts 0, 1, ... within each sequence with no gaps (rows may come
    in any order); `x0..xk` are the inputs; `y` the target (optional when `require_y=False`).
    Sequences of different lengths are padded. Raises `DataError` with the line number at fault.
    """
    p = _existing(path)
    rows = _read_csv_rows(p)
    header_line, header, xnames, has_y = _csv_header(p, rows, require_y)
    col = {c: i for i, c in enumerate(header)}
    value_cols = xnames + (["y"] if has_y else [])
    D = len(xnames)
    seqs: dict[str, dict[int, tuple[list[float], float, int]]] = {}
    for ln in range(header_line + 1, len(rows)):
        r = rows[ln]
        line = ln + 1
        if not any(c.strip() for c in r):
            continue  # blank lines carry no data
        if len(r) != len(header):
            raise DataError(f"{p}, line {line}: {len(r)} fields, but the header has {len(header)}")
        sid, t, vals = _csv_cells(p, line, r, col, value_cols)
        steps = seqs.setdefault(sid, {})
        if t in steps:
            raise DataError(
                f"{p}, line {line}: sequence {sid!r} has step t={t} twice (first on line {steps[t][2]})"
            )
        steps[t] = (vals[:D], vals[D] if has_y else 0.0, line)
    _check_steps(p, seqs)
    N = len(seqs)
    T = max(max(s) + 1 for s in seqs.values())
    x = np.zeros((N, T, D), np.float64)  # CSV text parses to float64: keep it
    y = np.zeros((N, T), np.float64) if has_y else None
    lengths = np.zeros(N, np.int64)
    for i, steps in enumerate(seqs.values()):
        lengths[i] = max(steps) + 1
        for t, (xv, yv, _) in steps.items():
            x[i, t] = xv
            if y is not None:
                y[i, t] = yv
    return SequenceData(x, y, lengths, list(seqs), str(p))


def load_data(path: str | Path, require_y: bool = True) -> SequenceData:
    """Load `.npz` or `.csv` by suffix; raises `DataError` with the file name and the fault."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_npz(p, require_y)
    if suffix == ".csv":
        return load_csv(p, require_y)
    _existing(p)
    raise DataError(f"{p}: unknown data format {suffix or '(no suffix)'!r}; give a .npz or .csv file")


# ------------------------------------------------------------------------------- built-in data

# The teacher: a GradRNN with an F of this size, weights drawn with these scales (softplus, like the
# default learner, so a learner of the same family can represent it exactly).
TEACHER_HIDDEN = 8
TEACHER_LAYERS = (32, 32)
TEACHER_WEIGHT_GAIN = 2.0  # hidden-layer weights ~ N(0, (gain / sqrt(fan_in))^2): curved enough to need h
TEACHER_OUT_GAIN = 1.5     # output weights: sets how strongly h_t = dF/dh moves, i.e. the memory
TEACHER_BIAS_STD = 0.5


def make_teacher(input_size: int = 4, seed: int = 0, dtype=torch.float64):
    """The randomly initialised teacher GradRNN of the built-in data set (deterministic in `seed`).

    `F` is an `ig.MLP` on `(input_size + 8)` inputs with hidden layers (32, 32) and softplus; its
    hidden state has 8 units. The global torch RNG is not touched.
    """
    from ..models.gradrnn import GradRNN  # the model layer is only needed for the built-in data

    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    teacher = GradRNN(input_size, TEACHER_HIDDEN, TEACHER_LAYERS, "softplus", backend="auto").to(dtype)
    with torch.no_grad():
        for lin in teacher.F.layers:
            lin.weight.normal_(0.0, TEACHER_WEIGHT_GAIN / math.sqrt(lin.in_features), generator=g)
            lin.bias.normal_(0.0, TEACHER_BIAS_STD, generator=g)
        out = teacher.F.out
        out.weight.normal_(0.0, TEACHER_OUT_GAIN / math.sqrt(out.in_features), generator=g)
        out.bias.zero_()
    return teacher.eval()


def synthetic_data(
    n_sequences: int = 1024,
    seq_len: int = 32,
    input_size: int = 4,
    noise: float = 0.1,
    seed: int = 0,
) -> SequenceData:
    """The built-in data set: sequences from a random teacher GradRNN (see `make_teacher`).

    `x_t ~ N(0, 1)` i.i.d., `h_0 = 0`; the teacher's clean outputs are standardised over the whole
    set (mean 0, variance 1) and then Gaussian noise of std `noise` is added. So the noise floor of
    the validation MSE is `noise**2` (0.01 by default) and the best reachable R^2 is about
    `1 / (1 + noise**2)` (0.990). The teacher's hidden state matters: with the default seed,
    replacing it by its average drops R^2 to about 0.6, so the learner has to use its memory.
    """
    for name, v in (("n_sequences", n_sequences), ("seq_len", seq_len), ("input_size", input_size)):
        if not isinstance(v, int) or v < 1:
            raise InnergradError(f"synthetic data: {name} must be a positive integer, got {v!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise InnergradError(f"synthetic data: noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng([int(seed), 0xDA7A])
    x = rng.standard_normal((n_sequences, seq_len, input_size))
    teacher = make_teacher(input_size, seed)
    with torch.no_grad():
        y, _ = teacher(torch.from_numpy(x).transpose(0, 1))
    y = y.transpose(0, 1).numpy()
    y = (y - y.mean()) / (y.std() + 1e-12)
    y = y + noise * rng.standard_normal(y.shape)
    info = {
        "kind": "synthetic",
        "n_sequences": n_sequences, "seq_len": seq_len, "input_size": input_size, "noise": float(noise),
        "seed": int(seed), "noise_floor_mse": float(noise) ** 2,
        "teacher": {"hidden_size": TEACHER_HIDDEN, "hidden_layers": list(TEACHER_LAYERS),
                    "activation": "softplus"},
    }
    return SequenceData(x.astype(np.float64), y.astype(np.float64),
                        np.full(n_sequences, seq_len, np.int64), source="synthetic", info=info)


__all__ = [
    "DataError", "SequenceData", "load_csv", "load_data", "load_npz", "make_teacher", "synthetic_data",
    "validate_arrays",
]

