"""``lab reproduce MODEL VERSION``: re-run the recorded pipeline that made a model version,
in a scratch copy of the lab, and compare what comes out with what was registered.

What was recorded when the version was made, and is read back (``reproduce_plan``):

- the version: its metrics, and in its lineage the pipeline run that made it
  (``pipeline_run_id``; else its run's ``parent_run_id``), the model's digest
  (``model_digest``) and the training set's (``trainset_digest``);
- that pipeline run's stage records: per stage its cache key (notebook, parameters, input
  digests, code), the digests of its inputs and outputs, the code files it imported, and
  its executed notebook, whose papermill metadata holds the parameters it ran with;
- the provenance of the run that trained it: git commit and dirty flag, lock-file hash,
  Python, platform, package versions (and hardware, where the run recorded it).

The re-run copies the lab's files (pyproject.toml, the lock file, the pipeline's notebook
folder, the lab's own modules, and the inputs no earlier stage writes) into
``runs/reproduce/<run id>/lab``, and runs every stage up to the one that registered the
version there, each once, with no cache and with its recorded parameters. The lab's own
registry, data/ and runs/ are not written, except for the ``reproduce`` run that records
the result and the scratch folder itself.

Each difference it can name (``reproduce_diff``) is reported with its kind: ``data`` (an
input file's digest), ``params``, ``notebook`` (a stage notebook's cells), ``code`` (the
git commit, the code files a stage imported), ``lock`` (the lock file), ``environment``
and ``hardware`` (the recorded environment against this one), ``seeds``, ``registry`` (an
``alias:`` input). A difference is *applied* when the re-run saw it (it may explain a
metric that moved); a recorded parameter that today's config would set otherwise is noted
but not applied, since the re-run uses the recorded one (``current_params`` turns that
round).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab.atomic import atomic_write_text
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.pipeline.digest import PROJECT_PREFIX
from lab.pipeline.progress import PROGRESS_FILE_ENV, RunProgress
from lab.pipeline.reproduce_diff import differences, explain
from lab.pipeline.reproduce_plan import Plan, RecordedStage, plan_reproduction
from lab.pipeline.runner import CODE_RECORD_ENV, PIPELINE_FILE, cache_key, output_digests, stage_params
from lab.pipeline.stage import StageFailed
from lab.registry import ModelVersion, Registry

REPRODUCE_DIR = "reproduce"
"""Under the lab's runs folder: one folder per reproduction, named by its registry run."""
REPORT_FILE = "reproduce.json"
NOT_REPRODUCED_EXIT = 4
"""``lab reproduce``'s exit status when the metrics (or the weights) did not reproduce."""


@dataclass
class StageResult:
    name: str
    status: str  # finished | failed
    seconds: float
    params_from: str  # "recorded" | "current"
    record: dict | None = None  # the scratch registry's finished record
    error: str | None = None
    notebook: str | None = None


@dataclass
class Report:
    model: str
    version: int
    run_id: str
    pipeline_run_id: str
    scratch: str
    tolerance: float
    tolerance_why: str
    reproduced: bool = False
    seconds: float = 0.0
    metrics: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    differences: list[dict] = field(default_factory=list)
    explanation: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- the re-run ----------------------------------------------------------------------------------

def reproduce(config, pm, name: str, version: int, *, tolerance: float | None = None,
              current_params: bool = False, keep: bool = False, log: Callable[[str], None] = print,
              progress: str = "auto") -> Report:
    """Re-run the stages that made ``name`` v``version`` in a scratch copy of the lab and
    compare; see the module's docstring. ``tolerance`` (absolute, in each metric's units;
    None: ``[tool.lab.reproduce]``) bounds how far a reproduced metric may be from the
    recorded one; at 0 the model's digest must match too. ``keep`` keeps the scratch
    copy's data folder (removed by default; the notebooks and the report stay).

    Returns the ``Report`` (also written to ``runs/reproduce/<run id>/reproduce.json`` and
    recorded as a ``reproduce`` run in the lab's registry)."""
    started = time.perf_counter()
    if tolerance is not None and (not math.isfinite(tolerance) or tolerance < 0):
        raise ConfigError(f"--tolerance must be 0 or more (in the metrics' units), got {tolerance}")
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        plan = plan_reproduction(config, registry, name, version)
        tol, why = _tolerance(config, plan, tolerance)
        run_id = registry.start_run(kind="reproduce", name=f"{name} v{version}", params={
            "model": name, "version": version, "pipeline_run_id": plan.pipeline_run["id"], "tolerance": tol,
            "stages": [s.stage.name for s in plan.stages], "params_from": "current" if current_params else "recorded"})
        folder = config.runs_path / REPRODUCE_DIR / run_id
        report = Report(name, version, run_id, plan.pipeline_run["id"], _relative(folder / "lab", config.root),
                        tol, why)
        try:
            log(f"reproducing {name} v{version} from pipeline run {plan.pipeline_run['id']}: stages "
                f"{', '.join(s.stage.name for s in plan.stages)}, in {report.scratch}")
            scratch = _scratch_lab(config, plan, folder / "lab")
            results, reproduced_version = _rerun(scratch, pm, plan, current_params, log, progress)
            _compare(config, registry, plan, scratch, results, reproduced_version, report)
        except BaseException:
            registry.finish_run(run_id, "failed")
            raise
        report.seconds = round(time.perf_counter() - started, 1)
        atomic_write_text(folder / REPORT_FILE, json.dumps(report.to_dict(), indent=2, default=str))
        registry.log_params(run_id, {"reproduced": report.reproduced, "explanation": report.explanation,
                                     "differences": [f"{d['kind']}: {d['what']}" for d in report.differences]})
        registry.log_metrics(run_id, {"reproduced": float(report.reproduced), "seconds": report.seconds,
                                      **{f"difference_{m['metric']}": m["difference"] for m in report.metrics
                                         if isinstance(m.get("difference"), (int, float))}})
        registry.log_artifact(run_id, "report", _relative(folder / REPORT_FILE, config.root))
        registry.finish_run(run_id, "finished")
    if not keep:
        shutil.rmtree(scratch.data_path, ignore_errors=True)
    return report


def _tolerance(config, plan: Plan, given: float | None) -> tuple[float, str]:
    if given is not None:
        return float(given), "--tolerance"
    settings = config.reproduce
    on = sorted({str(s.params["accelerator"]) for s in plan.stages if s.params and
                 s.params.get("accelerator") not in (None, "cpu")})
    if on:
        return float(settings.accelerator_tolerance), (
            f"[tool.lab.reproduce] accelerator_tolerance: a stage ran with accelerator {', '.join(on)}")
    return float(settings.tolerance), "[tool.lab.reproduce] tolerance"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _scratch_lab(config, plan: Plan, scratch: Path):
    """Copy what the recorded stages need into ``scratch`` and return its config: the
    pyproject.toml, the lock file, the pipeline's notebook folder and any stage notebook
    outside it, the lab's own modules, and each input no earlier stage writes."""
    root = config.root
    scratch.mkdir(parents=True)
    files = {"pyproject.toml"}
    lock = (plan.trained_by or plan.pipeline_run).get("lock_file")
    if lock and (root / lock).is_file():
        files.add(lock)
    files.update(s.stage.notebook for s in plan.stages)
    for recorded in plan.stages:
        for rel in ((recorded.record or {}).get("outputs") or {}).get("code_files") or []:
            if rel.startswith(PROJECT_PREFIX):
                files.add(rel[len(PROJECT_PREFIX):])
    for module in config.plugins:
        top = module.split(".")[0]
        files.update(p for p in (f"{top}.py", top) if (root / p).exists())
    written: set[str] = set()
    for recorded in plan.stages:
        for ref in recorded.stage.inputs:
            if not ref.startswith("alias:") and ref not in written:
                if not (root / ref).exists():
                    raise LabError(
                        f"stage {recorded.stage.name!r} read {ref} when the version was made, and no earlier stage "
                        f"writes it; it is gone from the lab, so the run cannot be repeated: restore it")
                files.add(ref)
        written.update(recorded.stage.outputs)
    _copy(root / Path(PIPELINE_FILE).parent, scratch / Path(PIPELINE_FILE).parent)
    for rel in sorted(files):
        _copy(root / rel, scratch / rel)
    scratch_config = load_config(scratch)
    for what, path in (("registry", scratch_config.registry_path), ("runs_dir", scratch_config.runs_path),
                       ("data_dir", scratch_config.data_path)):
        if not path.resolve().is_relative_to(scratch.resolve()):
            raise ConfigError(f"[tool.lab] {what} = {path} is outside the lab's folder, so a reproduction could not "
                              "keep away from it; make it a path inside the lab")
    return scratch_config


def _copy(source: Path, target: Path) -> None:
    if not source.exists() or target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    else:
        shutil.copy2(source, target)


def _rerun(config, pm, plan: Plan, current_params: bool, log: Callable[[str], None],
           progress: str) -> tuple[list[StageResult], ModelVersion | None]:
    """Run each planned stage once in the scratch lab ``config`` (no cache); stop at the
    first that fails. Returns the results and the version the last stage registered."""
    executor = pm.hook.lab_stage_executor(config=config)
    if executor is None:
        raise ConfigError("no plugin answered lab_stage_executor; is papermill_executor blocked?")
    results: list[StageResult] = []
    names = [s.stage.name for s in plan.stages]
    saved = {k: os.environ.get(k) for k in ("LAB_RUN_PID", CODE_RECORD_ENV, PROGRESS_FILE_ENV)}
    os.environ["LAB_RUN_PID"] = str(os.getpid())  # stage kernels end with this process (StageContext)
    try:
        with Registry.open(config.registry_path, project_root=config.root) as registry:
            run_id = registry.start_run(kind="pipeline", params={"stages": names, "reproduces": (
                f"{plan.version.name} v{plan.version.version}")})
            run_dir = config.runs_path / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            with RunProgress(config.runs_path, run_id, names, log=log, mode=progress) as tracker:
                for index, recorded in enumerate(plan.stages, start=1):
                    result = _run_one(config, pm, executor, registry, tracker, run_id, run_dir, index, len(names),
                                      recorded, current_params, log)
                    results.append(result)
                    if result.status == "failed":
                        break
            registry.finish_run(run_id, "finished" if results[-1].status == "finished" else "failed")
            versions = registry.list_model_versions(plan.version.name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finished = results[-1].status == "finished" and len(results) == len(plan.stages)
    return results, (versions[-1] if versions and finished else None)


def _run_one(config, pm, executor, registry, tracker, run_id, run_dir, index, total, recorded: RecordedStage,
             current_params: bool, log) -> StageResult:
    stage = recorded.stage
    use_recorded = recorded.params is not None and not current_params
    params = dict(recorded.params) if use_recorded else stage_params(config, stage, run_dir)
    params.update(root=str(config.root), run_dir=str(run_dir))
    key, inputs = cache_key(config, registry, stage, params, {})
    notebook = str(run_dir / f"{index:02d}_{stage.name}.ipynb")
    registry.record_stage(run_id, stage.name, status="running", attempt=1, cache_key=key, output_notebook=notebook)
    code_record = run_dir / ".code" / f"{stage.name}.json"
    os.environ[CODE_RECORD_ENV] = str(code_record)
    os.environ[PROGRESS_FILE_ENV] = str(tracker.stage_started(stage.name, 1))
    log(f"[{index}/{total}] {stage.name}: running with the {'recorded' if use_recorded else 'current'} parameters")
    started = time.perf_counter()
    try:
        try:
            pm.hook.lab_execute_stage(config=config, stage=stage, params=params, output_path=notebook,
                                      executor=executor)
        finally:
            os.environ.pop(CODE_RECORD_ENV, None)
            os.environ.pop(PROGRESS_FILE_ENV, None)
        missing = [o for o in stage.outputs if not (config.root / o).exists()]
        if missing:
            raise StageFailed(stage.name, f"did not write its declared output(s) {missing}", notebook)
    except StageFailed as exc:
        seconds = round(time.perf_counter() - started, 2)
        registry.record_stage(run_id, stage.name, status="failed", attempt=1, cache_key=key,
                              output_notebook=notebook, error=exc.summary)
        tracker.stage_ended(stage.name, "failed", seconds, exc.summary)
        log(f"    {stage.name} failed: {exc.summary}")
        return StageResult(stage.name, "failed", seconds, "recorded" if use_recorded else "current",
                           error=exc.summary, notebook=notebook)
    seconds = round(time.perf_counter() - started, 2)
    outputs: dict[str, Any] = {"inputs": inputs, "seconds": seconds}
    if code_record.exists():
        outputs["code_files"] = json.loads(code_record.read_text())
        key, _ = cache_key(config, registry, stage, params, {}, outputs["code_files"])
    registry.record_stage(run_id, stage.name, status="finished", attempt=1, cache_key=key, output_notebook=notebook,
                          outputs=outputs, output_digests=output_digests(config, stage))
    tracker.stage_ended(stage.name, "finished", seconds)
    log(f"    {stage.name} finished in {seconds:.1f} s")
    record = registry.last_finished_stage(stage.name)
    return StageResult(stage.name, "finished", seconds, "recorded" if use_recorded else "current", record=record,
                       notebook=notebook)


# -- the comparison ------------------------------------------------------------------------------

def _compare(config, registry: Registry, plan: Plan, scratch, results: list[StageResult],
             reproduced: ModelVersion | None, report: Report) -> None:
    """Fill ``report``: metrics and artifacts against the recorded version, each stage's
    key and outputs against its record, the named differences, the verdict."""
    recorded = plan.version
    metrics = _metric_rows(recorded.metrics, reproduced.metrics if reproduced else {}, report.tolerance)
    report.metrics = metrics
    again = reproduced.lineage if reproduced else {}
    report.artifacts = [
        {"what": what, "key": key, "recorded": recorded.lineage.get(key), "reproduced": again.get(key),
         "same": recorded.lineage.get(key) == again.get(key)}
        for key, what in (("model_digest", "model files"), ("trainset_digest", "training set"))
        if recorded.lineage.get(key) is not None]
    by_name = {r.name: r for r in results}
    report.stages = [_stage_row(rs, by_name.get(rs.stage.name)) for rs in plan.stages]
    now = registry.get_run(report.run_id)  # the reproduce run: today's provenance, read from the lab's root
    again_run = None
    if reproduced is not None and reproduced.run_id:
        with Registry.open(scratch.registry_path, project_root=scratch.root) as scratch_registry:
            again_run = scratch_registry.get_run(reproduced.run_id)
    report.differences = differences(config, scratch, plan, results, now, again_run)
    weights = [a for a in report.artifacts if a["key"] == "model_digest"]
    # Something must have been compared: metrics, or at least the model's files.
    report.reproduced = (reproduced is not None and bool(metrics or weights) and all(m["within"] for m in metrics)
                         and (report.tolerance > 0 and bool(metrics) or all(a["same"] for a in weights)))
    report.explanation = explain(report, results)


def _metric_rows(recorded: dict, reproduced: dict, tolerance: float) -> list[dict]:
    rows = []
    for metric in sorted(set(recorded) | set(reproduced)):
        a, b = recorded.get(metric), reproduced.get(metric)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if numbers:
            both_nan = math.isnan(a) and math.isnan(b)
            difference = 0.0 if both_nan else b - a
            within = both_nan or abs(difference) <= tolerance
        else:
            difference, within = None, a == b and metric in recorded and metric in reproduced
        rows.append({"metric": metric, "recorded": a, "reproduced": b, "difference": difference, "within": within})
    return rows


def _stage_row(recorded: RecordedStage, result: StageResult | None) -> dict:
    row: dict[str, Any] = {"stage": recorded.stage.name, "status": result.status if result else "not run",
                           "seconds": result.seconds if result else None,
                           "params_from": result.params_from if result else None,
                           "recorded_notebook": str(recorded.notebook) if recorded.notebook else None,
                           "notebook": result.notebook if result else None, "note": recorded.note}
    if result is not None and result.error:
        row["error"] = result.error
    then, again = recorded.record, result.record if result else None
    if then is None or again is None:
        row.update(same_key=None, same_outputs=None, differing_outputs=[])
        return row
    before, after = then.get("output_digests") or {}, again.get("output_digests") or {}
    differing = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    row.update(same_key=then["cache_key"] == again["cache_key"], same_outputs=not differing,
               differing_outputs=differing)
    return row
