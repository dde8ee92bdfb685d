"""What ``lab reproduce`` reads back about a model version: the pipeline run that made it,
the stage that registered it, and each stage's record and parameters as they were then
(``lab.pipeline.reproduce`` re-runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.pipeline.reproduce_diff import load_notebook
from lab.pipeline.runner import PIPELINE_FILE, RUNTIME_PARAMS, select_stages
from lab.pipeline.stage import Stage
from lab.registry import ModelVersion, Registry


@dataclass
class RecordedStage:
    """One stage of the recorded pipeline, as the registry and its executed notebook hold it."""

    stage: Stage
    record: dict | None  # the finished stage record: cache key, outputs.inputs, outputs.code_files, output_digests
    notebook: Path | None  # its executed notebook, while runs/ still holds it
    params: dict | None  # the parameters it ran with (runtime ones left out); None: not recorded
    note: str = ""  # why no record or parameters were found


@dataclass
class Plan:
    """What a reproduction re-runs: the version, the run that made it, the stages up to the
    one that registered it (``stages[-1]``)."""

    version: ModelVersion
    pipeline_run: dict
    trained_by: dict | None  # the version's own run (the train run), with its provenance
    stages: list[RecordedStage]


# -- the plan: what was recorded -----------------------------------------------------------------

def plan_reproduction(config, registry: Registry, name: str, version: int) -> Plan:
    """The recorded pipeline behind ``name`` v``version``; ``LabError`` (``NotFound``) for
    an unknown model or version, or one that no recorded pipeline run registered."""
    mv = registry.get_model_version(name, version)
    trained_by = registry.get_run(mv.run_id) if mv.run_id else None
    run_id = mv.lineage.get("pipeline_run_id") or (trained_by or {}).get("parent_run_id")
    pipeline_run = _pipeline_run(registry, run_id) if run_id else None
    if pipeline_run is None:
        raise LabError(
            f"model {name!r} version {version} has no recorded pipeline run (its lineage names none"
            f"{'' if not run_id else f'; run {run_id} is not a pipeline run'}), so there is nothing to re-run; "
            f"only versions registered by a stage of `lab run` can be reproduced (see `lab lineage {name} {version}`)")
    history = registry.stage_history(pipeline_run["id"])
    registering = _registering_record(history, mv.created_at)
    if registering is None:
        raise LabError(
            f"no stage of pipeline run {pipeline_run['id']} was running when {name} v{version} was registered "
            f"({mv.created_at}); only versions registered by a stage of `lab run` can be reproduced")
    stages = select_stages(config)
    names = [s.name for s in stages]
    if registering["stage"] not in names:
        raise LabError(
            f"stage {registering['stage']!r}, which registered {name} v{version}, is no longer in {PIPELINE_FILE} "
            f"(stages: {', '.join(names)}); restore it to reproduce this version")
    stages = stages[: names.index(registering["stage"]) + 1]
    return Plan(mv, pipeline_run, trained_by, _recorded_stages(config, registry, stages, history, registering))


def _pipeline_run(registry: Registry, run_id: str) -> dict | None:
    try:
        run = registry.get_run(run_id)
    except LabError:
        return None
    return run if run["kind"] == "pipeline" else None


def _registering_record(history: list[dict], created_at: str) -> dict | None:
    """The finished record of the stage that was running when the version was registered."""
    started: dict[str, str] = {}
    for record in history:
        if record["status"] == "running":
            started[record["stage"]] = record["at"]
        elif record["status"] == "finished" and started.get(record["stage"], "~") <= created_at <= record["at"]:
            return record
    return None


def _recorded_stages(config, registry: Registry, stages: list[Stage], history: list[dict],
                     registering: dict) -> list[RecordedStage]:
    """Each stage's record as it was when the version was made: its record in the pipeline
    run (a skipped one resolved to the finished run it reused), else the latest earlier
    finished record whose outputs are the bytes the later stages read."""
    in_run: dict[str, dict] = {}
    for record in history:
        if record["id"] <= registering["id"] and record["status"] in ("finished", "skipped"):
            in_run[record["stage"]] = record
    everything: list[dict] | None = None
    needed = dict((registering.get("outputs") or {}).get("inputs") or {})
    chosen: dict[str, tuple[dict | None, str | None, str]] = {}
    for stage in reversed(stages):
        record, notebook, note = in_run.get(stage.name), None, ""
        if record is not None and record["status"] == "skipped":
            notebook = record.get("output_notebook")
            record = registry.find_stage_cache(stage.name, record["cache_key"])
            if record is None:
                note = "skipped in the run, and the finished record it reused is gone"
        elif record is None:
            if everything is None:
                everything = [r for run in registry.list_runs(kind="pipeline", limit=10_000)
                              for r in registry.stage_history(run["id"])]
            earlier = [r for r in everything if r["stage"] == stage.name and r["status"] == "finished"
                       and r["id"] < registering["id"]]
            wanted = {out: needed[out] for out in stage.outputs if out in needed}
            matching = [r for r in earlier if all((r.get("output_digests") or {}).get(k) == v
                                                  for k, v in wanted.items())]
            record = (matching or earlier or [None])[-1]
            note = ("not run by that pipeline run; its latest earlier run" + ("" if matching or not wanted else
                    " (whose outputs are not the bytes the later stages read)")) if record else \
                "never finished before the version was registered"
        if record is not None:
            needed.update((record.get("outputs") or {}).get("inputs") or {})
        chosen[stage.name] = (record, notebook or (record or {}).get("output_notebook"), note)
    out = []
    for stage in stages:
        record, recorded_notebook, note = chosen[stage.name]
        notebook = _executed_notebook(config, recorded_notebook)
        params = _notebook_params(notebook) if notebook else None
        if record is not None and params is None:
            note = note or ("its executed notebook is gone" if notebook is None else
                            "its executed notebook records no parameters")
        out.append(RecordedStage(stage, record, notebook, params, note))
    return out


def _executed_notebook(config, recorded: str | None) -> Path | None:
    """The executed notebook of a stage record: under this lab's runs folder (the record
    may name the folder the lab was in when it ran), else the path as recorded."""
    if not recorded:
        return None
    path = Path(recorded)
    for candidate in (config.runs_path / path.parent.name / path.name, path if path.is_absolute() else config.root / path):
        if candidate.is_file():
            return candidate
    return None


def _notebook_params(path: Path) -> dict | None:
    """The parameters papermill injected (its ``metadata.papermill.parameters``), runtime ones left out."""
    nb = load_notebook(path)
    params = ((nb or {}).get("metadata") or {}).get("papermill", {}).get("parameters")
    return {k: v for k, v in params.items() if k not in RUNTIME_PARAMS} if isinstance(params, dict) else None
