"""Runs the stage list: skips what is cached, retries what fails, resumes a stopped run,
runs a preempted stage again and stops cleanly when the run itself is preempted."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from lab import events
from lab.errors import ConfigError, LabError
from lab.pipeline.digest import code_digest, path_digest
from lab.pipeline.progress import PROGRESS_FILE_ENV, RunProgress
from lab.pipeline.stage import SigtermRelay, Stage, StageFailed, load_stages
from lab.registry import Registry

PIPELINE_FILE = "notebooks/pipeline.toml"
# Parameters every stage receives that must not change its cache key.
RUNTIME_PARAMS = ("root", "run_dir")
# Where a stage kernel writes the platform source files it imported (see StageContext).
CODE_RECORD_ENV = "LAB_STAGE_CODE_RECORD"
STAGE_PREEMPTED = "stage.preempted"
"""Event (``lab_on_event``, and a row in the registry's audit log) for a stage whose run was
stopped by SIGTERM: its payload says whether it is re-queued (``requeued``) or the whole
``lab run`` stops, and the checkpoint the training resumes from."""
# A pipeline run in one of these states is continued by the next `lab run` (unless --new);
# "killed" is a run stopped by SIGTERM (preempted).
RESUMABLE = ("failed", "running", "killed")


class PipelinePreempted(LabError):
    """``lab run`` got SIGTERM: the running stage was told to checkpoint and stop, the run
    is marked ``killed``, and the next ``lab run`` resumes it. ``exit_status`` is
    ``lab.training.preemption.PREEMPTED_EXIT`` (75)."""

    def __init__(self, message: str, *, run_id: str, stage: str | None, exit_status: int):
        super().__init__(message)
        self.run_id = run_id
        self.stage = stage
        self.exit_status = exit_status


@dataclass
class StageOutcome:
    name: str
    status: str  # finished | skipped | failed | preempted (lab run got SIGTERM)
    seconds: float = 0.0
    attempts: int = 0
    notebook: str | None = None
    error: str | None = None  # a failed stage's last error (the exception's last line)
    preemptions: int = 0  # times the stage was preempted and run again within this call


@dataclass
class PipelineResult:
    run_id: str
    run_dir: Path
    resumed: bool
    stages: list[StageOutcome] = field(default_factory=list)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One ``lab run`` per lab at a time; the OS drops the lock if the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(
                f"another `lab run` is using this lab (lock {lock_path}); wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_params(config, stage: Stage, run_dir: Path) -> dict:
    """What a stage notebook receives: its config sections, its pipeline.toml params, where to work."""
    params = {}
    for entry in stage.config:
        section, _, key = entry.partition(".")
        value = getattr(config, section, None) if section != "sections" else None
        if dataclasses.is_dataclass(value):
            values = dataclasses.asdict(value)
        elif config.section(section) is not None:  # a plugin's own table: its notebook holds the defaults
            values = config.section(section)
        else:
            raise ConfigError(f"stage {stage.name!r} asks for config section {section!r}: add a "
                              f"[tool.lab.{section}] table to pyproject.toml")
        if key and key not in values:
            raise ConfigError(f"stage {stage.name!r} asks for {entry!r}; [tool.lab.{section}] has {sorted(values)}")
        params.update({key: values[key]} if key else values)
    params.update(stage.params)
    params["root"] = str(config.root)
    params["run_dir"] = str(run_dir)
    return params


def input_digest(config, registry, stage: Stage, ref: str, producers: dict[str, str]) -> str:
    if ref.startswith("alias:"):
        model, _, alias = ref[len("alias:"):].partition("/")
        version = registry.get_alias(model, alias)
        return f"{model}/{alias}=v{version.version}" if version else f"{model}/{alias}=none"
    path = config.root / ref
    if not path.exists():
        who = producers.get(ref)
        fix = f"run the stage {who!r} that writes it" if who else "create it"
        raise LabError(f"stage {stage.name!r} needs {ref}, which does not exist; {fix}")
    return path_digest(path)


def cache_key(config, registry, stage: Stage, params: dict, producers: dict[str, str],
              code_files: list[str] | None = None) -> tuple[str, dict]:
    """The stage's cache key and its input digests. ``code_files`` are the platform
    sources the stage imported when it last ran; without them, all of lab/ and plugins/."""
    notebook = config.root / stage.notebook
    if not notebook.exists():
        raise ConfigError(f"stage {stage.name!r}: notebook {stage.notebook} does not exist")
    inputs = {ref: input_digest(config, registry, stage, ref, producers) for ref in stage.inputs}
    material = {
        "notebook": path_digest(notebook),
        "params": {k: v for k, v in params.items() if k not in RUNTIME_PARAMS},
        "inputs": inputs,
        "code": code_digest(code_files, config.root),
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), inputs


def output_digests(config, stage: Stage) -> dict[str, str]:
    """Content digests of the stage's declared outputs (each must exist)."""
    return {out: path_digest(config.root / out) for out in stage.outputs}


def outputs_match(config, stage: Stage, recorded: dict | None) -> bool:
    """Whether every declared output exists and still holds the bytes ``recorded`` when
    the stage finished. A record without digests (made before they were kept) never
    matches, so the stage runs once more rather than trusting files it cannot vouch for."""
    if not isinstance(recorded, dict):
        return False
    for out in stage.outputs:
        path = config.root / out
        if out not in recorded or not path.exists() or path_digest(path) != recorded[out]:
            return False
    return True


def select_stages(config, only: list[str] | None = None) -> list[Stage]:
    defined = {s.name: s for s in load_stages(config.root / PIPELINE_FILE)}
    order = list(config.pipeline.stages) or list(defined)  # default: every stage, in file order
    missing = [n for n in order if n not in defined]
    if missing:
        raise ConfigError(
            f"[tool.lab.pipeline] stages names {missing}, not defined in {PIPELINE_FILE}; "
            f"defined: {', '.join(defined)}"
        )
    if only:
        unknown = [n for n in only if n not in defined]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are: {', '.join(order)}")
        order = [n for n in order if n in only]
    return [defined[n] for n in order]


def run_pipeline(
    config,
    pm,
    *,
    only: list[str] | None = None,
    force: bool = False,
    new_run: bool = False,
    log: Callable[[str], None] = print,
    progress: str = "auto",
) -> PipelineResult:
    """Run the pipeline's stages in order.

    A stage whose cache key (notebook, parameters, input digests, code) matches an earlier
    finished run, and whose declared outputs still hold the bytes that run left (their
    recorded content digests), is skipped; otherwise it runs. A failing stage is tried
    ``1 + config.pipeline.retries`` times; if it still fails the run is marked failed,
    the executed notebook is kept, and ``LabError`` says how to resume. The next call
    continues that run (same run folder) unless ``new_run``.

    Preemption (docs/training.md, "Preemption"). A stage whose training was stopped by a
    SIGTERM sent to its kernel (it leaves the marker of ``lab.training.preemption``) is
    run again at once, in the same run folder, so it resumes from its checkpoint; that
    does not use up an attempt, up to ``config.pipeline.max_preemptions`` times per stage.
    A SIGTERM to this process (in the main thread) is relayed to the running stage
    (``SigtermRelay``); once the stage has stopped, the run is marked ``killed`` and
    ``PipelinePreempted`` is raised (``lab run`` exits 75); the next call resumes the run.
    Either way a ``stage.preempted`` event is emitted and kept in the registry's audit log.

    While a stage runs, its reports (``lab.pipeline.progress.report``) are shown live:
    ``progress`` ``"auto"`` draws bars on a terminal (when ``log`` is ``print``) and a few
    plain lines through ``log`` otherwise; ``"bars"``, ``"lines"`` or ``"off"`` choose.
    ``read_progress`` answers the same from another process.
    """
    stages = select_stages(config, only)
    producers = {out: s.name for s in stages for out in s.outputs}
    attempts_allowed = 1 + max(0, int(config.pipeline.retries))
    with _exclusive(config.runs_path / ".lab-run.lock"), Registry.open(
        config.registry_path, project_root=config.root
    ) as registry:
        last = registry.last_pipeline_run()
        resumed = bool(last and last["status"] in RESUMABLE and not new_run)
        if resumed:
            run_id = last["id"]
            registry.resume_run(run_id)
            log(f"resuming pipeline run {run_id} (it stopped with status {last['status']})")
        else:
            run_id = registry.start_run(kind="pipeline", params={"stages": [s.name for s in stages]})
            log(f"pipeline run {run_id}")
        run_dir = config.runs_path / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        result = PipelineResult(run_id=run_id, run_dir=run_dir, resumed=resumed)
        # Stage kernels watch this PID and exit when the run dies (see StageContext).
        os.environ["LAB_RUN_PID"] = str(os.getpid())
        executor = pm.hook.lab_stage_executor(config=config)
        if executor is None:
            raise ConfigError("no plugin answered lab_stage_executor; is papermill_executor blocked?")

        limits = _Limits(attempts_allowed, max(0, int(config.pipeline.max_preemptions)))
        with RunProgress(config.runs_path, run_id, [s.name for s in stages], log=log, mode=progress) as tracker, \
                SigtermRelay() as sigterm:
            _run_stages(config, pm, registry, executor, stages, producers, force, run_id, run_dir,
                        limits, log, tracker, result, sigterm)
        registry.finish_run(run_id, "finished")
        return result


@dataclass(frozen=True)
class _Limits:
    attempts: int  # runs of a failing stage (1 + retries)
    preemptions: int  # re-runs of a preempted stage, on top of the attempts


def _run_stages(config, pm, registry, executor, stages, producers, force, run_id, run_dir,
                limits, log, tracker, result, sigterm) -> None:
    """``run_pipeline``'s loop: skip or run each stage in order, appending to ``result``;
    raises ``LabError`` naming the stage that failed every attempt, ``PipelinePreempted``
    once SIGTERM stopped the run."""
    for index, stage in enumerate(stages, start=1):
        if sigterm.requested:
            _stop_preempted(registry, run_id, stage.name, ran=False)
        params = stage_params(config, stage, run_dir)
        last = registry.last_finished_stage(stage.name)
        code_files = (last or {}).get("outputs", {}).get("code_files")
        key, inputs = cache_key(config, registry, stage, params, producers, code_files)
        cached = None if force else registry.find_stage_cache(stage.name, key)
        if cached and not outputs_match(config, stage, cached.get("output_digests")):
            log(f"[{index}/{len(stages)}] {stage.name}: its outputs changed since it last ran "
                f"with these inputs, running it again")
            cached = None
        if cached:
            registry.record_stage(run_id, stage.name, status="skipped", attempt=0, cache_key=key,
                                  output_notebook=cached.get("output_notebook"),
                                  output_digests=cached["output_digests"])
            events.emit(pm, events.STAGE_SKIPPED, run_id=run_id, stage=stage.name, cache_key=key)
            log(f"[{index}/{len(stages)}] {stage.name}: unchanged, skipped")
            tracker.stage_skipped(stage.name)
            result.stages.append(StageOutcome(stage.name, "skipped", notebook=cached.get("output_notebook")))
            continue
        outcome = _run_stage(config, pm, registry, executor, stage, index, params, key, inputs,
                             run_id, run_dir, limits, log, tracker, sigterm)
        result.stages.append(outcome)
        if outcome.status == "preempted":
            _stop_preempted(registry, run_id, stage.name, ran=True)
        if outcome.status == "failed":
            registry.finish_run(run_id, "failed")
            raise LabError(
                f"stage {stage.name!r} failed after {outcome.attempts} attempt(s): {outcome.error}. "
                f"The executed notebook is kept at {outcome.notebook}. "
                f"Fix the cause, then `lab run` resumes from {stage.name!r}."
            )


def _stop_preempted(registry, run_id: str, stage: str, *, ran: bool) -> None:
    """Mark the run ``killed`` (the next ``lab run`` resumes it) and raise ``PipelinePreempted``."""
    from lab.training.preemption import PREEMPTED_EXIT  # lab.training's package loads numpy

    registry.finish_run(run_id, "killed")
    where = f"stage {stage!r} stopped (a training keeps its newest checkpoint)" if ran else f"before stage {stage!r}"
    message = f"run {run_id} preempted by SIGTERM: {where}; `lab run` resumes it from there"
    raise PipelinePreempted(message, run_id=run_id, stage=stage, exit_status=PREEMPTED_EXIT)


def _execute(config, pm, executor, stage, params, notebook, sigterm, marker: Path) -> None:
    """Run the stage through ``lab_execute_stage``; what else than ``StageFailed`` leaves the
    executor while the stage was preempted (a kernel that SIGTERM ended: nbclient's
    ``DeadKernelError``) becomes ``StageFailed`` too."""
    try:
        pm.hook.lab_execute_stage(config=config, stage=stage, params=params,
                                  output_path=notebook, executor=executor)
    except StageFailed:
        raise
    except Exception as exc:
        if not (sigterm.requested or marker.exists()):
            raise
        raise StageFailed(stage.name, f"{type(exc).__name__}: {exc}", notebook) from None


def _preemption(sigterm, marker: Path) -> dict | None:
    """What the stage's preempted training left in its marker; ``{}`` when only ``lab run``
    got SIGTERM (the stage may have died before it could write one); None: not preempted."""
    from lab.training.preemption import read_preemption  # lab.training's package loads numpy

    found = read_preemption(marker) if marker.exists() else None
    if found is not None:
        return found
    return {} if sigterm.requested else None


def _run_stage(config, pm, registry, executor, stage, index, params, key, inputs,
               run_id, run_dir, limits, log, tracker, sigterm) -> StageOutcome:
    from lab.training.preemption import PREEMPTION_MARKER_ENV  # lab.training's package loads numpy

    last_error = ""
    notebook = None
    attempt, preemptions = 1, 0
    marker = run_dir / ".preempted" / f"{stage.name}.json"
    while attempt <= limits.attempts:
        if sigterm.requested:  # SIGTERM between two attempts: do not start another
            return StageOutcome(stage.name, "preempted", 0.0, attempt, notebook, "SIGTERM", preemptions)
        suffix = ("" if attempt == 1 else f".attempt{attempt}") + (f".requeue{preemptions}" if preemptions else "")
        notebook = str(run_dir / f"{index:02d}_{stage.name}{suffix}.ipynb")
        registry.record_stage(run_id, stage.name, status="running", attempt=attempt,
                              cache_key=key, output_notebook=notebook)
        code_record = run_dir / ".code" / f"{stage.name}.json"
        code_record.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        os.environ[CODE_RECORD_ENV] = str(code_record)
        os.environ[PREEMPTION_MARKER_ENV] = str(marker)
        log(f"[{index}] {stage.name}: running (attempt {attempt}/{limits.attempts}"
            + (f", re-queued after {preemptions} preemption(s))" if preemptions else ")"))
        os.environ[PROGRESS_FILE_ENV] = str(tracker.stage_started(stage.name, attempt))
        started = time.perf_counter()
        try:
            try:
                _execute(config, pm, executor, stage, params, notebook, sigterm, marker)
            finally:
                for name in (CODE_RECORD_ENV, PROGRESS_FILE_ENV, PREEMPTION_MARKER_ENV):
                    os.environ.pop(name, None)
            missing = [o for o in stage.outputs if not (config.root / o).exists()]
            if missing:
                raise StageFailed(stage.name, f"did not write its declared output(s) {missing}", notebook)
        except StageFailed as exc:
            seconds = round(time.perf_counter() - started, 2)
            preempted = _preemption(sigterm, marker)
            if preempted is not None:
                preemptions += 1
                requeue = not sigterm.requested and preemptions <= limits.preemptions
                payload = {"stage": stage.name, "attempt": attempt, "preemptions": preemptions,
                           "requeued": requeue, "by": "lab run" if sigterm.requested else "the stage",
                           "checkpoint": preempted.get("checkpoint"), "resume_epoch": preempted.get("resume_epoch"),
                           "notebook": notebook}
                registry.append_event(STAGE_PREEMPTED, run_id, payload)
                events.emit(pm, STAGE_PREEMPTED, run_id=run_id, **payload)
                why = f"preempted by SIGTERM ({exc.summary})"
                tracker.stage_ended(stage.name, "failed", seconds, why)
                if sigterm.requested:
                    return StageOutcome(stage.name, "preempted", seconds, attempt, notebook, why, preemptions)
                if requeue:
                    resume = (f"it resumes from {Path(preempted['checkpoint']).name}"
                              if preempted.get("checkpoint") else "nothing was checkpointed yet")
                    log(f"    {stage.name} preempted; re-queued ({preemptions}/{limits.preemptions}), {resume}")
                    continue
                exc = StageFailed(stage.name, f"preempted {preemptions} time(s), more than [tool.lab.pipeline] "
                                  f"max_preemptions = {limits.preemptions}; raise it, or find what sends SIGTERM",
                                  notebook)
                attempt = limits.attempts  # preempted past the limit: no attempt left
            last_error = exc.summary
            registry.record_stage(run_id, stage.name, status="failed", attempt=attempt, cache_key=key,
                                  output_notebook=notebook, error=exc.summary)
            events.emit(pm, events.STAGE_FAILED, run_id=run_id, stage=stage.name, attempt=attempt,
                        error=exc.summary, notebook=notebook)
            if preempted is None:
                tracker.stage_ended(stage.name, "failed", seconds, exc.summary)
            log(f"    {stage.name} failed: {exc.summary}")
            attempt += 1
            continue
        seconds = round(time.perf_counter() - started, 2)
        tracker.stage_ended(stage.name, "finished", seconds)
        outputs = {"inputs": inputs, "seconds": seconds}
        if preemptions:
            outputs["preemptions"] = preemptions
        if code_record.exists():
            # Key the finished stage by the code it really imported, so an edit elsewhere
            # in the platform (the server, say) does not rerun it.
            outputs["code_files"] = json.loads(code_record.read_text())
            key, _ = cache_key(config, registry, stage, params, {}, outputs["code_files"])
        registry.record_stage(run_id, stage.name, status="finished", attempt=attempt, cache_key=key,
                              output_notebook=notebook, outputs=outputs,
                              output_digests=output_digests(config, stage))
        events.emit(pm, events.STAGE_FINISHED, run_id=run_id, stage=stage.name, seconds=seconds,
                    notebook=notebook)
        log(f"    {stage.name} finished in {seconds:.1f} s")
        return StageOutcome(stage.name, "finished", seconds, attempt, notebook, preemptions=preemptions)
    return StageOutcome(stage.name, "failed", 0.0, limits.attempts, notebook, last_error, preemptions)
