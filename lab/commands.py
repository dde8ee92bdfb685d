"""The core's ``lab`` subcommands, contributed through ``lab_cli_commands`` like a plugin's.

This module is the built-in plugin ``lab_commands`` (``lab.plugins.DEFAULT_PLUGINS``)
and the table of the core's commands. Each command's functions live beside the code it
drives and are named here as ``"module:function"`` (see ``lab.cli.Command``), so ``lab
--help`` imports none of them: ``lab promote`` loads the registry's commands, ``lab
run`` the pipeline's, and nothing else. ``lab plugins`` is small enough to live here;
``lab init`` is ``lab.scaffold.INIT_COMMAND``.
"""

from __future__ import annotations

import argparse
import json

from lab import hookimpl
from lab.cli import Command, Context
from lab.plugins import plugin_table
from lab.scaffold import INIT_COMMAND


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plugins_run(args: argparse.Namespace, ctx: Context) -> int:
    rows = plugin_table(ctx.pm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<22} {row['version']:<16} {', '.join(row['hooks'])}")
    return 0


def _lazy(name: str, help: str, module: str, add_arguments: str, run: str) -> Command:
    """A command whose ``add_arguments`` and ``run`` are functions of ``module``."""
    return Command(name, help, f"{module}:{add_arguments}", f"{module}:{run}")


_PIPELINE = "lab.pipeline.commands"
_REGISTRY = "lab.registry.commands"
_FEATURES = "lab.features.commands"
_SHADOW = "lab.serving.shadow_commands"
_STREAM = "lab.streaming.commands"
_EXPERIMENTS = "lab.experiments.commands"
_KEYS = "lab.serving.keys_commands"
_QUEUE = "lab.queue.commands"

COMMANDS: list[Command] = [
    Command("plugins", "list loaded plugins with their versions and hooks", _plugins_args, _plugins_run),
    _lazy("run", "run the notebook pipeline; unchanged stages are skipped, a stopped run resumes",
          _PIPELINE, "run_args", "run_run"),
    # the registry
    _lazy("promote", "point an alias (default champion) at a model version; to champion only on the evidence "
          "[tool.lab.gate] asks for", "lab.steps.promotion", "promote_args", "promote_run"),
    _lazy("approve", "approve a model version to become champion (--by NAME), as [tool.lab.gate] may require",
          _REGISTRY, "_approve_args", "_approve_run"),
    _lazy("rollback", "move an alias back to the version it held before", _REGISTRY, "_rollback_args", "_rollback_run"),
    _lazy("models", "list registered models, or one model's versions, aliases and metrics",
          _REGISTRY, "_models_args", "_models_run"),
    _lazy("history", "show a model's history: who promoted what, when, why, on which evidence, approved by whom",
          _REGISTRY, "_history_args", "_history_run"),
    _lazy("runs", "list tracking runs, newest first", _REGISTRY, "_runs_args", "_runs_run"),
    _lazy("lineage", "walk from a model version to its run, code, dependencies and data",
          _REGISTRY, "_lineage_args", "_lineage_run"),
    _lazy("reproduce", "re-run the recorded pipeline that made a model version in a scratch copy of the lab and "
          "compare its metrics (exactly, on CPU: [tool.lab.reproduce]), naming the differences in code, lock file, "
          "data, parameters and hardware (exit 4 when it did not reproduce)", "lab.pipeline.reproduce_commands",
          "reproduce_args", "reproduce_run"),
    _lazy("score", "batch inference: score a window of the offline store into date partitions, with coverage "
          "and freshness", "lab.serving.batch_commands", "_score_args", "_score_run"),
    # shadow mode
    _lazy("shadow start", "mirror the champion's traffic to a challenger, with exit criteria declared now",
          _SHADOW, "_start_args", "_start_run"),
    _lazy("shadow status", "a shadow's progress against its exit criteria (records met or expired)",
          _SHADOW, "_model_args", "_status_run"),
    _lazy("shadow report", "a shadow's agreement report: requests, agreement with its CI, latencies, criteria",
          _SHADOW, "_report_args", "_report_run"),
    _lazy("shadow stop", "stop mirroring to the challenger (recorded in the history)", _SHADOW, "_stop_args",
          "_stop_run"),
    # the feature store
    _lazy("features load", "load a Parquet file into an offline source table", _FEATURES, "_load_args", "_load_run"),
    _lazy("features training-set", "write a point-in-time training set and record it in the registry",
          _FEATURES, "_training_args", "_training_run"),
    _lazy("features audit", "a training set's leakage audit: feature age at label time per view, and rows "
          "newer than their time minus the label delay", _FEATURES, "_audit_args", "_audit_run"),
    _lazy("features materialize", "bring the online store up to a time: incrementally from each view's "
          "watermark, whole (--full), or re-materialize a window (--backfill)",
          _FEATURES, "_materialize_args", "_materialize_run"),
    _lazy("features list", "list feature views with versions, entities and features",
          _FEATURES, "_list_args", "_list_run"),
    _lazy("features get", "look up one entity's features in the online store", _FEATURES, "_get_args", "_get_run"),
    _lazy("features status", "per feature view: watermark, lag, freshness objective and breach rate (from the "
          "ledger)", _FEATURES, "_status_args", "_status_run"),
    _lazy("features logged-set", "the ledger's logged features as a training set, with labels joined once due",
          "lab.steps.monitoring", "logged_set_args", "logged_set_run"),
    _lazy("features skew", "training-serving skew: logged features against their offline recomputation, per "
          "feature; fails (exit 3) above [tool.lab.skew]", "lab.steps.monitoring", "skew_args", "skew_run"),
    # data validation before training
    _lazy("data validate", "check the model's data against the lab's expectations (lab_expectations), as the "
          "train step does before training; exit 3 when a check fails", "lab.steps.training", "validate_args",
          "validate_run"),
    # serving cost
    _lazy("optimize", "cheaper-to-serve versions of a model version (int8 quantization, a distilled student), "
          "each registered as derived from it only when its quality on the evaluation set holds "
          "([tool.lab.optimize]); latency, memory and cost per 1,000 predictions (exit 3 when all are refused)",
          "lab.steps.optimize", "optimize_args", "optimize_run"),
    _lazy("sweep worker", "join a train step's Optuna sweep as one more worker (this machine or another one on "
          "the same PostgreSQL storage and run folder) until its study is complete",
          "lab.steps.sweep_workers", "worker_args", "worker_run"),
    # monitoring
    _lazy("monitor run", "every check of the served model over a window of days: input and score drift, "
          "freshness, live quality, volume; an HTML report and a JSON summary (exit 3 on a breach)",
          "lab.monitoring.monitor_commands", "run_args", "run_run"),
    _lazy("retrain", "retrain on evidence: run the monitor, and when drift, quality decay or the schedule "
          "([tool.lab.retrain]) makes it due, run the stages up to register through every gate; never promotes "
          "a model that failed one (exit 3 when a gate refused it)", "lab.monitoring.monitor_commands",
          "retrain_args", "retrain_run"),
    _lazy("monitor quality", "live quality per model version from the ledger and late labels: window metrics, "
          "early signals, a sequential test of degradation (exit 3 when degraded)",
          "lab.monitoring.quality_commands", "quality_args", "quality_run"),
    # streaming inference
    _lazy("stream run", "consume a stream: score each event as the server does, call the sinks, commit; "
          "side effects once per idempotency key", _STREAM, "run_args", "run_run"),
    _lazy("stream publish", "append the events of a JSON Lines file to a stream", _STREAM, "publish_args",
          "publish_run"),
    _lazy("stream status", "a stream's length and each consumer group's lag, predictions, dead letters and model",
          _STREAM, "status_args", "status_run"),
    # experiments and flags
    _lazy("experiment create", "create a draft experiment or flag with weighted variants",
          _EXPERIMENTS, "_create_args", "_create_run"),
    _lazy("experiment start", "start a draft: units are assigned from now on",
          _EXPERIMENTS, "_name_reason_args", "_start_run"),
    _lazy("experiment stop", "stop it: every unit sees control; recorded in the audit log",
          _EXPERIMENTS, "_stop_args", "_stop_run"),
    _lazy("experiment status", "list experiments and flags, or show one with its recent changes",
          _EXPERIMENTS, "_status_args", "_status_run"),
    _lazy("experiment set-weights", "change the weights (only the units that must move do)",
          _EXPERIMENTS, "_set_weights_args", "_set_weights_run"),
    _lazy("experiment audit", "who changed what, when, from what to what, and why",
          _EXPERIMENTS, "_audit_args", "_audit_run"),
    _lazy("experiment simulate", "write simulated outcomes (units assigned by the real hash) to try the report",
          _EXPERIMENTS, "_simulate_args", "_simulate_run"),
    _lazy("experiment report", "render the experiment report (effects, SRM, sequential test, guardrails) to HTML",
          _EXPERIMENTS, "_report_args", "_report_run"),
    _lazy("experiment check", "check the platform guardrails on the prediction ledger; a breach stops it "
          "(exit 3)", _EXPERIMENTS, "_check_args", "_check_run"),
    _lazy("experiment bandit-update", "count new outcomes once into the Thompson bandit, serve its allocation "
          "(every arm above its floor), report exploration, coverage and diversity", "lab.steps.bandit",
          "bandit_update_args", "bandit_update_run"),
    # the model server's API keys and its admin audit log
    _lazy("keys create", "create an API key with scopes for the model server (shown once; only its hash is kept)",
          _KEYS, "_create_args", "_create_run"),
    _lazy("keys list", "list the model server's API keys: name, id, scopes, created and revoked by whom",
          _KEYS, "_list_args", "_list_run"),
    _lazy("keys revoke", "revoke an API key; a running server refuses it from its next request",
          _KEYS, "_revoke_args", "_revoke_run"),
    _lazy("audit", "what was done through the server's admin routes: by which key, before and after, request id",
          _KEYS, "_audit_args", "_audit_run"),
    # the local job queue
    _lazy("queue submit", "queue a job (any command) asking for devices and a priority; the scheduler starts it "
          "when all its devices are free", _QUEUE, "submit_args", "submit_run"),
    _lazy("queue list", "the queue's jobs: state, devices, priority, times, attempts", _QUEUE, "list_args",
          "list_run"),
    _lazy("queue devices", "the queue's devices: which job holds each, utilization, idle reservations", _QUEUE,
          "devices_args", "devices_run"),
    _lazy("queue cancel", "cancel jobs: queued ones at once, running ones stopped (SIGTERM, then SIGKILL)", _QUEUE,
          "cancel_args", "cancel_run"),
    _lazy("queue run", "the scheduler, in the foreground: gang allocation, priorities, preemption; stops on "
          "SIGTERM after handing its jobs back", _QUEUE, "run_args", "run_run"),
    # LLM prompts as code and the LLM ledger (issue 13, part A)
    _lazy("prompt list", "list prompts: working hash, registered version, aliases", "lab.llm.prompt_commands",
          "list_args", "list_run"),
    _lazy("prompt show", "a prompt's front matter, variables, hash and text (working file, --alias or --version)",
          "lab.llm.prompt_commands", "show_args", "show_run"),
    _lazy("prompt register", "register prompts/NAME.md as the next version of prompt NAME (no-op when unchanged)",
          "lab.llm.prompt_commands", "register_args", "register_run"),
    _lazy("prompt promote", "point a prompt's alias (default production) at a version; `lab rollback NAME --alias "
          "production` undoes it", "lab.llm.prompt_commands", "promote_args", "promote_run"),
    _lazy("prompt render", "render a prompt with --var NAME=VALUE into its messages", "lab.llm.prompt_commands",
          "render_args", "render_run"),
    _lazy("llm calls", "the LLM ledger: the newest calls, or --totals per prompt version (tokens, cost, latency)",
          "lab.llm.prompt_commands", "calls_args", "calls_run"),
    # LLM evaluation suites, the eval gate and judge agreement (issue 13, part E)
    _lazy("llm eval", "run an evaluation suite on a prompt and gate it: exit 3 when a case passing on the baseline "
          "(the prompt's production version) fails now, or the pass rate is below [tool.lab.llm.evals] "
          "min_pass_rate", "lab.steps.llm_eval", "eval_args", "eval_run"),
    _lazy("llm compare", "two prompt versions on one suite, case by case: newly failing and passing cases, score "
          "deltas, exact McNemar and sign tests", "lab.steps.llm_eval", "compare_args", "compare_run"),
    _lazy("llm judge-check", "a judge's agreement with human labels (accuracy, Cohen's kappa, confusion), recorded "
          "so gates may use it (exit 3 below [tool.lab.llm.evals] min_judge_kappa)", "lab.steps.llm_eval",
          "judge_check_args", "judge_check_run"),
    # LLM spend ceilings and token budgets (issue 13, part D)
    _lazy("llm spend", "LLM spend this day and month against [tool.lab.llm.spend]'s ceilings: settled, reserved, "
          "share used", "lab.llm.gateway_commands", "spend_args", "spend_run"),
    _lazy("llm budget", "each prompt's token use per call, recent against baseline (median, p95) from the LLM "
          "ledger; exit 3 on a drift ([tool.lab.llm.budget])", "lab.llm.gateway_commands", "budget_args",
          "budget_run"),
    # retrieval: chunking, DuckDB vectors, SQLite FTS5 BM25, hybrid, evaluation (issue 13, part C)
    _lazy("rag ingest", "chunk, embed and index documents (default: [tool.lab.llm.rag] sources) into data/rag.duckdb "
          "and data/rag_fts.db; unchanged documents are skipped", "lab.llm.rag.commands", "ingest_args", "ingest_run"),
    _lazy("rag search", "search the indexed documents: hybrid (vector + BM25, fused by reciprocal rank), vector or "
          "bm25", "lab.llm.rag.commands", "search_args", "search_run"),
    _lazy("rag eval", "recall@k, MRR and nDCG@k of each search mode on a labelled question set (exit 3 when hybrid "
          "recall is below [tool.lab.llm.rag] min_recall)", "lab.llm.rag.commands", "eval_args", "eval_run"),
    # scale-out (issue 14): a lab's SQLite state into PostgreSQL
    _lazy("migrate", "copy the lab's SQLite registry (with flags) and ledger into an empty PostgreSQL database "
          "in one transaction, verified by row counts and digests; prints the [tool.lab] lines to use it",
          "lab.migrate", "migrate_args", "migrate_run"),
    INIT_COMMAND,
]


@hookimpl(tryfirst=True)
def lab_cli_commands():
    """The core's commands, first in ``lab --help``."""
    return list(COMMANDS)
