"""Every hook a lab plugin can implement.

Implement one with ``from lab import hookimpl`` and a function of the same name taking
any subset of the arguments. Hooks are grouped in the order the platform calls them.
A built-in plugin answers each backend hook with ``trylast=True``, so any other plugin
that answers takes over. Set ``LAB_TRACE_HOOKS=1`` to print every hook call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from lab.config import LabConfig
    from lab.events import Event
    from lab.features.stores import OfflineStore, OnlineStore
    from lab.features.views import FeatureView
    from lab.modelspec import ModelSpec
    from lab.monitoring.validation import Expectations
    from lab.scaffold import Template
    from lab.pipeline.stage import StageExecutor
    from lab.streaming.log import EventLog
    from lab.training.flavor import ModelFlavor
    from lab.llm.types import Embedder, Judge, Provider, Reranker

hookspec = pluggy.HookspecMarker("lab")


# ---------------------------------------------------------------------------
# Backends: one is chosen, the first non-None result wins
# ---------------------------------------------------------------------------

@hookspec(firstresult=True)
def lab_offline_store(config: "LabConfig") -> "OfflineStore | None":
    """Return the offline (historical) feature store for this lab.

    Called once per process when the platform first needs the offline store.
    ``firstresult``: the first plugin that returns a store wins; the built-in DuckDB
    store answers last. Example::

        @hookimpl
        def lab_offline_store(config):
            return MyWarehouseStore(config.root / "warehouse")
    """


@hookspec(firstresult=True)
def lab_online_store(config: "LabConfig") -> "OnlineStore | None":
    """Return the online (serving) feature store for this lab.

    Called when materializing and when the server starts. ``firstresult``; the built-in
    SQLite store answers last. Example: return a Redis-backed ``OnlineStore``.
    """


@hookspec(firstresult=True)
def lab_stage_executor(config: "LabConfig") -> "StageExecutor | None":
    """Return the executor that runs one pipeline stage (a notebook) with parameters.

    Called by ``lab run`` before the first stage. ``firstresult``; the built-in executor
    runs the notebook in-process with papermill. Example: an executor that submits the
    notebook to a Ray cluster and waits for it.
    """


@hookspec(firstresult=True)
def lab_sweep_storage(config: "LabConfig", study_name: str) -> "str | None":
    """Return the Optuna storage URL for a hyperparameter sweep.

    Called by the train stage before it creates a study. ``firstresult``; the built-in
    answer is a SQLite file under the run's folder. Example: return
    ``"postgresql://optuna@127.0.0.1:5432/sweeps"`` to share trials across machines.
    """


@hookspec(firstresult=True)
def lab_event_log(config: "LabConfig", stream: str) -> "EventLog | None":
    """Return the event log holding ``stream``, the events ``lab stream run`` scores.

    Called by ``lab stream run``, ``publish`` and ``status`` (and ``lab.streaming``'s
    Python API) once per stream they open. ``firstresult``: the first plugin that
    returns a ``lab.streaming.EventLog`` wins; with none, the core uses its SQLite log in
    ``data/stream.db``. A plugin answers only for labs that configure it. Example::

        @hookimpl
        def lab_event_log(config, stream):
            settings = config.section("redis_streams")
            return None if settings is None else RedisEventLog(settings["url"], stream)
    """


# ---------------------------------------------------------------------------
# Contributions: every plugin's answer is collected in a list
# ---------------------------------------------------------------------------

@hookspec
def lab_feature_views(config: "LabConfig") -> "list[FeatureView] | None":
    """Return feature views this plugin defines.

    Called whenever the platform needs the catalogue of views. Results from all plugins
    are concatenated; two views with one name is an error. Example::

        @hookimpl
        def lab_feature_views(config):
            return [FeatureView(name="customer", entity="CUSTOMER_ID", ...)]
    """


@hookspec
def lab_model_specs(config: "LabConfig") -> "list[ModelSpec] | None":
    """Return the models this plugin's lab trains and serves (``lab.modelspec.ModelSpec``).

    Called whenever the platform needs a model's declarations: the generic pipeline steps
    (training set, train, evaluate, gate, register, batch score, drift) and the model
    server, which builds its request type, request-time features and routing from the
    spec. Results from all plugins are concatenated and looked up by ``spec.name``
    (``[tool.lab] model_name`` by default); two specs with one name is an error. A domain
    plugin installed for several labs should answer only for labs that configure it (its
    ``[tool.lab.<name>]`` table, ``config.section(name)``). Example::

        @hookimpl
        def lab_model_specs(config):
            schema = RequestSchema(
                fields=(RequestField("ORDER_ID", "int", ge=0), RequestField("ORDERED_AT", "datetime"),
                        RequestField("STORE_ID", "int", ge=0), RequestField("DISTANCE_KM", "float", ge=0, le=100)),
                id="ORDER_ID", timestamp="ORDERED_AT", entities=("STORE_ID",),
                example={"ORDER_ID": 1, "ORDERED_AT": "2024-03-01T12:00:00", "STORE_ID": 7, "DISTANCE_KM": 2.5})
            return [ModelSpec(name="delivery_time", task="regression", label="MINUTES", source="orders",
                              features=("DISTANCE_KM", "STORE_AVG_MINUTES_7D"), views=("store_prep",),
                              request=schema, request_frame=add_request_columns, request_row=one_request)]
    """


@hookspec
def lab_expectations(config: "LabConfig") -> "list[Expectations] | None":
    """Return what this plugin's lab expects of its data (``lab.monitoring.validation.Expectations``).

    Called by the train step before it trains (the validation gate) and by ``lab data
    validate``. Results from all plugins are concatenated; each declaration names its
    target, an offline source or a feature view. The gate checks a model's source against
    the source rows its training set was built from and each view it reads against the
    training set's columns of that view; a failed check stops the step with
    ``ValidationFailed`` (``[tool.lab.validation]`` can switch checks off). A declaration
    that leaves ``time_column`` or ``label`` unset gets the model spec's. A domain plugin
    installed for several labs should answer only for labs that configure it. Example::

        @hookimpl
        def lab_expectations(config):
            return [Expectations(target="orders", schema={"ORDER_ID": "int", "DISTANCE_KM": "float"},
                                 ranges={"DISTANCE_KM": (0.0, 30.0)}, max_null_share={"DISTANCE_KM": 0.0},
                                 unique=["ORDER_ID"], per_day_vs_median=(0.5, 1.6))]
    """


@hookspec
def lab_templates() -> "list[Template] | None":
    """Return project templates for ``lab init DIR --template NAME`` (``lab.scaffold.Template``).

    Called by ``lab init``. Results are concatenated; two templates with one name is an
    error. A template is a folder of files copied into the new lab, with ``{{project}}``
    replaced by the new lab's name. Example::

        @hookimpl
        def lab_templates():
            return [Template("churn", "Churn scoring on simulated subscriptions",
                             Path(__file__).parent / "template")]
    """


@hookspec
def lab_model_flavors() -> "list[ModelFlavor] | None":
    """Return model flavors (how to train, save, load and score a kind of model).

    Called when training starts and when a registered model is loaded. A registered
    model version names its flavor; results from all plugins are concatenated and
    looked up by ``flavor.name``.
    """


@hookspec
def lab_trainer_callbacks(config: "LabConfig", run_dir: str) -> "list[Any] | None":
    """Return extra Lightning callbacks for every training run.

    Called by the model flavor as it builds its Trainer. Results are concatenated and
    passed to ``Trainer(callbacks=...)``. Example: a callback that posts progress to a chat.
    """


@hookspec
def lab_http_routes(config: "LabConfig") -> "list[Any] | None":
    """Return extra HTTP route handlers for the model server.

    Called once when ``lab serve`` builds its app. Results are concatenated and mounted
    beside ``/predict``. Example: return ``[my_litestar_get_handler]``.
    """


@hookspec
def lab_cli_commands() -> "list[Any] | None":
    """Return ``lab.cli.Command`` objects: extra ``lab`` subcommands.

    Called once when the CLI starts; the core's own commands come first (``lab.commands``).
    Results are concatenated; a name already taken is an error. Example:
    ``Command("hello", "say hello", add_arguments, run)``, or, to keep ``lab --help`` from
    importing the module until the command runs,
    ``Command("hello", "say hello", "my_plugin.cli:add_arguments", "my_plugin.cli:run")``.
    """


@hookspec
def lab_guardrails(config: "LabConfig") -> "list[Any] | None":
    """Return extra guardrail metrics (``lab.experiments.Guardrail``) that every experiment inherits.

    Called when an experiment's guardrails are checked. Results from all plugins are
    concatenated with the built-in ``latency_ms`` and ``error_rate`` named in
    ``[tool.lab.experiments] guardrails``; two guardrails with one name is an error.
    Example::

        @hookimpl
        def lab_guardrails(config):
            return [Guardrail("p99_latency_ms", kind="mean", worse="increase")]
    """


@hookspec(firstresult=True)
def lab_drift_report(
    config: "LabConfig", reference: Any, current: Any, columns: "list[str]", html_path: str
) -> "dict[str, dict] | None":
    """Compare ``current`` against ``reference`` (pandas DataFrames) column by column.

    Called by the drift stage. Writes an HTML report to ``html_path`` and returns
    ``{column: {"score": float, "drifted": bool, "method": str}}``. ``firstresult``; the
    built-in answer uses Evidently.
    """


# ---------------------------------------------------------------------------
# Events: observed by every plugin
# ---------------------------------------------------------------------------

@hookspec
def lab_on_event(event: "Event") -> None:
    """Observe something that happened: a stage finished, failed or was skipped; a model
    was registered, approved, promoted or rolled back; drift was detected; a flag changed;
    an experiment started or stopped; a guardrail was breached; a shadow started, met
    its exit criteria, expired or was stopped.

    ``event.name`` is one of the names in ``lab.events``; ``event.payload`` holds the
    details, ``event.actor`` and ``event.at`` say who and when. Return values are
    ignored. An exception here propagates, so keep observers quick and safe. Example::

        @hookimpl
        def lab_on_event(event):
            if event.name == "model.promoted":
                print("new champion", event.payload["version"])
    """


# ---------------------------------------------------------------------------
# Around work: wrappers
# ---------------------------------------------------------------------------

@hookspec(firstresult=True)
def lab_execute_stage(
    config: "LabConfig", stage: Any, params: dict, output_path: str, executor: "StageExecutor"
) -> "dict | None":
    """Run one stage (a ``lab.pipeline.Stage``) and return a dict about the run.

    Called by the pipeline runner for each stage that is not skipped, with the executor
    that ``lab_stage_executor`` chose. ``firstresult``; the built-in answer calls
    ``executor.execute`` and returns ``{"seconds": ...}``; it raises ``StageFailed``. Implement it with
    ``@hookimpl(wrapper=True)`` and ``result = yield`` to time, trace or annotate stages::

        @hookimpl(wrapper=True)
        def lab_execute_stage(stage):
            t0 = time.perf_counter()
            result = yield
            print(stage.name, time.perf_counter() - t0)
            return result
    """


# ---------------------------------------------------------------------------
# LLM work (lab.llm): every result is collected; config picks one by its name
# ---------------------------------------------------------------------------

@hookspec
def lab_llm_providers(config: "LabConfig") -> "list[Provider] | None":
    """Return LLM providers (``lab.llm.types.Provider``), each with a unique ``name``.

    ``[tool.lab.llm] provider`` (or a model's ``provider`` in ``[tool.lab.llm.models]``)
    picks one by name. Built in: ``extractive`` (offline, answers from retrieved context)
    and one OpenAI-compatible HTTP provider per ``[tool.lab.llm.providers.<name>]`` table.
    """


@hookspec
def lab_embedders(config: "LabConfig") -> "list[Embedder] | None":
    """Return text embedders (``lab.llm.types.Embedder``), each with a unique ``name``.

    ``[tool.lab.llm] embedder`` picks one (default ``minilm``: the packaged
    all-MiniLM-L6-v2, offline). Retrieval, the semantic cache, the extractive provider and
    the semantic-similarity assertion all embed through it.
    """


@hookspec
def lab_rerankers(config: "LabConfig") -> "list[Reranker] | None":
    """Return rerankers (``lab.llm.types.Reranker``) that ``[tool.lab.llm.rag] rerank``
    may name; none is used unless named."""


@hookspec
def lab_llm_judges(config: "LabConfig") -> "list[Judge] | None":
    """Return LLM-as-judge implementations (``lab.llm.types.Judge``) that an evaluation
    suite's ``judge`` assertion may name. Its agreement with labelled examples is
    reported before the suite trusts it (``lab llm judge-check``)."""


@hookspec
def lab_eval_assertions(config: "LabConfig") -> "dict[str, Any] | None":
    """Return custom evaluation assertions: ``{name: fn(output, expectation, case) ->
    (passed, score, reason)}``; a suite case names one as ``{"type": name, ...}``."""
