"""The platform's pipeline steps, for any lab: call them from stage notebooks.

Each step opens a ``StageContext``, reads everything domain-specific from the lab's
``ModelSpec`` (``lab_model_specs``; ``model`` defaults to ``[tool.lab] model_name``),
writes only its fixed products under ``data/`` atomically, and returns a JSON-able dict
that the notebook shows. A lab's own stages (a simulator, a loader) sit beside these in
its plugin; ``notebooks/pipeline.toml`` wires them together.

============  ==============================================  ==============================
step          does                                            writes
============  ==============================================  ==============================
features      source Parquet -> offline store; point-in-time  data/trainset.parquet,
              training set over the train/delay/test window,  trainset.audit.json
              its leakage audit (fails on a violation)
train         Optuna sweep of the spec's flavor               data/candidate, candidate.json
evaluate      candidate and champion on the same test window  data/evaluation.json
              (gate on a point estimate or a bootstrap CI)
register      model version with lineage and offline          data/registered.json
              evidence; promote when the gate allows
shadow_report a shadow's agreement report; records met or    data/shadow_report.json
              expired
materialize   latest values of the spec's views, online       data/materialized.json
batch_score   the champion scores the last ``score_days``     data/predictions/<model>/,
              in chunks; coverage and freshness report        batch_predictions.db,
                                                              data/scores.parquet
drift         scored window against the training window       data/drift.json, drift.html
skew          logged serving features against their offline   data/skew.json, skew.txt
              recomputation; gate on [tool.lab.skew]
monitor       every monitoring check over a window: drift,     data/monitor.json,
              score drift, freshness, live quality, volume     monitor.html
============  ==============================================  ==============================
"""

from lab.steps.data import features
from lab.steps.evaluation import evaluate, gate
from lab.steps.monitoring import drift, skew
from lab.steps.promotion import shadow_report
from lab.steps.release import register
from lab.steps.scoring import batch_score, materialize
from lab.steps.training import train
from lab.steps.watch import monitor

__all__ = ["batch_score", "drift", "evaluate", "features", "gate", "materialize", "monitor", "register", "shadow_report",
           "skew", "train"]
