"""Live progress of pipeline stages: reported inside a stage, shown by ``lab run``, read by anyone.

Three parts share one set of files under a run's folder:

- **In a stage** (the notebook's kernel): ``report(done, total, unit, what)`` appends one
  JSON line to ``runs/<run>/progress/<stage>.jsonl``, the file the runner names in the
  ``LAB_PROGRESS_FILE`` environment variable. Outside ``lab run`` the variable is unset
  and ``report`` returns at once. Lines are rate-limited (one per ``MIN_INTERVAL_S`` at
  most, besides the final one), so a loop may call it for every row.
- **In the runner** (``RunProgress``): writes the run's state
  (``runs/<run>/progress/run.json``: each stage pending, running, finished, skipped or
  failed) and a pointer to the newest run (``runs/.lab-progress.json``), and tails the
  running stage's file from a thread to draw a bar per stage with ``rich`` on a terminal,
  or a few plain lines otherwise (CI logs, tests).
- **Anywhere else** (the Jupyter server): ``read_progress(config)`` reads those files and
  answers the current or last run's stages and their latest counts.

The kernel side imports only the standard library; ``rich`` loads only when a terminal
shows bars.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from lab.atomic import atomic_write_text, pid_alive
from lab.errors import LabError

PROGRESS_FILE_ENV = "LAB_PROGRESS_FILE"
"""Set by the runner for each stage it runs: the JSON-lines file ``report`` appends to."""
MIN_INTERVAL_S = 0.1
"""Least time between two written lines of one stage (seconds); the final one is always written."""
PROGRESS_DIR = "progress"
STATE_FILE = "run.json"
POINTER_FILE = ".lab-progress.json"
"""Under the runs folder: which run's state ``read_progress`` reads."""
PLAIN_FIRST_S = 10.0
"""Plain output: the first mid-stage line after this many seconds, then ever more sparsely."""
STATUSES = ("pending", "running", "finished", "skipped", "failed")

T = TypeVar("T")


# -- in a stage ------------------------------------------------------------------------------

class _Reporter:
    """The kernel's one writer: the open file, when it last wrote, the call it held back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.path: str | None = None
        self.fh = None
        self.last_write = -math.inf  # time.monotonic() of the last written line
        self.last_unit: str | None = None
        self.pending: tuple | None = None  # (done, total, unit, what): held back by the rate limit
        self.atexit = False
        self.broken = False
        self.raw_env: Any = None  # the environment's raw value last decoded, and its text
        self.env_path: str | None = None
        self.last_final: tuple | None = None

    def write(self, path: str, done: Any, total: Any, unit: str, what: str, now: float) -> None:
        with self.lock:
            record = _record(path, done, total, unit, what)
            if self.broken:
                return
            try:
                if path != self.path:
                    self._close()
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    self.fh, self.path = open(path, "a", encoding="utf-8"), path
                    if not self.atexit:
                        atexit.register(flush)
                        self.atexit = True
                self.fh.write(json.dumps(record) + "\n")
                self.fh.flush()
            except OSError as exc:  # progress must never fail a stage
                self.broken = True
                print(f"lab: progress reports stop: cannot write {path}: {exc}", file=sys.stderr)
                return
            self.last_write, self.last_unit, self.pending = now, unit, None

    def _close(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
        self.fh, self.path, self.last_unit, self.pending = None, None, None, None
        self.last_write = -math.inf


_reporter = _Reporter()

# ``os.environ.get`` costs about a microsecond (several under load): too much per row. The
# mapping's own dict (CPython's ``os._Environ._data``, which every ``os.environ[...] =``
# updates) answers the same in tens of nanoseconds; elsewhere, the public call.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(PROGRESS_FILE_ENV) if hasattr(os.environ, "encodekey") else None
_FAST_ENV = type(_ENV_DATA) is dict and _ENV_KEY is not None
_monotonic = time.monotonic


def _progress_file() -> str | None:
    """The value of ``PROGRESS_FILE_ENV`` now (None or empty: not in a pipeline run)."""
    if _FAST_ENV:
        raw = _ENV_DATA.get(_ENV_KEY)  # type: ignore[union-attr]
        if raw is None:
            return None
        r = _reporter
        if raw is not r.raw_env:  # decode once per value
            r.raw_env, r.env_path = raw, os.environ.decodevalue(raw) or None
        return r.env_path
    return os.environ.get(PROGRESS_FILE_ENV) or None


def _number(value: Any, name: str) -> int | float | None:
    if value is None and name == "total":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__") \
            and not hasattr(value, "__float__"):
        raise LabError(f"progress.report({name}={value!r}): {name} must be a number of units "
                       f"(rows, epochs, ...), e.g. report(1000, total=5000, unit='rows')")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise LabError(f"progress.report({name}={value!r}): {name} must be a finite number, 0 or more")
    return int(number) if number.is_integer() else number


def _record(path: str, done: Any, total: Any, unit: str, what: str) -> dict:
    return {"stage": Path(path).stem, "done": _number(done, "done"), "total": _number(total, "total"),
            "unit": str(unit), "what": str(what), "time": round(time.time(), 3)}


def report(done: Any, total: Any = None, unit: str = "rows", what: str = "") -> None:
    """Say how far the running stage has got: ``done`` of ``total`` (None: unknown) ``unit``
    (rows, epochs, trials, ...), ``what`` a few words on the work (e.g. "rows scored").

    Appends a JSON line to the stage's progress file when run by ``lab run``; a no-op
    otherwise (a notebook opened by hand, a test). Cheap enough for every row: at most one
    line per ``MIN_INTERVAL_S``; a call with ``done >= total`` or a new ``unit`` is
    written at once, and a held-back call is written by ``flush()`` (the stage context's
    close and the interpreter's exit call it). Raises ``LabError`` for a non-number.
    """
    r = _reporter
    if _FAST_ENV:  # _progress_file() inlined: this line runs for every row of a loop
        raw = _ENV_DATA.get(_ENV_KEY)  # type: ignore[union-attr]
        if raw is None:
            return
        path = r.env_path if raw is r.raw_env else _progress_file()
    else:
        path = _progress_file()
    if path is None:
        return
    now = _monotonic()
    try:
        final = total is not None and done >= total
    except TypeError:  # not numbers: the write below says so
        final = True
    if not final and now - r.last_write < MIN_INTERVAL_S and unit == r.last_unit and path == r.path:
        r.pending = (done, total, unit, what)
        return
    if final and r.last_final == (done, total, unit, what) and path == r.path:
        return  # the same final count again (a loop that ends by repeating it)
    r.write(path, done, total, unit, what, now)
    if final:
        r.last_final = (done, total, unit, what)


def flush() -> None:
    """Write the last report the rate limit held back, if any (the true final count)."""
    r = _reporter
    pending, path = r.pending, r.path
    if pending is not None and path and _progress_file() == path:
        r.write(path, *pending, time.monotonic())


def track(iterable: Iterable[T], total: int | None = None, unit: str = "items", what: str = "") -> Iterator[T]:
    """Yield from ``iterable``, reporting each item done (``total`` defaults to its length
    when it has one); the final count is written when the loop ends."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    done = 0
    report(0, total, unit, what)
    for item in iterable:
        yield item
        done += 1
        report(done, total, unit, what)
    flush()


class SweepProgress:
    """Trials and epochs of a sweep as one stage's progress: done/total counts completed
    trials, ``what`` says which trial and epoch is training.

    A framework-neutral epoch observer (``lab_epoch_end``, the flavor calls it after each
    epoch; pass it in the sweep's ``callbacks``) and a trial hook (``trial_finished``, call
    it from the sweep's ``on_trial``)."""

    def __init__(self, n_trials: int, max_epochs: int):
        self.n_trials, self.max_epochs = n_trials, max_epochs
        self.completed = self.pruned = 0

    def _what(self, detail: str) -> str:
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        return f"{detail}{pruned}"

    def start(self) -> None:
        report(0, self.n_trials, "trials", "sweep starting")

    def lab_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        trial = self.completed + self.pruned + 1
        report(self.completed, self.n_trials, "trials",
               self._what(f"trial {trial}: epoch {epoch + 1}/{self.max_epochs}"))

    def trial_finished(self, record: dict) -> None:
        if record.get("state") == "COMPLETE":
            self.completed += 1
        else:
            self.pruned += 1
        value = record.get("value")
        shown = f" at {value:.4f}" if isinstance(value, float) else ""
        trial = self.completed + self.pruned  # counted from 1, as lab_epoch_end counts it
        report(min(self.completed, self.n_trials), self.n_trials, "trials",
               self._what(f"trial {trial} {str(record.get('state', '')).lower()}{shown}"))


# -- reading the files -----------------------------------------------------------------------

def stage_file(run_dir: Path, stage: str) -> Path:
    """``runs/<run>/progress/<stage>.jsonl``: where the stage's kernel writes its reports."""
    return Path(run_dir) / PROGRESS_DIR / f"{stage}.jsonl"


def latest_report(path: Path, tail_bytes: int = 8192) -> dict | None:
    """The newest complete line of a progress file, or None (no file, nothing reported)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            chunk = fh.read()
    except OSError:
        return None
    for line in reversed(chunk.split(b"\n")[1:] if size > tail_bytes else chunk.split(b"\n")):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:  # a line being written, or cut by the tail
                continue
            if isinstance(record, dict):
                return record
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_progress(config) -> dict:
    """The current or last pipeline run's stages, from the files ``lab run`` writes.

    Returns ``{"run_id": str | None, "status": "running|finished|failed" | None,
    "stages": [{"name", "status", "done", "total", "unit", "what", "seconds", "attempt",
    "error"}]}``; ``status`` of a stage is one of ``STATUSES``, ``seconds`` its wall time so
    far (running) or in all (ended), ``done``/``total``/``unit``/``what`` its latest report
    (None when it reported nothing). A run whose process died is ``failed``, and so is the
    stage it was running. Safe from any process, while the run goes on.
    """
    runs = Path(config.runs_path)
    pointer = _read_json(runs / POINTER_FILE)
    state = _read_json(runs / str(pointer["run_id"]) / PROGRESS_DIR / STATE_FILE) \
        if pointer and pointer.get("run_id") else None
    if state is None:
        return {"run_id": None, "status": None, "stages": []}
    run_dir = runs / state["run_id"]
    dead = state.get("status") == "running" and not pid_alive(int(state.get("pid") or 0))
    now = time.time()
    stages = []
    for s in state.get("stages", []):
        status = s.get("status", "pending")
        last = s.get("final") or (latest_report(stage_file(run_dir, s["name"])) if status != "skipped" else None)
        seconds = s.get("seconds")
        error = s.get("error")
        if status == "running":
            seconds = round(now - s["started"], 2) if s.get("started") else None
            if dead:
                status, error = "failed", "the `lab run` process ended while the stage ran"
        last = last or {}
        stages.append({"name": s["name"], "status": status, "done": last.get("done"), "total": last.get("total"),
                       "unit": last.get("unit"), "what": last.get("what"), "seconds": seconds,
                       "attempt": s.get("attempt"), "error": error})
    return {"run_id": state["run_id"], "status": "failed" if dead else state.get("status"),
            "started_at": state.get("started_at"), "stages": stages}


def describe(record: dict) -> str:
    """One line's worth of a report: ``1,200/5,000 rows (rows scored)``."""
    done, total = record.get("done"), record.get("total")
    count = f"{done:,}" if total is None else f"{done:,}/{total:,}"
    what = record.get("what") or ""
    return f"{count} {record.get('unit') or ''}".rstrip() + (f" ({what})" if what else "")


# -- in the runner ---------------------------------------------------------------------------

class RunProgress:
    """The runner's side for one ``lab run``: the state file and the live display.

    ``mode``: ``"auto"`` (bars on a terminal when ``log`` is ``print``, plain lines
    otherwise), ``"bars"``, ``"lines"`` or ``"off"`` (state files only). Use as a
    context manager around the run; call ``stage_started`` / ``stage_ended`` /
    ``stage_skipped`` as stages go.
    """

    def __init__(self, runs_path: Path, run_id: str, stage_names: list[str], *,
                 log: Callable[[str], None] = print, mode: str = "auto", poll_s: float | None = None):
        if mode not in ("auto", "bars", "lines", "off"):
            raise LabError(f"progress mode {mode!r}: use auto, bars, lines or off")
        self.runs_path, self.run_id, self.log = Path(runs_path), run_id, log
        self.run_dir = self.runs_path / run_id
        if mode == "auto":
            mode = "bars" if log is print and sys.stdout.isatty() else "lines"
        self.mode = mode
        self.poll_s = poll_s if poll_s is not None else (0.1 if mode == "bars" else 0.25)
        self.state = {"run_id": run_id, "pid": os.getpid(), "status": "running",
                      "started_at": time.time(), "stages": [{"name": n, "status": "pending"} for n in stage_names]}
        self._lock = threading.Lock()
        self._current: _Tail | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._display: Any = None

    def __enter__(self) -> "RunProgress":
        (self.run_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        self._save()
        atomic_write_text(self.runs_path / POINTER_FILE, json.dumps({"run_id": self.run_id}))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._display is not None:
            self._display.close()
        self.state["status"] = "finished" if exc_type is None else "failed"
        for stage in self.state["stages"]:  # interrupted inside a stage (Ctrl-C)
            if stage["status"] == "running":
                stage.update(status="failed", error=f"the run stopped: {exc_type.__name__ if exc_type else 'unknown'}",
                             seconds=round(time.time() - stage.get("started", time.time()), 2))
        self.state["ended_at"] = time.time()
        self._save()

    def _save(self) -> None:
        atomic_write_text(self.run_dir / PROGRESS_DIR / STATE_FILE, json.dumps(self.state))

    def _stage(self, name: str) -> dict:
        return next(s for s in self.state["stages"] if s["name"] == name)

    def stage_skipped(self, name: str) -> None:
        self._stage(name).update(status="skipped", seconds=0.0)
        self._save()

    def stage_started(self, name: str, attempt: int) -> Path:
        """Mark ``name`` running and return its (emptied) progress file, for ``PROGRESS_FILE_ENV``."""
        path = stage_file(self.run_dir, name)
        path.unlink(missing_ok=True)  # an earlier attempt's counts are not this one's
        self._stage(name).update(status="running", attempt=attempt, started=time.time(), error=None, final=None)
        self._save()
        if self.mode != "off":
            with self._lock:
                if self._display is None:
                    self._display = _Bars() if self.mode == "bars" else _Lines(self.log)
                self._current = _Tail(name, path)
                self._display.start(name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="lab-progress", daemon=True)
                self._thread.start()
        return path

    def stage_ended(self, name: str, status: str, seconds: float, error: str | None = None) -> None:
        """Read the stage's last report, show its final line, record its end."""
        final = latest_report(stage_file(self.run_dir, name))
        with self._lock:
            if self._current is not None and self._current.name == name:
                self._current = None
            if self._display is not None:
                self._display.end(name, final, status)
        self._stage(name).update(status=status, seconds=seconds, error=error, final=final)
        self._save()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                tail = self._current
                if tail is None:
                    continue
                record = tail.poll()
                if record is not None:
                    self._display.update(tail.name, record)


class _Tail:
    """Follows one progress file from where it was last read; answers its newest line."""

    def __init__(self, name: str, path: Path):
        self.name, self.path, self.offset, self.rest = name, path, 0, b""

    def poll(self) -> dict | None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return None
        if not data:
            return None
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()  # an unfinished line waits for its end
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return None


class _Lines:
    """Plain output: a stage's count now and then (ever more sparsely), and its final count."""

    def __init__(self, log: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.log, self.clock = log, clock
        self.started: dict[str, float] = {}
        self.next_at: dict[str, float] = {}

    def start(self, name: str) -> None:
        self.started[name] = self.clock()
        self.next_at[name] = PLAIN_FIRST_S

    def update(self, name: str, record: dict) -> None:
        now = self.clock()
        elapsed = now - self.started.get(name, now)
        if elapsed >= self.next_at.get(name, PLAIN_FIRST_S):
            # every 10 s for the first minute, then 20 % later each time: ~30 lines an hour
            self.next_at[name] = elapsed + max(PLAIN_FIRST_S, elapsed / 5)
            self.log(f"    {name}: {describe(record)}, {elapsed:.0f} s")

    def end(self, name: str, record: dict | None, status: str) -> None:
        if record is not None:
            self.log(f"    {name}: {describe(record)}" + ("" if status == "finished" else f", {status}"))

    def close(self) -> None:
        pass


class _Bars:
    """A rich bar per stage on the terminal; ``print`` still works above the bars."""

    def __init__(self, console: Any = None):
        # rich only when a terminal shows bars
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def start(self, name: str) -> None:
        if name in self.tasks:  # a retry: a fresh bar
            self.progress.remove_task(self.tasks.pop(name))
        self.tasks[name] = self.progress.add_task(name, total=None, count="")

    def update(self, name: str, record: dict) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        what = record.get("what") or ""
        self.progress.update(task, completed=record.get("done") or 0, total=record.get("total"),
                             description=f"{name}" + (f" · {what}" if what else ""),
                             count=describe({**record, "what": ""}))

    def end(self, name: str, record: dict | None, status: str) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        if record is not None:
            self.update(name, record)
            if record.get("total") is None:
                self.progress.update(task, total=record.get("done") or 1)
        else:
            self.progress.update(task, total=1, completed=1 if status == "finished" else 0)
        if status != "finished":
            self.progress.update(task, description=f"[red]{name} {status}")
        self.progress.stop_task(task)

    def close(self) -> None:
        self.progress.stop()
