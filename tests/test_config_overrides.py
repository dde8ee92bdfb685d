"""``apply_overrides``: one command's ``--set SECTION.KEY=VALUE`` items on top of [tool.lab]."""

from __future__ import annotations

import pytest

from lab.config import apply_overrides, load_config
from lab.errors import ConfigError
from tests.conftest import write_pyproject


@pytest.fixture
def config(tmp_path):
    write_pyproject(tmp_path, """
        model_name = "fraud"
        [tool.lab.train]
        train_start = "2018-07-25"
        n_trials = 5
        [tool.lab.fraud]
        exact = false
    """)
    return load_config(tmp_path)


def test_values_are_toml_scalars_and_the_rest_of_the_section_is_kept(config):
    changed = apply_overrides(config, ["train.seed=7", "gate.min_delta=0.5", "fraud.exact=true",
                                       'gate.metric="roc_auc"', "serve.allow_empty_store=true"])
    assert changed.train.seed == 7 and changed.train.n_trials == 5 and changed.train.train_start == "2018-07-25"
    assert changed.gate.min_delta == 0.5 and changed.gate.metric == "roc_auc"
    assert changed.serve.allow_empty_store is True
    assert changed.section("fraud") == {"exact": True}
    # the original is untouched: the overrides are for this command only
    assert config.train.seed == 42 and config.section("fraud") == {"exact": False}


def test_unquoted_text_and_dates_read_as_text(config):
    changed = apply_overrides(config, ["gate.metric=average_precision", "train.train_start=2018-08-01",
                                       "model_name=other", "fraud.start_date=2018-05-01"])
    assert changed.gate.metric == "average_precision"
    assert changed.train.train_start == "2018-08-01"
    assert changed.model_name == "other"
    assert changed.section("fraud")["start_date"] == "2018-05-01"


def test_later_items_win_and_lists_work(config):
    changed = apply_overrides(config, ["train.seed=1", "train.seed=2", 'pipeline.stages=["train"]'])
    assert changed.train.seed == 2 and changed.pipeline.stages == ("train",)


def test_a_plugin_key_the_table_lacks_is_added(config):
    assert apply_overrides(config, ["fraud.n_customers=500"]).section("fraud") == {"exact": False, "n_customers": 500}


@pytest.mark.parametrize("item, needle", [
    ("train.sed=7", "--set train.sed=7: unknown key(s) sed in [tool.lab.train]; known keys are:"),
    ("train.seed=seven", "[tool.lab.train] seed must be a number, got 'seven'"),
    ("train.seed=0.5", "seed must be a whole number"),
    ("serve.allow_empty_store=1", "must be true or false"),
    ("gate.metric=1", "metric must be a string"),
    ("trian.seed=7",
     "unknown section [tool.lab.trian]; sections are: pipeline, train, gate, serve, experiments, "),
    ("bogus=1", "unknown key(s) bogus in [tool.lab]"),
    ("train.seed", "cannot read --set 'train.seed'; write SECTION.KEY=VALUE"),
    ("=7", "cannot read --set '=7'"),
    ("train.seed.x=1", "only one level is supported"),
])
def test_bad_items_are_one_line_config_errors(config, item, needle):
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, [item])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_no_items_is_the_same_config(config):
    assert apply_overrides(config, []) == config
