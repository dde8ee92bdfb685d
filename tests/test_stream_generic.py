"""`lab stream` knows no lab: a meter-reading lab of another domain (a project plugin in the
lab folder: its own view, a regression ModelSpec with a text id, a numpy model flavor) is
streamed, scored and dead-lettered by the same commands, with nothing of it in lab/."""

from __future__ import annotations

import datetime as dt
import json
import sys

import pyarrow as pa

from lab.cli import main
from lab.config import load_config
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from lab.streaming import StreamStore
from tests.conftest import write_pyproject

METER_LAB = '''
import datetime as dt
from pathlib import Path

import numpy as np

from lab import hookimpl
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.testing.flavors import FixedModelFlavor

DAILY = FeatureView("meter_daily", entity="METER_ID", source="readings", timestamp="READ_AT",
                    aggregations=(Aggregation("METER_MEAN_1D", "WATTS", "mean", dt.timedelta(days=1), fill=100.0),),
                    ttl=dt.timedelta(days=2))
READING = RequestSchema(
    title="MeterReading",
    fields=(RequestField("READING_ID", "str", "the reading", max_length=16),
            RequestField("READ_AT", "datetime", "when it was read"),
            RequestField("METER_ID", "int", "the meter", ge=0, le=999),
            RequestField("WATTS", "float", "power", ge=0, le=10_000)),
    id="READING_ID", timestamp="READ_AT", entities=("METER_ID",),
    example={"READING_ID": "m-0", "READ_AT": "2024-03-01T06:00:00", "METER_ID": 1, "WATTS": 90.0})


def row(request, rows):
    stats = rows.get(DAILY.name) or DAILY.defaults
    return {"WATTS": request["WATTS"], "METER_MEAN_1D": stats["METER_MEAN_1D"]}


class HalfSum:
    feature_names = ["WATTS", "METER_MEAN_1D"]
    task = "regression"

    def predict(self, x):
        return np.asarray(x).sum(axis=1) * 0.5


class HalfSumFlavor(FixedModelFlavor):
    name = "half_sum"
    tasks = ("regression",)

    def make_model(self):
        return HalfSum()


@hookimpl
def lab_feature_views(config):
    return [DAILY]


@hookimpl
def lab_model_specs(config):
    return [ModelSpec(name="meter", task="regression", label="NEXT_WATTS", source="readings",
                      features=("WATTS", "METER_MEAN_1D"), views=(DAILY.name,), request=READING,
                      request_frame=lambda events: events, request_row=row, flavor="half_sum")]


@hookimpl
def lab_model_flavors():
    return [HalfSumFlavor()]
'''


def test_a_lab_of_another_domain_streams_with_the_same_commands(tmp_path, monkeypatch, capsys):
    root = tmp_path / "meter-lab"
    write_pyproject(root, 'model_name = "meter"\nplugins = ["meter_lab"]\n\n[tool.lab.stream]\nstream = "readings"\n')
    (root / "meter_lab.py").write_text(METER_LAB)
    monkeypatch.chdir(root)
    monkeypatch.delenv("LAB_HOME", raising=False)
    monkeypatch.delitem(sys.modules, "meter_lab", raising=False)
    config = load_config(root)
    pm = get_plugin_manager(config)
    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model("meter", run_id=None, flavor="half_sum", artifact_path="runs/models/m1",
                                          metrics={}, lineage={})
        registry.promote("meter", version.version, reason="test")
    views = {v.name: v for batch in pm.hook.lab_feature_views(config=config) for v in batch}
    store = pm.hook.lab_online_store(config=config)
    try:
        store.write(views["meter_daily"], pa.table({"METER_ID": [1], "METER_MEAN_1D": [80.0]}),
                    dt.datetime(2024, 3, 1))
    finally:
        store.close()

    events = [{"READING_ID": f"m-{i}", "READ_AT": "2024-03-01T09:00:00", "METER_ID": 1, "WATTS": 10.0 * i}
              for i in range(4)]
    events.insert(2, {**events[0], "READING_ID": "x" * 17})  # longer than the schema allows
    (root / "readings.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert main(["stream", "publish", "readings.jsonl"]) == 0
    assert main(["stream", "run", "--drain"]) == 0
    capsys.readouterr()
    with StreamStore(config.stream_path) as store:
        rows = store.predictions("readings", "scorer")
        (dead,) = store.dead_letters("readings", "scorer")
    assert [r["prediction"]["event_id"] for r in rows] == ["m-0", "m-1", "m-2", "m-3"]
    assert [r["score"] for r in rows] == [(10.0 * i + 80.0) * 0.5 for i in range(4)]
    assert rows[0]["key"] == "readings/1/meter/v1" and "'READING_ID'" in dead["reason"]
    assert main(["stream", "status", "--stream", "readings"]) == 0
    assert "group scorer: lag 0, predictions 4, dead letters 1" in capsys.readouterr().out
