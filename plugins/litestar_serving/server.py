"""``lab serve``: the model server under uvicorn (uvloop + httptools), on loopback by default.

The plugin names these functions to the CLI as ``"module:function"`` (see ``lab.cli.Command``),
so this module, Litestar and uvicorn load only when ``lab serve`` runs or shows its help.

``UVICORN_SETTINGS`` is the one place the server settings live; the benchmark serves
its bare comparison app with the same dict so the two figures are comparable.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import math
import os
import shutil
import socket
import sys
import tempfile

import uvicorn

from lab.cli import Context
from lab.errors import ConfigError, LabError
from lab.experiments import ExperimentStore
from lab.plugins import model_spec, model_specs
from lab.registry import Registry
from plugins.litestar_serving.app import create_app, is_loopback
from plugins.litestar_serving.metrics import WORKERS_ENV
from plugins.litestar_serving.models import check_names
from plugins.litestar_serving.resources import SUPERVISED_ENV, run_supervised

UVICORN_SETTINGS = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,  # a log line per request costs more than scoring it; use --access-log
    "timeout_graceful_shutdown": 10,  # then the lifespan's finally flushes the ledger
    "server_header": False,
}


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a whole number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more milliseconds, got {text}")
    return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    # Also accepted after the subcommand (`lab serve --root DIR`); `lab` reads it before parsing.
    p.add_argument("--root", default=argparse.SUPPRESS, help="project folder (as `lab --root`)")
    p.add_argument("--host", help="address to listen on (default: [tool.lab.serve] host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default: [tool.lab.serve] port, 8000)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="model to serve, as a plugin declares it (lab_model_specs) and the registry holds it "
                        "(default: [tool.lab] model_name, or the lab's only model). Repeat it to serve several: "
                        "the first answers /predict, each at /models/NAME/predict, the others loaded on first use "
                        "within [tool.lab.serve] max_model_memory_mb")
    p.add_argument("--all-models", action="store_true",
                   help="serve every model the lab declares (the default one, or the first --model, at /predict)")
    p.add_argument("--alias", default="champion", help="which version of it: an alias (default: champion)")
    p.add_argument("--flag", help="route each request by this flag: its variants name model versions "
                                  "(payload model_version=N or alias=NAME); weight changes apply live")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for scoring (default 1: one row at a time gains nothing from more)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    p.add_argument("--allow-empty-store", action="store_true", default=None,
                   help="be ready even if a feature view was never materialized (e.g. no data/online.db): "
                        "such views score on defaults (default: [tool.lab.serve] allow_empty_store, false)")
    p.add_argument("--max-concurrency", type=_count, metavar="N",
                   help="score at most N requests at once, on a pool of N threads; 0 scores on the event loop "
                        "(default: [tool.lab.serve] max_concurrency, 0)")
    p.add_argument("--max-queue", type=_count, metavar="Q",
                   help="at most Q requests wait for a scoring slot; one more is answered 503 with Retry-After "
                        "(default: [tool.lab.serve] max_queue, 64)")
    p.add_argument("--latency-budget-ms", type=_milliseconds, metavar="MS",
                   help="answer within MS milliseconds: past it the model's declared fallback, flagged, or 503 "
                        "when it declares none; needs --max-concurrency (default: [tool.lab.serve] "
                        "latency_budget_ms, 0: none)")
    p.add_argument("--max-batch", type=_count, default=64, metavar="N",
                   help="score up to N requests that arrive together in one batch (one store query per view, "
                        "one forward; each answer as alone) when scoring on the event loop; 1 turns it off "
                        "(default 64)")
    p.add_argument("--batch-wait-ms", type=_milliseconds, default=0.0, metavar="MS",
                   help="let a batch wait up to MS milliseconds for more requests (default 0: only those that "
                        "arrived in the same turn of the event loop)")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="serve with N processes on one port (default 1); /metrics sums them (prometheus-client's "
                        "multiprocess mode, in a temporary folder of this server's)")
    p.add_argument("--allow-open", action="store_true",
                   help="listen on an address other machines can reach although /predict needs no API key "
                        "([tool.lab.serve] predict_auth = \"open\"); only behind a proxy or firewall that decides "
                        "who may call it")


def check_servable(config, model_name: str, alias: str):
    """The ``ModelVersion`` that ``alias`` points at; raises ``LabError`` naming the fix if none."""
    fix = f"run `lab run` or `lab promote {model_name} VERSION`"
    if not config.registry_path.exists():
        raise LabError(f"there is no model registry at {config.registry_path} yet, so nothing to serve: {fix}")
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        version = registry.get_alias(model_name, alias)
    if version is None:
        raise LabError(f"model {model_name!r} has no {alias}, so there is nothing to serve: {fix}")
    return version


def check_flag(config, spec, flag: str) -> str:
    """Fail before binding when the flag does not exist or routes by something the
    request does not carry; says what it routes between."""
    if not config.registry_path.exists():
        raise LabError(f"there is no registry at {config.registry_path} yet: run `lab run` first")
    with ExperimentStore.open(config.registry_path) as store:
        experiment = store.get(flag)
    fields = spec.request.names
    if experiment.unit not in fields:
        raise LabError(f"flag {flag!r} assigns by {experiment.unit!r}, which is not a field of the "
                       f"{spec.request.title} request of model {spec.name!r} ({', '.join(fields)}); route by a "
                       "flag created with --unit set to one of them")
    weights = ", ".join(f"{v.name}={v.weight:g}" for v in experiment.variants)
    return f"{spec.name} routed by flag {flag!r} on {experiment.unit} ({weights})"


def check_port_free(host: str, port: int) -> None:
    """Raise ``ConfigError`` naming ``--port`` when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use; choose another with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from None


def _set_threads(n: int) -> None:
    if n < 1:
        raise ConfigError(f"--threads must be at least 1, got {n}")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    else:
        # Not imported (about a second): a model with a numpy forward may never need it. If a
        # flavor imports it later, torch sizes its pool from this, as set_num_threads would.
        os.environ["OMP_NUM_THREADS"] = str(n)


def bind_warning(host: str, predict_auth: str = "open") -> str | None:
    """The warning to print when ``host`` is reachable from other machines, else None."""
    if is_loopback(host):
        return None
    if predict_auth == "key":
        return (f"lab serve: warning: listening on {host}, so other machines can reach this server: /predict "
                "and /admin need an API key, but /healthz, /readyz, /stats, /metrics and /schema do not, and "
                "keys travel in clear over HTTP. Put a TLS proxy in front.")
    return (f"lab serve: warning: listening on {host}, so other machines can reach this server: /predict "
            "has no authentication, writes to the ledger and returns the stored features of any entity asked "
            "for. Serve on 127.0.0.1 (the default) unless a proxy or firewall in front decides who may call it.")


def check_bind(host: str, predict_auth: str, allow_open: bool) -> None:
    """Refuse, naming both fixes, to listen where other machines reach an open /predict."""
    if is_loopback(host) or predict_auth != "open" or allow_open:
        return
    raise ConfigError(f"refusing to listen on {host}: other machines could call /predict, which needs no API key "
                      "([tool.lab.serve] predict_auth = \"open\"). Set predict_auth = \"key\" and create a key "
                      "with `lab keys create NAME --scope predict`, or pass --allow-open if a proxy or firewall in "
                      "front decides who may call it")


def _run(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    host = args.host or config.serve.host
    port = args.port or config.serve.port
    models = list(dict.fromkeys(args.model or []))
    if not models and not args.all_models and config.section("llm") and not model_specs(ctx.pm, config):
        return _run_llm_only(args, ctx, host, port)  # [tool.lab.llm] and no tabular model: the LLM routes
    spec = model_spec(ctx.pm, config, models[0] if models else None)
    model_name = spec.name
    if args.all_models:
        models = [model_name, *(name for name in model_specs(ctx.pm, config) if name != model_name)]
    others = [name for name in models if name != model_name]
    for name in others:
        model_spec(ctx.pm, config, name)  # a name no plugin declares: the error names those that are
    check_names([model_name, *others] if others else [])
    if args.flag:
        what = check_flag(config, spec, args.flag)
    else:
        version = check_servable(config, model_name, args.alias)
        what = f"{version.name} v{version.version} ({args.alias})"
    if others:
        what += f"; also {', '.join(others)} at /models/NAME/predict, loaded on first use"
    check_bind(host, config.serve.predict_auth, args.allow_open)
    warning = bind_warning(host, config.serve.predict_auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    check_port_free(host, port)
    _set_threads(args.threads)
    app_args = dict(model_name=model_name, alias=args.alias, flag=args.flag, host=host,
                    allow_empty_store=args.allow_empty_store, max_concurrency=args.max_concurrency,
                    max_queue=args.max_queue, latency_budget_ms=args.latency_budget_ms,
                    max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, models=others)
    settings = {**UVICORN_SETTINGS, "access_log": args.access_log}
    if args.workers > 1 or config.resources.restart_on_leak:  # a supervisor that starts a worker again
        print(f"lab serve: {what} on http://{host}:{port} with {args.workers} worker{'s' if args.workers > 1 else ''} "
              f"- POST /predict, GET /readyz, OpenAPI at /schema", flush=True)
        return _run_workers(config, app_args, args.workers, args.threads, host, port, args.log_level, settings)
    app = create_app(config, ctx.pm, **app_args)
    print(f"lab serve: {what} on http://{host}:{port} "
          f"- POST /predict, GET /readyz, OpenAPI at /schema", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=args.log_level, **settings))
    # The imports and the app (about 95,000 objects) leave the cyclic collector's scans: a
    # full collection of them took about 100 ms, stalling every request in flight (the
    # p99 of /predict under load). Refcounting still frees them; only cycles among them stay.
    gc.freeze()
    server.run()
    return 0 if server.started else 1


def _run_llm_only(args: argparse.Namespace, ctx: Context, host: str, port: int) -> int:
    """``lab serve`` of a lab with ``[tool.lab.llm]`` and no tabular model (one process)."""
    from plugins.litestar_serving.llm_routes import create_llm_app

    check_bind(host, ctx.config.serve.predict_auth, args.allow_open)
    check_port_free(host, port)
    app = create_llm_app(ctx.config, ctx.pm, host=host)
    print(f"lab serve: LLM routes on http://{host}:{port} - POST /v1/chat/completions, GET /v1/models, "
          "/readyz, OpenAPI at /schema", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=args.log_level,
                                           **{**UVICORN_SETTINGS, "access_log": args.access_log}))
    server.run()
    return 0 if server.started else 1


WORKER_SETTINGS = "LAB_SERVE_WORKER"
"""The environment variable through which ``lab serve --workers N`` hands each worker
process what to serve (JSON: the lab's root, ``create_app``'s arguments, ``--threads``)."""


def _run_workers(config, app_args: dict, workers: int, threads: int, host: str, port: int, log_level: str,
                 settings: dict) -> int:
    """Serve with ``workers`` processes sharing one listening socket (uvicorn's supervisor,
    which restarts a worker that dies). Each builds its own app (``worker_app``): its own
    model, store connections, ledger writer and breakers. Their metrics meet in a fresh
    temporary folder (``PROMETHEUS_MULTIPROC_DIR``), removed when the server stops."""
    metrics_dir = tempfile.mkdtemp(prefix="lab-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus-client
    os.environ[WORKER_SETTINGS] = json.dumps({"root": str(config.root), "threads": threads, "app": app_args})
    os.environ[WORKERS_ENV] = str(workers)  # /readyz is 200 once this many workers are ready
    os.environ[SUPERVISED_ENV] = "1"  # a worker flagged for a leak may drain and exit: it is started again
    try:
        if workers == 1:  # restart_on_leak with one process (uvicorn.run supervises only two or more)
            run_supervised("plugins.litestar_serving.server:worker_app", host=host, port=port, log_level=log_level,
                           **settings)
        else:
            uvicorn.run("plugins.litestar_serving.server:worker_app", factory=True, workers=workers, host=host,
                        port=port, log_level=log_level, **settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def worker_app():
    """The app of one worker process of ``lab serve --workers N`` (uvicorn's factory)."""
    from lab.config import load_config
    from lab.plugins import get_plugin_manager

    settings = json.loads(os.environ[WORKER_SETTINGS])
    config = load_config(settings["root"])
    _set_threads(settings["threads"])
    app = create_app(config, get_plugin_manager(config), **settings["app"])
    gc.freeze()  # as lab serve does with one process
    return app
