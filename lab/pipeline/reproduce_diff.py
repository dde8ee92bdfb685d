"""The second half of ``lab reproduce``'s comparison: the differences it can name between
the run that made a version and its re-run, and the sentence that explains the verdict.

A difference is a dict: ``kind`` (data, params, notebook, code, lock, environment,
hardware, seeds, registry), ``stage`` (None for the whole run), ``what``, ``recorded``,
``now``, ``applied`` (True: the re-run saw it, so it may explain a changed result; False:
noted only, e.g. a parameter today's config would set otherwise while the re-run used the
recorded one; None: cannot tell, e.g. a key the run did not record) and ``detail``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import ConfigError
from lab.pipeline.digest import PROJECT_PREFIX, _code_base, code_digest, path_digest
from lab.pipeline.runner import RUNTIME_PARAMS, stage_params
from lab.pipeline.stage import Stage

if TYPE_CHECKING:  # pragma: no cover
    from lab.pipeline.reproduce import Report, StageResult
    from lab.pipeline.reproduce_plan import Plan, RecordedStage

_HARDWARE_WORDS = ("hardware", "cpu", "gpu", "cuda", "memory", "driver", "machine")


def load_notebook(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def code_cells(nb: dict | None) -> list[str]:
    """A notebook's code cells as text, papermill's injected parameters cell left out."""
    cells = []
    for cell in (nb or {}).get("cells", []):
        if cell.get("cell_type") != "code" or "injected-parameters" in (cell.get("metadata") or {}).get("tags", []):
            continue
        source = cell.get("source", "")
        cells.append("".join(source) if isinstance(source, list) else source)
    return cells


def hypothetical_key(config, stage: Stage, params: dict, inputs: dict, code_files: list[str] | None) -> str:
    """The cache key ``lab.pipeline.runner.cache_key`` gives for these parameters and input
    digests with today's notebook and code: equal to a recorded key exactly when the
    notebook file and the code the stage imported are unchanged since that record."""
    material = {
        "notebook": path_digest(config.root / stage.notebook),
        "params": {k: v for k, v in params.items() if k not in RUNTIME_PARAMS},
        "inputs": inputs,
        "code": code_digest(code_files, config.root),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def changed_since(root: Path, commit: str | None, code_files: list[str]) -> list[str] | None:
    """Which of a stage's code files (``project:`` ones relative to ``root``, the others to
    the platform's folder) differ between ``commit`` and the working tree, by git; None when
    git cannot say (no commit recorded, not a checkout, the commit is unknown here)."""
    if not commit:
        return None
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=False)
        if top.returncode != 0:
            return None
        base = Path(top.stdout.strip())
        names = subprocess.run(["git", "diff", "--name-only", commit, "--"], cwd=base, capture_output=True,
                               text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if names.returncode != 0:
        return None
    changed = set(names.stdout.split())
    out = []
    for rel in code_files:
        path = (root / rel[len(PROJECT_PREFIX):]) if rel.startswith(PROJECT_PREFIX) else _code_base() / rel
        try:
            if path.resolve().relative_to(base.resolve()).as_posix() in changed:
                out.append(rel)
        except ValueError:
            continue
    return out


def modified_after(root: Path, code_files: list[str], at: str) -> list[str]:
    """The code files (as ``changed_since`` names them) whose file time is after ``at`` (ISO
    8601): a lead where git cannot compare, since a file can be written with the same bytes."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return []
    out = []
    for rel in code_files:
        path = (root / rel[len(PROJECT_PREFIX):]) if rel.startswith(PROJECT_PREFIX) else _code_base() / rel
        try:
            if path.stat().st_mtime > moment:
                out.append(rel)
        except OSError:  # gone, or never a file (a module object with a made-up __file__): cannot tell
            continue
    return out


def is_hardware(key: str) -> bool:
    """Whether an environment key (``hardware.cpu_model``, ``platform``) describes the machine."""
    return any(word in key.lower() for word in _HARDWARE_WORDS)


def _difference(kind: str, stage: str | None, what: str, recorded: Any, now: Any, applied: bool | None,
                detail: str = "") -> dict:
    return {"kind": kind, "stage": stage, "what": what, "recorded": recorded, "now": now, "applied": applied,
            "detail": detail}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON holds them (a tuple is a list, a date its text)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}{key}."))
    return out


def differences(config, scratch, plan: Plan, results: list[StageResult], now: dict,
                again_run: dict | None) -> list[dict]:
    """Every difference that can be named between the recorded run and the re-run: the
    run's provenance (code, lock file, environment, hardware) against today's (``now``, the
    reproduce run's own), each stage's parameters, inputs, notebook and code, and the
    trained run's seeds against the re-run's (``again_run``)."""
    then = plan.trained_by or plan.pipeline_run
    code_files = sorted({f for s in plan.stages for f in ((s.record or {}).get("outputs") or {}).get("code_files") or []})
    out = _provenance(config, then, now, code_files)
    by_name = {r.name: r for r in results}
    written: set[str] = set()
    for recorded in plan.stages:
        result = by_name.get(recorded.stage.name)
        out.extend(_stage_differences(config, scratch, recorded, result, written, then.get("git_commit")))
        written.update(recorded.stage.outputs)
    if plan.trained_by is not None and again_run is not None and not _same(plan.trained_by["seeds"], again_run["seeds"]):
        out.append(_difference("seeds", None, "the trained run's seeds", plan.trained_by["seeds"], again_run["seeds"],
                               True))
    return _merged(out)


def _merged(found: list[dict]) -> list[dict]:
    """One difference for the stages that share it (the same code change seen by several)."""
    out: list[dict] = []
    for d in found:
        twin = next((o for o in out if o["stage"] and d["stage"] and all(
            o[k] == d[k] for k in ("kind", "what", "recorded", "now", "applied", "detail"))), None)
        if twin is None:
            out.append(dict(d))
        else:
            twin["stage"] = f"{twin['stage']}, {d['stage']}"
    return out


def _provenance(config, then: dict, now: dict, code_files: list[str]) -> list[dict]:
    out = []
    commit, current = then.get("git_commit"), now.get("git_commit")
    if commit != current:
        changed = changed_since(config.root, commit, code_files)
        detail = ("git cannot compare them here" if changed is None else
                  f"code the stages imported that changed: {', '.join(changed)}" if changed else
                  "none of the code files the stages imported changed")
        out.append(_difference("code", None, "git commit", commit, current, bool(changed) or changed is None, detail))
    if then.get("git_dirty"):
        out.append(_difference("code", None, "the version was made from uncommitted changes", "dirty",
                               "dirty" if now.get("git_dirty") else "clean", None,
                               "the recorded commit alone does not say which code ran"))
    if (then.get("lock_file"), then.get("lock_hash")) != (now.get("lock_file"), now.get("lock_hash")):
        out.append(_difference("lock", None, f"lock file {now.get('lock_file') or then.get('lock_file')}",
                               then.get("lock_hash"), now.get("lock_hash"), True,
                               "" if then.get("lock_file") == now.get("lock_file") else
                               f"recorded {then.get('lock_file')}, now {now.get('lock_file')}"))
    env_then, env_now = then.get("env") or {}, now.get("env") or {}
    for section in sorted(set(env_then) | set(env_now)):
        if section not in env_then or section not in env_now:  # e.g. hardware, recorded only by newer runs
            out.append(_difference("hardware" if is_hardware(section) else "environment", None, section,
                                   env_then.get(section), env_now.get(section), None,
                                   "not recorded when the version was made" if section not in env_then
                                   else "not recorded now"))
            continue
        before, after = _flat(env_then[section], f"{section}."), _flat(env_now[section], f"{section}.")
        for key in sorted(set(before) | set(after)):
            if not _same(before.get(key), after.get(key)):
                out.append(_difference("hardware" if is_hardware(key) else "environment", None, key,
                                       before.get(key), after.get(key), True))
    return out


def _stage_differences(config, scratch, recorded: RecordedStage, result: StageResult | None, written: set[str],
                       commit: str | None) -> list[dict]:
    stage = recorded.stage.name
    then, again = recorded.record, result.record if result else None
    out = []
    if then is None:
        return [_difference("params", stage, "no record of this stage before the version was made", None,
                            "ran with today's parameters and inputs", True, recorded.note)]
    current = _current_params(scratch, recorded)
    if recorded.params is None:
        out.append(_difference("params", stage, "its parameters", None, current, None,
                               f"{recorded.note}; the re-run used today's"))
    elif current is not None:
        used_current = result is not None and result.params_from == "current"
        for key in sorted(set(recorded.params) | set(current)):
            if not _same(recorded.params.get(key), current.get(key)):
                out.append(_difference(
                    "params", stage, f"parameter {key}", recorded.params.get(key), current.get(key), used_current,
                    "the re-run used today's value" if used_current else
                    "today's config and pipeline.toml give this; the re-run used the recorded value"))
    if again is None:
        return out
    if again["cache_key"] == then["cache_key"]:
        return out  # same notebook, parameters, inputs and code: nothing more to name
    inputs_then = (then.get("outputs") or {}).get("inputs") or {}
    inputs_now = (again.get("outputs") or {}).get("inputs") or {}
    for ref in sorted(set(inputs_then) | set(inputs_now)):
        if inputs_then.get(ref) == inputs_now.get(ref) or ref in written:
            continue  # an earlier stage's output: that stage's differing outputs say so
        kind = "registry" if ref.startswith("alias:") else "data"
        out.append(_difference(kind, stage, f"input {ref}", inputs_then.get(ref), inputs_now.get(ref), True,
                               "the re-run's registry is empty: aliases point nowhere" if kind == "registry" else ""))
    cells_then = code_cells(load_notebook(recorded.notebook)) if recorded.notebook else None
    cells_now = code_cells(load_notebook(scratch.root / recorded.stage.notebook))
    notebook_changed = cells_then is not None and cells_then != cells_now
    if notebook_changed:
        changed = [i + 1 for i in range(max(len(cells_then), len(cells_now)))
                   if (cells_then[i:i + 1] or [None]) != (cells_now[i:i + 1] or [None])]
        out.append(_difference("notebook", stage, recorded.stage.notebook, f"{len(cells_then)} code cells",
                               f"{len(cells_now)} code cells", True,
                               f"code cell(s) {', '.join(map(str, changed))} differ from the executed notebook "
                               f"{recorded.notebook}"))
    files_then = (then.get("outputs") or {}).get("code_files")
    files_now = (again.get("outputs") or {}).get("code_files")
    params = recorded.params if recorded.params is not None else current
    if params is not None and not notebook_changed and hypothetical_key(
            scratch, recorded.stage,
            params, inputs_then, files_then) != then["cache_key"]:
        changed = changed_since(config.root, commit, files_then or [])
        touched = modified_after(config.root, files_then or [], then["at"]) if changed is None else []
        extra = sorted(set(files_now or []) ^ set(files_then or []))
        detail = "; ".join(filter(None, [
            f"changed since commit {commit[:12]}: {', '.join(changed)}" if changed and commit else "",
            f"written after the stage ran (file times; git cannot say): {', '.join(touched)}" if touched else "",
            f"imported now or then only: {', '.join(extra)}" if extra else "",
            "" if recorded.notebook else "the executed notebook is gone, so the notebook file may be what changed",
        ])) or "the notebook file's bytes (not its code cells) or the code it imported changed; git cannot say which"
        out.append(_difference("code", stage, "the code the stage imported", None, None, True, detail))
    return out


def _current_params(scratch, recorded: RecordedStage) -> dict | None:
    """The parameters today's config and pipeline.toml give the stage (runtime ones left out)."""
    try:
        params = stage_params(scratch, recorded.stage, scratch.runs_path)
    except ConfigError:
        return None
    return {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}


def describe(difference: dict) -> str:
    """One line for a difference: ``kind, stage: what (recorded -> now): detail``."""
    where = f"{difference['kind']}" + (f", {difference['stage']}" if difference.get("stage") else "")
    values = ""
    if difference.get("recorded") is not None or difference.get("now") is not None:
        values = f" ({_short(difference.get('recorded'))} -> {_short(difference.get('now'))})"
    detail = f": {difference['detail']}" if difference.get("detail") else ""
    return f"{where}: {difference['what']}{values}{detail}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    return text if len(text) <= 60 else text[:57] + "..."


def explain(report: Report, results: list[StageResult]) -> str:
    """The verdict in a sentence or two: reproduced (and what differed without mattering),
    or not, with the stages whose outputs moved and the differences that can explain it;
    when none can be named, the stages that moved with nothing changed are not deterministic."""
    applied = [d for d in report.differences if d["applied"]]
    if report.reproduced:
        verdict = "reproduced exactly" if report.tolerance == 0 else f"reproduced within {report.tolerance:g}"
        if applied:
            kinds = sorted({d["kind"] for d in applied})
            verdict += (f"; {len(applied)} difference(s) from the recorded run ({', '.join(kinds)}) did not change "
                        "the result")
        return verdict
    parts = []
    failed = next((r for r in results if r.status == "failed"), None)
    if failed is not None:
        parts.append(f"stage {failed.name} failed in the re-run: {failed.error} (its notebook: {failed.notebook})")
    moved = [s for s in report.stages if s.get("same_outputs") is False]
    if moved:  # a lead, not a proof: a file that holds a run id or a time differs on every run
        parts.append("stages whose outputs differ: " + ", ".join(
            f"{s['stage']} ({', '.join(s['differing_outputs'])})" for s in moved))
    weights = [a for a in report.artifacts if a["key"] == "model_digest" and not a["same"]]
    if weights and all(m["within"] for m in report.metrics):
        parts.append("the metrics match but the model's files do not, and at tolerance 0 both must")
    if applied:
        parts.append("differences that can explain it: " + "; ".join(map(describe, applied)))
    elif failed is None and any(s["same_key"] for s in moved):
        same = ", ".join(s["stage"] for s in moved if s["same_key"])
        parts.append(f"no recorded input, parameter, code or environment difference can be named, and {same} ran "
                     "with the same notebook, parameters, inputs and code as recorded, so a stage is not deterministic "
                     "here (unseeded randomness, thread scheduling, the clock)")
    elif failed is None:
        parts.append("no difference in what was recorded can be named")
    return "not reproduced: " + "; ".join(parts)
