import pytest

from lab.config import load_config
from lab.errors import ConfigError
from tests.conftest import write_pyproject


def test_defaults_without_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    config = load_config(tmp_path)
    assert config.root == tmp_path.resolve()
    assert config.registry_path == tmp_path.resolve() / "registry.db"
    assert config.simulate.exact is True and config.simulate.n_customers == 5000
    assert config.serve.host == "127.0.0.1"
    assert config.pipeline.stages[0] == "simulate"


def test_values_are_read_and_typed(tmp_path):
    write_pyproject(tmp_path, """
        plugins = ["my_plugin"]
        [tool.lab.simulate]
        exact = false
        n_customers = 50
        [tool.lab.pipeline]
        stages = ["simulate"]
        retries = 3
    """)
    config = load_config(tmp_path)
    assert config.plugins == ("my_plugin",)
    assert config.simulate.exact is False and config.simulate.n_customers == 50
    assert config.pipeline.stages == ("simulate",) and config.pipeline.retries == 3


@pytest.mark.parametrize("body, needle", [
    ("bogus = 1", "unknown key(s) bogus in [tool.lab]"),
    ("[tool.lab.simulate]\nn_customers = 'many'", "n_customers must be a number"),
    ("[tool.lab.simulate]\nn_customers = 1.5", "whole number"),
    ("[tool.lab.simulate]\nexact = 1", "true or false"),
    ("[tool.lab.pipeline]\nstages = 'simulate'", "must be a list"),
    ("[tool.lab.train]\nn_trails = 3", "known keys are"),
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
    config = load_config(tmp_path, simulate={"n_customers": 7}, model_name="m")
    assert config.simulate.n_customers == 7 and config.simulate.n_terminals == 10000
    assert config.model_name == "m"
