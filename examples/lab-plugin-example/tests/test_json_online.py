"""lab-plugin-example's tests: the store passes lab's online-store contract, a lab that
configures it serves a model from it, and every other lab keeps its default store."""

import pytest

import lab
from lab.testing import OnlineStoreContract
from lab_plugin_example import lab_online_store
from lab_plugin_example.store import JsonOnlineStore


class TestJsonOnlineStore(OnlineStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return JsonOnlineStore(tmp_path / "online")


def test_a_lab_that_configures_it_serves_from_json_files(boring_model, lab_pm):
    pm = lab_pm(config='[tool.lab.json_online]\npath = "data/online-json"')
    assert isinstance(pm.hook.lab_online_store(config=pm.config), JsonOnlineStore)
    assert boring_model.materialize() == 20                     # one row per entity
    with lab.load_model("boring@champion", ledger=False) as model:
        answer = model.predict(boring_model.example)
    stored = JsonOnlineStore(pm.config.root / "data/online-json").read(boring_model.view, [3])[0]
    assert answer["features"] == {"AMOUNT": 80.0, **stored} and 0 < answer["score"] < 1


def test_other_labs_keep_their_default_store(lab_pm):
    pm = lab_pm()
    assert lab_online_store(config=pm.config) is None
    assert type(pm.hook.lab_online_store(config=pm.config)).__name__ == "SQLiteOnlineStore"
