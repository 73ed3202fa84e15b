"""Data loaders: the built-in teacher set, .npz and long-form CSV round trips, the split, and every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from innergrad.core.errors import InnergradError
from innergrad.data.sequences import DataError, SequenceData, load_csv, load_data, load_npz, synthetic_data


def _arrays(N=5, T=6, D=3, seed=0, ragged=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    y = rng.standard_normal((N, T)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N) if ragged else np.full(N, T)
    lengths[0] = T
    return x, y, lengths.astype(np.int64)


def _npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------- built-in data


def test_synthetic_is_seeded_and_standardised():
    a = synthetic_data(64, 10, 3, noise=0.1, seed=3)
    b = synthetic_data(64, 10, 3, noise=0.1, seed=3)
    c = synthetic_data(64, 10, 3, noise=0.1, seed=4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.y, c.y)
    assert a.x.shape == (64, 10, 3) and a.y.shape == (64, 10) and a.x.dtype == np.float64
    assert (a.lengths == 10).all()
    # Clean targets have mean 0 and variance 1, so y's variance is 1 + noise^2.
    assert abs(float(a.y.mean())) < 0.05
    assert abs(float(a.y.var()) - 1.01) < 0.05
    assert a.info["noise_floor_mse"] == pytest.approx(0.01)


def test_synthetic_noise_is_the_documented_floor():
    clean = synthetic_data(128, 12, 4, noise=0.0, seed=0)
    noisy = synthetic_data(128, 12, 4, noise=0.2, seed=0)
    resid = noisy.y - clean.y
    assert np.array_equal(noisy.x, clean.x)
    assert float((resid**2).mean()) == pytest.approx(0.04, rel=0.1)


def test_synthetic_bad_arguments():
    with pytest.raises(InnergradError, match="n_sequences must be a positive integer"):
        synthetic_data(0)
    with pytest.raises(InnergradError, match="noise must be a finite number >= 0"):
        synthetic_data(8, noise=-1.0)


# ------------------------------------------------------------------------------- round trips and split


def test_npz_round_trip(tmp_path):
    x, y, lengths = _arrays()
    d = SequenceData.from_arrays(x, y, lengths)
    p = d.save(tmp_path / "r.npz")
    e = load_npz(p)
    m = d.mask()
    assert np.array_equal(e.lengths, lengths)
    assert np.array_equal(e.x[m], x[m]) and np.array_equal(e.y[m], y[m])
    assert (e.x[~m] == 0).all() and (e.y[~m] == 0).all()  # padding is zeroed, never read


def test_npz_without_lengths_means_full_sequences(tmp_path):
    x, y, _ = _arrays(ragged=False)
    d = load_npz(_npz(tmp_path, x=x, y=y))
    assert d.full_length and np.array_equal(d.x, x) and np.array_equal(d.y, y)


def test_csv_round_trip_any_row_order(tmp_path):
    x, y, lengths = _arrays(N=4, T=5, D=2)
    d = SequenceData.from_arrays(x, y, lengths, ids=["a", "b", "c", "d"])
    p = d.save(tmp_path / "r.csv")
    lines = p.read_text().splitlines()
    rng = np.random.default_rng(0)
    body = [lines[i] for i in rng.permutation(np.arange(1, len(lines)))]
    p.write_text("\n".join([lines[0], *body]) + "\n")
    e = load_csv(p)
    order = [e.ids.index(s) for s in ["a", "b", "c", "d"]]
    m = d.mask()
    assert np.array_equal(e.lengths[order], lengths)
    assert np.array_equal(e.x[order][m], x[m]) and np.array_equal(e.y[order][m], y[m])


def test_csv_and_npz_agree(tmp_path):
    x, y, lengths = _arrays(N=3, T=4, D=2)
    d = SequenceData.from_arrays(x, y, lengths)
    a = load_data(d.save(tmp_path / "a.csv"))
    b = load_data(d.save(tmp_path / "b.npz"))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and np.array_equal(a.lengths, b.lengths)


def test_prediction_input_without_y(tmp_path):
    x, _, lengths = _arrays()
    d = load_npz(_npz(tmp_path, x=x, lengths=lengths), require_y=False)
    assert d.y is None and d.input_size == 3
    c = load_csv(_csv(tmp_path, "sequence,t,x0\ns,0,1.5\ns,1,2.5\n"), require_y=False)
    assert c.y is None and c.x[0, :, 0].tolist() == [1.5, 2.5]


def test_split_is_seeded_disjoint_and_complete():
    d = synthetic_data(50, 4, 2, seed=0)
    tr1, va1 = d.split(0.2, seed=7)
    tr2, va2 = d.split(0.2, seed=7)
    _, va3 = d.split(0.2, seed=8)
    assert tr1.ids == tr2.ids and va1.ids == va2.ids
    assert va1.ids != va3.ids
    assert len(va1) == 10 and len(tr1) == 40
    assert sorted(tr1.ids + va1.ids, key=int) == d.ids
    assert np.array_equal(va1.x, d.x[[int(i) for i in va1.ids]])


def test_split_needs_two_sequences():
    d = synthetic_data(1, 4, 2)
    with pytest.raises(DataError, match="cannot be split"):
        d.split(0.2, 0)


# ------------------------------------------------------------------------------- npz errors


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"y": np.zeros((2, 3))}, r"missing key 'x'"),
        ({"x": np.zeros((2, 3, 1))}, r"missing key 'y'"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3)), "w": np.zeros(2)}, r"unexpected array\(s\) \['w'\]"),
        ({"x": np.zeros((2, 3)), "y": np.zeros((2, 3))}, r"'x' must have shape \(N, T, input_size\).*got \(2, 3\)"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros(6)}, r"'y' must have shape \(N, T\) = \(2, 3\).*got \(6\)"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3, 1))}, r"drop the last axis"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 4))}, r"x and y lengths do not match.*got \(2, 4\)"),
        ({"x": np.zeros((3, 3, 1)), "y": np.zeros((2, 3))}, r"x has N=3 sequences"),
        ({"x": np.zeros((0, 3, 1)), "y": np.zeros((0, 3))}, r"holds no data"),
        ({"x": np.array([[["a"]]]), "y": np.zeros((1, 1))}, r"'x' has dtype <U1"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3)), "lengths": np.array([1, 4])},
         r"lengths\[1\] = 4 is outside \[1, T=3\]"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3)), "lengths": np.array([0, 2])},
         r"lengths\[0\] = 0 is outside"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3)), "lengths": np.array([1.0, 2.0])},
         r"'lengths' must hold integers"),
        ({"x": np.zeros((2, 3, 1)), "y": np.zeros((2, 3)), "lengths": np.array([1, 2, 3])},
         r"'lengths' must have shape \(N,\) = \(2,\)"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_npz(p)
    assert str(p) in str(info.value)  # the message names the file


def test_npz_nan_and_inf_name_the_first_index(tmp_path):
    x = np.zeros((3, 4, 2))
    x[1, 2, 1] = np.nan
    x[2, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"x\[1, 2, 1\] is nan; x must be finite"):
        load_npz(_npz(tmp_path, x=x, y=np.zeros((3, 4))))
    y = np.zeros((3, 4))
    y[0, 3] = np.inf
    with pytest.raises(DataError, match=r"y\[0, 3\] is inf; y must be finite"):
        load_npz(_npz(tmp_path, "b.npz", x=np.zeros((3, 4, 2)), y=y))


def test_npz_nan_in_padding_is_not_data(tmp_path):
    x = np.zeros((2, 4, 1))
    x[1, 3, 0] = np.nan  # past lengths[1] = 2: padding
    d = load_npz(_npz(tmp_path, x=x, y=np.zeros((2, 4)), lengths=np.array([4, 2])))
    assert np.isfinite(d.x).all()


def test_npz_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"no such file"):
        load_npz(tmp_path / "missing.npz")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.npz: the file is empty \(0 bytes\)"):
        load_npz(empty)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"junk.npz: not an .npz archive \(an .npz is a zip file"):
        load_npz(junk)
    cut = tmp_path / "cut.npz"
    np.savez(cut, x=np.zeros((2, 3, 1)), y=np.zeros((2, 3)))
    cut.write_bytes(cut.read_bytes()[:60])
    with pytest.raises(DataError, match=r"cut.npz: a damaged .npz archive"):
        load_npz(cut)
    single = tmp_path / "single.npz"
    with open(single, "wb") as fh:
        np.save(fh, np.zeros((2, 3, 1)))
    with pytest.raises(DataError, match=r"single array \(.npy format\), not an .npz archive"):
        load_npz(single)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}], dtype=object), y=np.zeros((1, 1)))
    with pytest.raises(DataError, match=r"obj.npz: an array holds Python objects.*pickle"):
        load_npz(obj)
    with pytest.raises(DataError, match=r"is a directory"):
        load_npz(tmp_path)


def test_unknown_suffix(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_text("x")
    with pytest.raises(DataError, match=r"unknown data format '.parquet'; give a .npz or .csv"):
        load_data(p)


# ------------------------------------------------------------------------------- csv errors

GOOD = "sequence,t,x0,x1,y\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"the file is empty \(0 bytes\)"),
        ("\n\n", r"the file is empty \(no header\)"),
        (GOOD, r"has a header but no data rows"),
        ("sequence,x0,y\na,1,2\n", r"line 1: missing column 't'"),
        ("t,x0,y\n0,1,2\n", r"line 1: missing column 'sequence'"),
        ("sequence,t,x0\na,0,1\n", r"line 1: missing column 'y'"),
        ("sequence,t,y\na,0,1\n", r"no input columns; name them x0, x1"),
        ("sequence,t,x0,x2,y\na,0,1,2,3\n", r"input columns must be x0..x1 without gaps, got \['x0', 'x2'\]"),
        ("sequence,t,x0,z,y\na,0,1,2,3\n", r"unexpected column\(s\) \['z'\]"),
        ("sequence,t,x0,x0,y\na,0,1,2,3\n", r"duplicate column\(s\) \['x0'\]"),
        (GOOD + "a,0,1,2,3\na,1,1,2\n", r"line 3: 4 fields, but the header has 5"),
        (GOOD + "a,0,1,abc,3\n", r"line 2: column 'x1' must be a number, got 'abc'"),
        (GOOD + "a,0,1,2,3\na,1,nan,2,3\n", r"line 3: column 'x0' is 'nan'; values must be finite"),
        (GOOD + "a,0,1,2,inf\n", r"line 2: column 'y' is 'inf'"),
        (GOOD + "a,0,1,2,3\na,0,1,2,3\n", r"line 3: sequence 'a' has step t=0 twice \(first on line 2\)"),
        (GOOD + "a,0,1,2,3\na,2,1,2,3\n", r"sequence 'a' has steps up to t=2 but no row for t=1"),
        (GOOD + "a,one,1,2,3\n", r"line 2: column 't' must be an integer step index, got 'one'"),
        (GOOD + "a,-1,1,2,3\n", r"line 2: column 't' must be >= 0"),
        (GOOD + ",0,1,2,3\n", r"line 2: empty 'sequence' label"),
    ],
)
def test_csv_errors(tmp_path, text, match):
    p = _csv(tmp_path, text)
    with pytest.raises(DataError, match=match) as info:
        load_csv(p)
    assert str(p) in str(info.value)


def test_csv_not_text(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match=r"not a UTF-8 text file"):
        load_csv(p)


def test_data_errors_are_user_errors():
    assert issubclass(DataError, InnergradError)


def test_float64_data_stays_float64_and_float32_stays_float32(tmp_path):
    """A --dtype float64 run must see the data as given, not rounded to float32 on the way in."""
    x32, y32, lengths = _arrays(ragged=False)
    x64 = x32.astype(np.float64) + 1e-12  # not representable in float32
    y64 = y32.astype(np.float64) / 3
    np.savez(tmp_path / "d64.npz", x=x64, y=y64)
    np.savez(tmp_path / "d32.npz", x=x32, y=y32)
    d64, d32 = load_npz(tmp_path / "d64.npz"), load_npz(tmp_path / "d32.npz")
    assert d64.x.dtype == np.float64 and np.array_equal(d64.x, x64) and np.array_equal(d64.y, y64)
    assert d32.x.dtype == np.float32 and np.array_equal(d32.x, x32)
    csv = SequenceData(x64, y64, lengths).save(tmp_path / "d.csv")
    back = load_csv(csv)
    assert back.x.dtype == np.float64
    np.testing.assert_allclose(back.x, x64, rtol=1e-15, atol=0)  # text round trip, not float32 rounding
    assert synthetic_data(8, 4, 2, seed=1).x.dtype == np.float64


def test_a_float64_run_trains_on_unrounded_data(tmp_path):
    from innergrad.train import TrainConfig
    from innergrad.train._build import sequence_trainer

    x, y, _ = _arrays(N=16, ragged=False)
    x = x.astype(np.float64) + 1e-12
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.float64) / 3)
    cfg = TrainConfig.from_mapping(dict(data=str(tmp_path / "d.npz"), hidden_size=4, hidden_layers=(8,), epochs=1,
                                        batch_size=8, dtype="float64"))
    tr = sequence_trainer(cfg, tmp_path / "run")
    seen = tr.task.X.transpose(0, 1).cpu().numpy()  # (N_train, T, D)
    assert tr.task.X.dtype == torch.float64
    assert all(any(np.array_equal(row, orig) for orig in x) for row in seen)
