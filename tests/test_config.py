import pytest

from lab.config import build_section, load_config
from lab.errors import ConfigError
from plugins.fraud.settings import FraudSettings, fraud_settings
from tests.conftest import write_pyproject


def test_defaults_without_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    config = load_config(tmp_path)
    assert config.root == tmp_path.resolve()
    assert config.registry_path == tmp_path.resolve() / "registry.db"
    assert config.model_name is None  # a lab names its model
    assert config.train.train_start is None
    assert config.serve.host == "127.0.0.1"
    assert config.pipeline.stages == ()  # every stage of notebooks/pipeline.toml, in file order
    assert config.sections == {} and config.section("fraud") is None


def test_values_are_read_and_typed(tmp_path):
    write_pyproject(tmp_path, """
        plugins = ["my_plugin"]
        model_name = "churn"
        [tool.lab.train]
        train_start = "2024-03-01"
        n_trials = 5
        [tool.lab.pipeline]
        stages = ["simulate"]
        retries = 3
    """)
    config = load_config(tmp_path)
    assert config.plugins == ("my_plugin",) and config.model_name == "churn"
    assert config.train.train_start == "2024-03-01" and config.train.n_trials == 5
    assert config.pipeline.stages == ("simulate",) and config.pipeline.retries == 3


@pytest.mark.parametrize("body, needle", [
    ("bogus = 1", "unknown key(s) bogus in [tool.lab]"),
    ("[tool.lab.train]\nn_trials = 'many'", "n_trials must be a number"),
    ("[tool.lab.train]\nn_trials = 1.5", "whole number"),
    ("[tool.lab.serve]\nallow_empty_store = 1", "true or false"),
    ("[tool.lab.pipeline]\nstages = 'simulate'", "must be a list"),
    ("[tool.lab.train]\nn_trails = 3", "known keys are"),
    ("model_name = 3", "model_name must be a string"),
])
def test_bad_values_name_the_key(tmp_path, body, needle):
    write_pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert needle in str(info.value)


def test_invalid_toml_is_a_clear_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.lab\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_lab_home_wins(tmp_path, monkeypatch):
    write_pyproject(tmp_path / "a")
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "a"))
    monkeypatch.chdir(tmp_path)
    assert load_config().root == (tmp_path / "a").resolve()


def test_overrides(tmp_path):
    write_pyproject(tmp_path)
    config = load_config(tmp_path, train={"n_trials": 7}, model_name="m")
    assert config.train.n_trials == 7 and config.train.delta_train == 7
    assert config.model_name == "m"


# ---------------------------------------------------------------- plugins' sections


def test_a_table_the_platform_does_not_own_is_a_plugins_section(tmp_path):
    write_pyproject(tmp_path, """
        [tool.lab.x]
        depth = 3
        names = ["a", "b"]
        [tool.lab.x.inner]
        on = true
        [tool.lab.train]
        n_trials = 4
    """)
    config = load_config(tmp_path)
    assert config.section("x") == {"depth": 3, "names": ["a", "b"], "inner": {"on": True}}
    assert config.section("y") is None
    assert "train" not in config.sections and config.train.n_trials == 4
    config.section("x")["depth"] = 99  # a copy: the config stays as read
    assert config.section("x")["depth"] == 3


def test_an_empty_table_is_present_not_absent(tmp_path):
    write_pyproject(tmp_path, "[tool.lab.x]\n")
    assert load_config(tmp_path).section("x") == {}


def test_an_unknown_key_in_a_core_section_is_still_an_error_beside_plugin_tables(tmp_path):
    write_pyproject(tmp_path, "[tool.lab.x]\nanything = 1\n[tool.lab.gate]\nmin_detla = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) min_detla in \[tool.lab.gate\]; known keys are: "
                                          r"bootstrap_samples, confidence, metric, min_delta"):
        load_config(tmp_path)


def test_a_plugins_settings_built_with_build_section_refuse_a_misspelt_key(tmp_path):
    write_pyproject(tmp_path, "[tool.lab.fraud]\nn_customer = 50\n")
    config = load_config(tmp_path)  # the platform does not know the plugin's keys
    with pytest.raises(ConfigError) as info:
        fraud_settings(config)
    message = str(info.value)
    assert "n_customer in [tool.lab.fraud]" in message and "n_customers" in message


def test_a_plugins_settings_are_typed_with_defaults(tmp_path):
    write_pyproject(tmp_path, "[tool.lab.fraud]\nexact = false\nn_customers = 50\n")
    settings = fraud_settings(load_config(tmp_path))
    assert settings == FraudSettings(exact=False, n_customers=50)
    assert settings.n_terminals == 10000 and settings.start_date == "2018-04-01"
    write_pyproject(tmp_path, "[tool.lab.fraud]\nn_customers = 'many'\n")
    with pytest.raises(ConfigError, match=r"\[tool.lab.fraud\] n_customers must be a number"):
        fraud_settings(load_config(tmp_path))
    assert fraud_settings(load_config(tmp_path.parent / "nowhere")) == FraudSettings()  # no table: defaults


def test_build_section_checks_types_by_default_value():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Knobs:
        rate: float = 0.5
        count: int = 2
        name: str = "a"
        tags: tuple[str, ...] = ()
        on: bool = False

    assert build_section(Knobs, {"rate": 1, "tags": ["x"]}, "tool.lab.k") == Knobs(rate=1, tags=("x",))
    for values, needle in [({"count": 2.5}, "whole number"), ({"name": 3}, "must be a string"),
                           ({"tags": "x"}, "must be a list"), ({"on": "yes"}, "true or false"),
                           ({"rates": 1}, "known keys are: count, name, on, rate, tags")]:
        with pytest.raises(ConfigError, match=needle):
            build_section(Knobs, values, "tool.lab.k")
