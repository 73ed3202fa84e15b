"""The one option schema (core/schema.py): rows check every source alike; train's settings and fit's
arguments come from the same rows."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

import pytest

import innergrad as ig
from innergrad.core.errors import InnergradError
from innergrad.core.schema import Opt, Schema
from innergrad.train._config import FIT_SCHEMA, SCHEMA, TrainConfig

ROWS = Schema([
    Opt("epochs", int, 10, "passes", lo=1, hi=1000),
    Opt("frac", float, 0.2, "a fraction with data on both sides", lo=0, hi=1, open="both"),
    Opt("lr", float, 1e-3, "step size", lo=0, open="lo"),
    Opt("widths", "widths", (8,), "layer widths"),
    Opt("mode", str, "a", "a mode", choices=("a", "b")),
    Opt("plot", "path", None, "a plot", requires=("compare",)),
    Opt("compare", "path", None, "runs", nargs="+"),
    Opt("fast", bool, False, "go fast", excludes=("plot",)),
])


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"epochs": 1001}, "epochs must be <= 1000, got 1001"),
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"epochs": True}, "epochs must be an integer, got True"),
    ({"frac": 1.0}, "frac must be between 0 and 1 (exclusive), got 1.0"),
    ({"frac": 0}, "frac must be between 0 and 1 (exclusive), got 0"),
    ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"widths": [8, 16, 0, 4]}, "(0 is not)"),                       # the offending element, not the first
    ({"widths": ["8", "16", "x"]}, "('x' is not an integer)"),
    ({"mode": "c"}, "mode must be 'a' or 'b', got 'c'"),
    ({"mode": "z" * 5000}, "chars)"),                                  # an echoed value is cut short
    ({"epoch": 3}, "unknown setting 'epoch' (did you mean 'epochs'?)"),
])
def test_rows_refuse_with_rule_and_offending_value(values, message):
    with pytest.raises(InnergradError) as e:
        ROWS.check(values, "where")
    text = str(e.value)
    assert text.startswith("where: ") and message in text and len(text) < 600


def test_rows_convert_text_and_lists():
    got = ROWS.check({"epochs": "12", "frac": "0.5", "widths": "8,16", "fast": "yes", "compare": ["a", "b"]})
    assert got == {"epochs": 12, "frac": 0.5, "widths": (8, 16), "fast": True, "compare": ["a", "b"]}


def test_options_that_cannot_apply_are_refused():
    with pytest.raises(InnergradError, match="--plot applies only with --compare"):
        ROWS.refuse_inapplicable({"plot": "x.png"})
    with pytest.raises(InnergradError, match="--fast cannot be combined with --plot"):
        ROWS.refuse_inapplicable({"fast": True, "plot": "x.png", "compare": ["r"]})
    ROWS.refuse_inapplicable({"plot": "x.png", "compare": ["r"]})


def test_argparse_options_come_from_the_rows():
    p = argparse.ArgumentParser()
    ROWS.add_arguments(p)
    args = p.parse_args(["--epochs", "3", "--widths", "4", "5"])
    assert ROWS.given(args) == {"epochs": 3, "widths": [4, 5]}  # the rest: not given (None)
    assert ROWS.check(ROWS.given(args))["widths"] == (4, 5)
    with pytest.raises(SystemExit):
        p.parse_args(["--epochs", "three"])


def test_train_config_fields_are_the_schema_rows():
    assert [o.name for o in SCHEMA] == [f.name for f in fields(TrainConfig)]
    assert SCHEMA.defaults() == {k: v for k, v in TrainConfig().to_dict().items()} | {
        "hidden_layers": TrainConfig().hidden_layers}
    assert all(o.help for o in SCHEMA)


def test_fit_defaults_are_the_schema_defaults():
    sig = inspect.signature(ig.train.fit).parameters
    for o in FIT_SCHEMA:
        assert sig[o.name].default == o.default, o.name
