"""FeatureAssembler's checks on what the feature plugin builds: every model input present
and a finite number, whatever path the values take; a real SQLite online store."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lab.serving.scoring import FeatureAssembler, FeatureAssemblyError
from lab.testing.stores import SECOND, SPEND, T0, spend_rows
from plugins.sqlite_online import SQLiteOnlineStore


@pytest.fixture
def store(tmp_path):
    s = SQLiteOnlineStore(tmp_path / "online.db")
    s.write(SPEND, spend_rows([1, 2]), T0)
    yield s
    s.close()


def assembler(store, extra):
    def build(request, rows):
        spend = rows["spend"] or {"NB_1D": 0, "AVG_1D": 0.0}
        return {"NB": spend["NB_1D"], "AVG": spend["AVG_1D"], **extra}
    return FeatureAssembler(store, [SPEND], build, ["AVG", "NB", "X"])


def test_values_are_floats_in_the_models_order(store):
    got = assembler(store, {"X": np.int64(7)}).assemble({"USER_ID": 2}, T0 + SECOND)
    assert got.features == {"AVG": 3.0, "NB": 2.0, "X": 7.0}
    assert all(type(v) is float for v in got.features.values())
    assert got.vector.dtype == np.float32 and got.vector.tolist() == [[3.0, 2.0, 7.0]]
    assert got.defaults == {"spend": False}
    unknown = assembler(store, {"X": True}).assemble({"USER_ID": 99}, T0 + SECOND)
    assert unknown.features == {"AVG": 0.0, "NB": 0.0, "X": 1.0} and unknown.defaults == {"spend": True}


@pytest.mark.parametrize("bad, says", [
    (None, "is None, not a finite number"),
    (math.inf, "is inf, not a finite number"),
    (math.nan, "is nan, not a finite number"),
    ("text", "is 'text', not a finite number"),
    (10 ** 400, "not a finite number"),  # too large for a float: an error naming it, not an OverflowError
])
def test_a_value_that_is_not_a_finite_number_is_named(store, bad, says):
    a = assembler(store, {"X": bad})
    with pytest.raises(FeatureAssemblyError, match=f"feature 'X' {says}" if says[0] == "i" else says):
        a.assemble({"USER_ID": 1}, T0 + SECOND)
    problems = a.check({"USER_ID": 1}, T0 + SECOND)  # the start-up check reports it instead
    assert len(problems) == 1 and "'X'" in problems[0]


def test_a_missing_input_is_named_with_what_was_built(store):
    a = assembler(store, {})
    with pytest.raises(FeatureAssemblyError, match="needs feature 'X' but the feature plugin produced only NB, AVG"):
        a.assemble({"USER_ID": 1}, T0 + SECOND)


def test_values_up_to_the_float32_range_are_served_and_beyond_it_named(store):
    got = assembler(store, {"X": -3.4e38}).assemble({"USER_ID": 1}, T0 + SECOND)
    assert got.features["X"] == -3.4e38 and np.isfinite(got.vector).all()
    with pytest.raises(FeatureAssemblyError, match=r"feature 'X' is 1e\+39, beyond the float32 range"):
        assembler(store, {"X": 1e39}).assemble({"USER_ID": 1}, T0 + SECOND)
