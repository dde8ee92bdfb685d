"""The [tool.lab] configuration of one project folder.

A lab is a folder holding a ``pyproject.toml``. Every key has a default, so an empty
``[tool.lab]`` table (or none at all) is a working lab; ``LAB_HOME`` names the folder
when the current directory is not inside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lab.errors import ConfigError


@dataclass(frozen=True)
class PipelineConfig:
    retries: int = 1
    max_preemptions: int = 3  # re-runs of a stage preempted by SIGTERM, on top of its attempts (docs/training.md)
    stages: tuple[str, ...] = ()  # empty: every stage of notebooks/pipeline.toml, in file order


@dataclass(frozen=True)
class TrainConfig:
    train_start: str | None = None  # required by the platform's steps; a lab sets it
    delta_train: int = 7
    delta_delay: int = 7
    delta_test: int = 7
    n_trials: int = 3
    max_epochs: int = 5
    seed: int = 42
    sweep_workers: int = 1  # sweep worker processes on this machine (the train step and N-1 more)

    @property
    def train_start_date(self) -> dt.date:
        if self.train_start is None:
            raise ConfigError("set [tool.lab.train] train_start, the first day of training (e.g. \"2024-03-01\")")
        return dt.date.fromisoformat(self.train_start)


@dataclass(frozen=True)
class TrainingConfig:
    """Where the train stage trains (docs/training.md, Devices): handed to the model
    flavor's ``fit`` as given, which checks the values against its framework
    (``lightning_mlp``: Lightning's accelerators, strategies and precisions). The
    defaults are one CPU process in 32-bit floats. The train stage's parameters of the
    same names override them for one stage."""

    accelerator: str = "cpu"  # "cpu", "gpu" (= "cuda"), "mps" or "auto"
    devices: int | str | list[int] | None = None  # a count (1 when unset), -1 or "auto" (all), or GPU indices [0, 1]
    strategy: str = "auto"  # "auto" (one device: one process), "ddp" (torchrun, srun), "ddp_fork" (in a notebook)
    precision: str = "32-true"  # "32-true", "64-true", "bf16-mixed", "16-mixed" (GPU only), ...
    num_nodes: int = 1  # machines in one DDP job (each runs devices processes)

    def __post_init__(self) -> None:
        devices = 1 if self.devices is None else self.devices
        if isinstance(devices, tuple):
            devices = list(devices)
        shape_ok = (
            (isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
            or devices == "auto"
            or (isinstance(devices, list) and devices
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices))
        )
        if not shape_ok:
            raise ConfigError(f"[tool.lab.training] devices must be a count of 1 or more, -1 or \"auto\" (every "
                              f"device), or a list of GPU indices such as [0, 1]; got {self.devices!r}")
        object.__setattr__(self, "devices", devices)  # frozen: normalized once, here
        if self.num_nodes < 1:
            raise ConfigError(f"[tool.lab.training] num_nodes must be 1 or more, got {self.num_nodes}")

    def settings(self) -> dict[str, Any]:
        """The five settings by name, as the flavor's ``fit(devices=...)`` takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class GateConfig:
    metric: str | None = None  # default: the model spec's metric
    min_delta: float = 0.0
    require_ci: bool = False  # offline: the paired-bootstrap CI's lower bound of the improvement must exceed min_delta
    confidence: float = 0.95  # of that interval
    bootstrap_samples: int = 1000  # resamples of the test set for it
    require_online: str = "none"  # also needed to become champion: "shadow" (met), "experiment" (decided), "either"
    require_approval: bool = False  # a named approval (`lab approve`) before `lab promote`
    separate_approver: bool = False  # ... by someone other than the promoter


@dataclass(frozen=True)
class ExperimentsConfig:
    alpha: float = 0.05
    power: float = 0.8
    srm_p: float = 0.001
    guardrails: tuple[str, ...] = ("latency_ms", "error_rate")
    guardrail_alpha: float = 0.01


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    flag_refresh_s: float = 1.0
    guardrail_interval_s: float = 30.0
    allow_empty_store: bool = False  # ready even if a view was never materialized (scores on defaults)
    max_concurrency: int = 0  # requests scoring at once on a thread pool; 0: inline on the event loop
    max_queue: int = 64  # requests waiting for a scoring slot; one more gets 503 + Retry-After
    latency_budget_ms: float = 0.0  # per request: past it, the model's fallback (flagged); 0: none
    store_timeout_ms: float = 0.0  # the online store reads of one request; 0: only the budget bounds them
    model_timeout_ms: float = 0.0  # the model's predict for one request; 0: only the budget bounds it
    breaker_failures: int = 5  # consecutive failures/timeouts of the store or the model that open its breaker; 0: none
    breaker_open_s: float = 5.0  # how long an open breaker sends requests to the fallback before a probe
    ledger_sync: bool = False  # answer a prediction only once its ledger row is committed (survives kill -9)
    batch_fallback: bool = False  # a request that cannot be scored gets its entity's latest batch prediction
    batch_fallback_entity: str = ""  # the request field keying that lookup; "": the request's first entity
    predict_auth: str = "open"  # "open": anyone who reaches /predict may call it; "key": an API key with scope predict
    max_body_bytes: int = 16384  # the largest request body any route accepts; one more byte gets a 413
    keys: str = "keys.db"  # the API key file (lab keys ...), relative to the project root
    max_model_memory_mb: float = 0.0  # lab serve --model A --model B: loaded models' footprints at most this; 0: unbounded
    device: str = "cpu"  # where served models score: "cpu", "cuda" (= "cuda:0") or "cuda:N" (ModelFlavor.place)
    memory_fraction: float = 0.0  # on a CUDA device: the process's cap, a fraction of the device's memory; 0: no cap
    models: Mapping[str, Any] = field(default_factory=dict)
    """``[tool.lab.serve.models.<name>]``: ``device`` and ``memory_fraction`` for one model,
    overriding the two above for it; read through ``placement``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device, "tool.lab.serve"))
        check_fraction(self.memory_fraction, "tool.lab.serve")
        if not isinstance(self.models, Mapping):
            raise ConfigError(f"[tool.lab.serve] models must be a table of [tool.lab.serve.models.<name>] tables, "
                              f"got {self.models!r}")
        models = {}
        for name, table in self.models.items():
            where = f"tool.lab.serve.models.{name}"
            if not isinstance(table, Mapping):
                raise ConfigError(f"[{where}] must be a table (device = ..., memory_fraction = ...), got {table!r}")
            unknown = sorted(set(table) - {"device", "memory_fraction"})
            if unknown:
                raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{where}]; known keys are: device, "
                                  "memory_fraction")
            entry = {}
            if "device" in table:
                entry["device"] = check_device(table["device"], where)
            if "memory_fraction" in table:
                entry["memory_fraction"] = check_fraction(table["memory_fraction"], where)
            models[str(name)] = entry
        object.__setattr__(self, "models", models)
        if self.predict_auth not in PREDICT_AUTH:
            raise ConfigError(f"[tool.lab.serve] predict_auth must be one of {', '.join(map(repr, PREDICT_AUTH))}, "
                              f"got {self.predict_auth!r}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"[tool.lab.serve] max_body_bytes must be 1 or more, got {self.max_body_bytes}")
        if not math.isfinite(self.max_model_memory_mb) or self.max_model_memory_mb < 0:
            raise ConfigError("[tool.lab.serve] max_model_memory_mb must be 0 (unbounded) or a number of megabytes "
                              f"above 0, got {self.max_model_memory_mb}")


    def placement(self, model: str) -> tuple[str, float]:
        """``(device, memory_fraction)`` for serving ``model``: its
        ``[tool.lab.serve.models.<model>]`` keys where set, else ``[tool.lab.serve]``'s.
        ``device`` is ``"cpu"`` or ``"cuda:N"``; ``memory_fraction`` in [0, 1], 0: no cap."""
        own = self.models.get(model, {})
        return own.get("device", self.device), float(own.get("memory_fraction", self.memory_fraction))


def check_device(value: Any, where: str) -> str:
    """A serving device as ``"cpu"`` or ``"cuda:N"`` (``"cuda"`` is ``"cuda:0"``);
    ``ConfigError`` naming ``[where] device`` otherwise."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text == "cuda":
        return "cuda:0"
    if text == "cpu" or (text is not None and text.startswith("cuda:") and text[5:].isdigit()):
        return text if text == "cpu" else f"cuda:{int(text[5:])}"
    raise ConfigError(f'[{where}] device must be "cpu", "cuda" or "cuda:N" (N a device index, 0 first), '
                      f"got {value!r}")


def check_fraction(value: Any, where: str) -> float:
    """A memory fraction in [0, 1]; ``ConfigError`` naming ``[where] memory_fraction`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"[{where}] memory_fraction must be a number from 0 (no cap) to 1 (the whole "
                          f"device), got {value!r}")
    return float(value)


PREDICT_AUTH = ("open", "key")
"""Who may call /predict (``[tool.lab.serve] predict_auth``; see docs/serving.md, Security)."""


@dataclass(frozen=True)
class StreamConfig:
    stream: str = "events"  # the stream `lab stream run` consumes and `lab stream publish` appends to
    group: str = "scorer"  # the consumer group; its committed position is kept per stream
    model: str | None = None  # MODEL@ALIAS (or MODEL@VERSION) to score with; default: model_name@champion
    batch_size: int = 64  # events in flight at most: read, scored, sent to the sinks, committed, then the next
    wait_s: float = 1.0  # how long an idle consumer waits for new events per read
    refresh_s: float = 1.0  # how often the consumer looks the model's alias up again
    on_model_change: str = "forward"  # "forward": new events get the new version; "rescore": also the backlog since the alias moved
    sinks: tuple[str, ...] = ()  # side-effect sinks, "module:function", each called with every prediction and its key

    def __post_init__(self) -> None:
        if self.on_model_change not in MODEL_CHANGE_POLICIES:
            raise ConfigError(f"[tool.lab.stream] on_model_change must be one of "
                              f"{', '.join(map(repr, MODEL_CHANGE_POLICIES))}, got {self.on_model_change!r}")
        if self.batch_size < 1:
            raise ConfigError(f"[tool.lab.stream] batch_size must be 1 or more, got {self.batch_size}")
        if self.wait_s < 0 or self.refresh_s <= 0:
            raise ConfigError("[tool.lab.stream] wait_s must be 0 or more and refresh_s more than 0")


MODEL_CHANGE_POLICIES = ("forward", "rescore")
"""What a stream consumer does when its model's alias moves (see docs/streaming.md)."""


@dataclass(frozen=True)
class SkewConfig:
    tolerance: float = 1e-6  # a logged and a recomputed value match when within this (absolute or relative)
    max_mismatch_share: float = 0.01  # the skew gate fails a feature whose share of mismatched rows is above this
    max_psi: float = 0.2  # ... or whose PSI (logged against recomputed) is above this
    psi_bins: int = 10  # quantile bins of the recomputed values for the PSI (fewer distinct values: one bin each)

    def __post_init__(self) -> None:
        if self.tolerance < 0 or not 0 <= self.max_mismatch_share <= 1 or self.max_psi < 0:
            raise ConfigError("[tool.lab.skew] tolerance and max_psi must be 0 or more, and max_mismatch_share "
                              f"between 0 and 1; got {self.tolerance}, {self.max_psi}, {self.max_mismatch_share}")
        if self.psi_bins < 2:
            raise ConfigError(f"[tool.lab.skew] psi_bins must be 2 or more, got {self.psi_bins}")


@dataclass(frozen=True)
class ResourcesConfig:
    """The model server's memory watch (``lab.monitoring.resources``; docs/monitoring.md)."""

    sample_interval_s: float = 2.0  # the server samples its RSS (and CUDA memory) this often; 0: no sampling
    window: int = 300  # samples kept and judged, the latest (10 minutes at 2 s)
    min_samples: int = 30  # samples past the warm-up before any verdict (1 minute at 2 s)
    warmup_s: float = 60.0  # seconds after the server is ready that are never judged (allocators and caches grow)
    warmup_requests: int = 1000  # ... nor before this many requests are answered
    alpha: float = 0.01  # an upward trend when the Mann-Kendall test's one-sided p is below this
    min_bytes_per_request: float = 4096.0  # ... and it grows at least this much per request
    min_mib_per_hour: float = 64.0  # ... or at least this much per hour
    min_growth_mib: float = 8.0  # ... and at least this much over the judged samples (64 MiB/hour: 10.7 in 10 min)
    restart_on_leak: bool = False  # a flagged server drains and restarts (lab serve runs it under a supervisor)
    drain_timeout_s: float = 30.0  # how long a draining server waits for its requests in flight

    def __post_init__(self) -> None:
        numbers = (self.sample_interval_s, self.warmup_s, self.min_bytes_per_request, self.min_mib_per_hour,
                   self.min_growth_mib, self.drain_timeout_s)
        if any(not math.isfinite(v) or v < 0 for v in numbers) or self.warmup_requests < 0:
            raise ConfigError("[tool.lab.resources] sample_interval_s, warmup_s, warmup_requests, "
                              "min_bytes_per_request, min_mib_per_hour, min_growth_mib and drain_timeout_s must be "
                              "0 or more")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"[tool.lab.resources] alpha must be between 0 and 1, got {self.alpha}")
        if self.min_samples < 4 or self.window < self.min_samples:
            raise ConfigError(f"[tool.lab.resources] min_samples must be 4 or more and window at least min_samples, "
                              f"got min_samples = {self.min_samples}, window = {self.window}")


@dataclass(frozen=True)
class ValidationConfig:
    """Data validation before training (``lab.monitoring.validation``; docs/monitoring.md)."""

    enabled: bool = True  # the train step checks the lab's lab_expectations first; false: it trains on anything
    skip: tuple[str, ...] = ()  # check kinds left out, e.g. ["drift", "label_rate"]
    max_drift: float = 0.0  # above 0: replaces every declared drift threshold; 0: as declared
    reference_rows: int = 20000  # rows kept of a passed training set as the next one's drift reference; 0: all

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drift) or self.max_drift < 0 or self.reference_rows < 0:
            raise ConfigError("[tool.lab.validation] max_drift and reference_rows must be 0 or more, got "
                              f"{self.max_drift} and {self.reference_rows}")


@dataclass(frozen=True)
class ReproduceConfig:
    """``lab reproduce MODEL VERSION`` (``lab.pipeline.reproduce``; docs/training.md): how far
    a re-run's metric may be from the recorded one, in the metric's own units."""

    tolerance: float = 0.0  # a metric reproduces when |reproduced - recorded| <= this; 0: exactly, same files
    accelerator_tolerance: float = 1e-3  # instead, when a recorded stage ran with accelerator other than "cpu"

    def __post_init__(self) -> None:
        for name in ("tolerance", "accelerator_tolerance"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"[tool.lab.reproduce] {name} must be 0 or more (in the metrics' units), got {value}")


@dataclass(frozen=True)
class QueueConfig:
    """The local job queue (``lab queue``, ``lab.queue``; docs/queue.md). Devices are the
    ones declared here, else the GPUs nvidia-smi lists, plus ``cpu_slots`` CPU slots."""

    store: str = ""  # the queue's SQLite file, relative to the project root; "": <runs_dir>/queue.db
    devices: tuple = ()  # declared GPUs instead of discovery: "gpu:0", "gpu:GPU-<uuid>", "gpu:MIG-<uuid>", or
    #                      tables {id = "gpu:0", cuda = "0", memory_mb = 81920, name = "..."}
    discover: bool = True  # without declared devices, list GPUs (and MIG instances) with nvidia-smi when on PATH
    cpu_slots: int = 1  # CPU slots beside the GPUs, for jobs asking --cpus N (one slot: one core's worth); 0: none
    grace_s: float = 30.0  # a job asked to stop (SIGTERM) is killed (SIGKILL) after this many seconds
    term_group: bool = False  # SIGTERM the job's whole process group, not only its main process (which forwards it)
    poll_s: float = 0.5  # the scheduler looks at its jobs and the queue this often
    sample_s: float = 10.0  # device utilization (nvidia-smi, the jobs' CPU time) is sampled this often
    idle_util_pct: float = 5.0  # a held device below this utilization (or with no process of its job) is idle ...
    idle_after_s: float = 300.0  # ... and reported as an idle reservation after this many seconds
    preempt: bool = True  # a job that cannot start stops lower-priority jobs whose devices let it start
    max_requeues: int = 5  # a job ending in the preempted status (or SIGTERM) on its own goes back this many times

    def __post_init__(self) -> None:
        for entry in self.devices:
            if not isinstance(entry, (str, dict)):
                raise ConfigError(f"[tool.lab.queue] devices entries must be strings (\"gpu:0\") or tables "
                                  f"({{id = \"gpu:0\", memory_mb = 81920}}), got {entry!r}")
        numbers = {"grace_s": self.grace_s, "sample_s": self.sample_s, "idle_util_pct": self.idle_util_pct,
                   "idle_after_s": self.idle_after_s}
        bad = [k for k, v in numbers.items() if not math.isfinite(v) or v < 0]
        if bad or self.cpu_slots < 0 or self.max_requeues < 0:
            raise ConfigError(f"[tool.lab.queue] {', '.join(bad) or 'cpu_slots and max_requeues'} must be 0 or more")
        if not math.isfinite(self.poll_s) or self.poll_s <= 0:
            raise ConfigError(f"[tool.lab.queue] poll_s must be more than 0 seconds, got {self.poll_s}")


OPTIMIZE_METHODS = ("quantize", "distill")
"""What ``lab optimize`` can make of a model (the flavor's optional methods of those names)."""


@dataclass(frozen=True)
class OptimizeConfig:
    """Cheaper-to-serve versions of a registered model (``lab optimize``, ``lab.steps.optimize``;
    docs/training.md). A variant is registered only when its quality on the evaluation set
    drops by at most ``max_quality_drop`` against its parent."""

    methods: tuple[str, ...] = OPTIMIZE_METHODS  # "quantize" (int8 dynamic), "distill" (a smaller student)
    metric: str | None = None  # the gate's metric; default: the model spec's
    max_quality_drop: float = 0.01  # the most the metric may worsen, in its own units (0.01 AP: one point)
    require_ci: bool = False  # judge the upper bound of the drop's paired-bootstrap interval, not the point estimate
    confidence: float = 0.95  # of that interval
    bootstrap_samples: int = 1000  # evaluation-set resamples behind it
    distill_epochs: int = 20  # the student's training epochs (the epoch closest to the teacher is kept)
    student_params: dict = field(default_factory=dict)  # the student's hyperparameters; empty: the flavor's default
    price_per_cpu_hour: float = 0.05  # the cost model: CPU-seconds x this price / 3600 (e.g. an on-demand vCPU-hour)
    currency: str = "USD"  # of that price
    batch_rows: int = 1000  # rows per batch in the batch latency
    rounds: int = 5  # interleaved measurement rounds (every model once per round, order rotated)
    one_row_calls: int = 200  # one-row predicts per model per round
    batch_calls: int = 3  # batch predicts per model per round
    threads: int = 1  # torch/OpenMP threads of the measuring process, as `lab serve --threads` (default 1)
    measure_load_rss: bool = True  # RSS growth when loading each model, in a fresh Python process (about 2 s each)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in OPTIMIZE_METHODS]
        if bad or not self.methods:
            raise ConfigError(f"[tool.lab.optimize] methods must be a non-empty list of "
                              f"{', '.join(map(repr, OPTIMIZE_METHODS))}, got {list(self.methods)!r}")
        if not math.isfinite(self.max_quality_drop) or self.max_quality_drop < 0:
            raise ConfigError("[tool.lab.optimize] max_quality_drop must be 0 or more (in the metric's units), "
                              f"got {self.max_quality_drop}")
        if not 0.5 <= self.confidence < 1 or self.bootstrap_samples < 100:
            raise ConfigError("[tool.lab.optimize] confidence must be in [0.5, 1) and bootstrap_samples 100 or "
                              f"more, got {self.confidence} and {self.bootstrap_samples}")
        if not isinstance(self.student_params, dict):
            raise ConfigError("[tool.lab.optimize] student_params must be a table, e.g. {hidden_sizes = [16]}, "
                              f"got {self.student_params!r}")
        if not math.isfinite(self.price_per_cpu_hour) or self.price_per_cpu_hour < 0:
            raise ConfigError(f"[tool.lab.optimize] price_per_cpu_hour must be 0 or more, got {self.price_per_cpu_hour}")
        counts = {"distill_epochs": self.distill_epochs, "batch_rows": self.batch_rows, "rounds": self.rounds,
                  "one_row_calls": self.one_row_calls, "batch_calls": self.batch_calls, "threads": self.threads}
        low = [f"{k} = {v}" for k, v in counts.items() if v < 1]
        if low:
            raise ConfigError(f"[tool.lab.optimize] {', '.join(low)}: each must be 1 or more")


DRIFT_EFFECTS = {"numeric": ("wasserstein", "psi", "jensen_shannon"), "categorical": ("jensen_shannon", "psi")}
"""The effect sizes ``[tool.lab.drift]`` may judge each kind of column by (docs/monitoring.md)."""


@dataclass(frozen=True)
class DriftConfig:
    """Native drift statistics (``lab.monitoring.drift``; docs/monitoring.md). A column is
    flagged when its test's Benjamini-Hochberg q-value is below ``alpha`` and its effect
    size reaches the threshold."""

    alpha: float = 0.05  # false discovery rate across a report's columns (Benjamini-Hochberg)
    numeric_effect: str = "wasserstein"  # "wasserstein" (normed by the reference's std), "psi", "jensen_shannon"
    numeric_threshold: float = 0.1  # ... flagged at or above this (Evidently's default for normed Wasserstein)
    categorical_effect: str = "jensen_shannon"  # "jensen_shannon" (distance, natural log), "psi"
    categorical_threshold: float = 0.1  # ... flagged at or above this (Evidently's default for Jensen-Shannon)
    nulls: str = "compare"  # "compare": a column's null share is tested too (Cohen's h); "ignore"
    null_threshold: float = 0.1  # Cohen's h between the null shares flagged at or above this
    min_power: float = 0.8  # below this power to detect the threshold, a column not flagged is reported underpowered
    psi_bins: int = 10  # quantile bins of the reference for PSI and a numeric Jensen-Shannon
    sketch_bins: int = 1000  # quantile grid of a reference sketch (KS error at most ~2/sketch_bins)
    html: bool = True  # the drift step also writes Evidently's page (lab_drift_report); it never decides
    html_max_rows: int = 100000  # rows of each window the page is drawn from (a seeded sample); 0: all

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 <= self.min_power <= 1:
            raise ConfigError(f"[tool.lab.drift] alpha must be between 0 and 1 and min_power between 0 and 1, "
                              f"got {self.alpha} and {self.min_power}")
        for kind in ("numeric", "categorical"):
            effect = getattr(self, f"{kind}_effect")
            if effect not in DRIFT_EFFECTS[kind]:
                raise ConfigError(f"[tool.lab.drift] {kind}_effect must be one of "
                                  f"{', '.join(map(repr, DRIFT_EFFECTS[kind]))}, got {effect!r}")
        thresholds = (self.numeric_threshold, self.categorical_threshold, self.null_threshold)
        if any(not math.isfinite(t) or t < 0 for t in thresholds):
            raise ConfigError("[tool.lab.drift] numeric_threshold, categorical_threshold and null_threshold must be "
                              f"0 or more, got {thresholds}")
        if self.nulls not in ("compare", "ignore"):
            raise ConfigError(f"[tool.lab.drift] nulls must be 'compare' or 'ignore', got {self.nulls!r}")
        if self.psi_bins < 2 or self.sketch_bins < 10 or self.html_max_rows < 0:
            raise ConfigError(f"[tool.lab.drift] psi_bins must be 2 or more, sketch_bins 10 or more and "
                              f"html_max_rows 0 or more, got {self.psi_bins}, {self.sketch_bins}, {self.html_max_rows}")


class DatabaseURL(str):
    """A store's ``postgresql://`` URL where a path is expected (``config.registry_path``,
    ``config.ledger_path``): a ``str``, so the stores' ``open`` dispatch on it, with the one
    ``Path`` question callers ask, ``exists()``, answered True (a database is checked when
    a store opens it, with an error naming the masked URL)."""

    def exists(self) -> bool:
        return True


def _database_url(value: str) -> DatabaseURL | None:
    return DatabaseURL(value) if value.startswith(("postgresql://", "postgres://")) else None


@dataclass(frozen=True)
class LabConfig:
    root: Path
    registry: str = "registry.db"
    runs_dir: str = "runs"
    data_dir: str = "data"
    plugins: tuple[str, ...] = ()
    model_name: str | None = None
    ledger: str = ""
    """The prediction ledger: "" for ``<data_dir>/ledger.db``, a path relative to the root, or
    a ``postgresql://`` URL (several servers sharing one ledger; docs/scale-out.md)."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    skew: SkewConfig = field(default_factory=SkewConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    sections: Mapping[str, Any] = field(default_factory=dict)
    """The [tool.lab.<name>] tables the platform does not own: plugins' own settings."""

    def section(self, name: str) -> dict[str, Any] | None:
        """A plugin's ``[tool.lab.<name>]`` table as a dict, or None when the lab has none."""
        table = self.sections.get(name)
        return dict(table) if table is not None else None

    # Resolved paths; everything the platform writes lives under the project root.
    @property
    def registry_path(self) -> Path:
        """The registry's SQLite file; a ``postgresql://`` URL (a str) when ``registry`` is
        one (``Registry.open`` and ``ExperimentStore.open`` take either)."""
        return _database_url(self.registry) or self.root / self.registry  # type: ignore[return-value]

    @property
    def runs_path(self) -> Path:
        return self.root / self.runs_dir

    @property
    def data_path(self) -> Path:
        return self.root / self.data_dir

    @property
    def offline_store_path(self) -> Path:
        return self.data_path / "offline.duckdb"

    @property
    def online_store_path(self) -> Path:
        return self.data_path / "online.db"

    @property
    def ledger_path(self) -> Path:
        """The ledger's SQLite file; a ``postgresql://`` URL (a str) when ``ledger`` is one
        (``Ledger.open`` and ``read_predictions`` take either)."""
        url = _database_url(self.ledger)
        if url is not None:
            return url  # type: ignore[return-value]
        return self.root / self.ledger if self.ledger else self.data_path / "ledger.db"

    @property
    def stream_path(self) -> Path:
        return self.data_path / "stream.db"

    def replace(self, **changes: Any) -> "LabConfig":
        return dataclasses.replace(self, **changes)


_SECTIONS = {
    "pipeline": PipelineConfig,
    "train": TrainConfig,
    "gate": GateConfig,
    "serve": ServeConfig,
    "experiments": ExperimentsConfig,
    "stream": StreamConfig,
    "drift": DriftConfig,
    "optimize": OptimizeConfig,
    "skew": SkewConfig,
    "validation": ValidationConfig,
    "reproduce": ReproduceConfig,
    "resources": ResourcesConfig,
    "queue": QueueConfig,
    "training": TrainingConfig,  # last: the tables listed in errors keep their order
}


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    """A frozen dataclass ``cls`` from a TOML table: unknown keys and wrong types are a
    ``ConfigError`` naming ``[where]`` and the known keys. Plugins build their
    ``[tool.lab.<name>]`` settings with it."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [{where}]; "
            f"known keys are: {', '.join(sorted(known))}"
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(cls, name, None) if not isinstance(known[name].default, dataclasses._MISSING_TYPE) else None
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise ConfigError(f"[{where}] {name} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"[{where}] {name} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"[{where}] {name} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise ConfigError(f"[{where}] {name} must be a whole number, got {value!r}")
        elif (isinstance(default, str) or str(known[name].type).startswith("str")) and not isinstance(value, str):
            raise ConfigError(f"[{where}] {name} must be a string, got {value!r}")
        out[name] = value
    return cls(**out)


def find_root(start: Path | None = None) -> Path:
    """The project root: ``LAB_HOME``, else the nearest folder upwards with a pyproject.toml."""
    if os.environ.get("LAB_HOME"):
        return Path(os.environ["LAB_HOME"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists():
            return folder
    return here


def load_config(root: str | os.PathLike | None = None, **overrides: Any) -> LabConfig:
    """Read [tool.lab] from ``root``/pyproject.toml (missing file or table: all defaults)."""
    root_path = Path(root).resolve() if root is not None else find_root()
    table: dict[str, Any] = {}
    pyproject = root_path / "pyproject.toml"
    if pyproject.exists():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from None
        table = dict(data.get("tool", {}).get("lab", {}))
    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = build_section(cls, dict(table.pop(name, {}) or {}), f"tool.lab.{name}")
    # Sub-tables the platform does not own belong to plugins (config.section(name)).
    plugin_tables = {k: table.pop(k) for k in [k for k, v in table.items() if isinstance(v, dict)]}
    top = build_section(_TopLevel, table, "tool.lab")
    config = LabConfig(root=root_path, **dataclasses.asdict(top), **sections, sections=plugin_tables)
    for key, value in overrides.items():
        if key in _SECTIONS and isinstance(value, dict):
            value = dataclasses.replace(getattr(config, key), **value)
        config = config.replace(**{key: value})
    return config


@dataclass(frozen=True)
class _TopLevel:
    registry: str = "registry.db"
    runs_dir: str = "runs"
    data_dir: str = "data"
    plugins: tuple[str, ...] = ()
    model_name: str | None = None
    ledger: str = ""


# -- one run's overrides: `lab run --set SECTION.KEY=VALUE` -------------------------------

SET_FORMAT = 'write SECTION.KEY=VALUE, e.g. train.seed=7 or gate.metric="roc_auc"'


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML reads it (``7``, ``0.5``, ``true``, ``"text"``, ``[1, 2]``).
    Anything TOML cannot read is text, so a shell-unquoted word works; a bare TOML date
    becomes its ISO text, as no setting holds a date object."""
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    return value


def apply_overrides(config: LabConfig, items: "list[str] | tuple[str, ...]") -> LabConfig:
    """``config`` with ``SECTION.KEY=VALUE`` items applied, in order, for one command.

    ``SECTION`` is a platform table (``train``, ``gate``, ``pipeline``, ``serve``,
    ``experiments``) or a plugin's ``[tool.lab.<name>]`` table the lab has; a bare ``KEY``
    is a top-level ``[tool.lab]`` key. Values are checked as ``load_config`` checks the
    file (unknown key or wrong type: the same ``ConfigError``, prefixed with the item);
    a plugin table's keys are checked by the plugin when it reads its settings.
    """
    for item in items:
        target, sep, raw = item.partition("=")
        target = target.strip()
        if not sep or not target or any(not part.isidentifier() for part in target.split(".")):
            raise ConfigError(f"cannot read --set {item!r}; {SET_FORMAT}")
        value = parse_value(raw.strip())
        section, dot, key = target.partition(".")
        try:
            config = _override(config, section, key, value) if dot else _override_top(config, section, value)
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None
    return config


def _override_top(config: LabConfig, key: str, value: Any) -> LabConfig:
    checked = build_section(_TopLevel, {key: value}, "tool.lab")
    return config.replace(**{key: getattr(checked, key)})


def _override(config: LabConfig, section: str, key: str, value: Any) -> LabConfig:
    if "." in key:
        raise ConfigError(f"only one level is supported (SECTION.KEY), got {section}.{key}; {SET_FORMAT}")
    if section in _SECTIONS:
        checked = build_section(_SECTIONS[section], {key: value}, f"tool.lab.{section}")
        changed = dataclasses.replace(getattr(config, section), **{key: getattr(checked, key)})
        return config.replace(**{section: changed})
    if section in config.sections:
        table = dict(config.sections[section])
        table[key] = value
        return config.replace(sections={**config.sections, section: table})
    known = ", ".join([*_SECTIONS, *sorted(config.sections)])
    raise ConfigError(f"unknown section [tool.lab.{section}]; sections are: {known} (a plugin's table can be "
                      f"overridden once the lab's pyproject.toml has it: add [tool.lab.{section}])")
