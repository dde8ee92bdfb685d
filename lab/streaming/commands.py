"""``lab stream run``, ``lab stream publish`` and ``lab stream status`` (named in lab.commands)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from pathlib import Path

from lab.config import MODEL_CHANGE_POLICIES
from lab.errors import LabError


def _stream_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream", help="the stream (default: [tool.lab.stream] stream)")


def run_args(p: argparse.ArgumentParser) -> None:
    _stream_arg(p)
    p.add_argument("--group", help="the consumer group (default: [tool.lab.stream] group)")
    p.add_argument("--consumer", default=socket.gethostname(),
                   help="this consumer's name in its group (default: the host name; a restart under the same "
                        "name takes back what it held at once)")
    p.add_argument("--model", help="MODEL@ALIAS or MODEL@VERSION (default: [tool.lab.stream] model, else "
                                   "model_name@champion)")
    p.add_argument("--batch-size", type=int, help="events in flight at most (default: [tool.lab.stream] batch_size)")
    p.add_argument("--on-model-change", choices=MODEL_CHANGE_POLICIES,
                   help="forward: new events get the new version; rescore: also the backlog since the alias moved")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics (lab_stream_lag, ...) on "
                                                     "127.0.0.1:PORT")
    p.add_argument("--drain", action="store_true", help="stop once the group has caught up (lag 0)")
    p.add_argument("--no-ledger", action="store_true", help="do not append predictions to the prediction ledger")


def run_run(args: argparse.Namespace, ctx) -> int:
    from lab.streaming.consumer import ConsumerOptions, StreamConsumer
    from lab.streaming.metrics import StreamMetrics

    options = ConsumerOptions.from_config(
        ctx.config, stream=args.stream, group=args.group, consumer=args.consumer, model=args.model,
        batch_size=args.batch_size, on_model_change=args.on_model_change, ledger=not args.no_ledger)
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise LabError(f"--metrics-port must be a port number (1-65535), not {args.metrics_port}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then stop
        signal.signal(sig, lambda *_: stop.set())
    metrics = StreamMetrics(options.stream, options.group, args.metrics_port)
    try:
        with StreamConsumer(ctx.config, ctx.pm, options, metrics=metrics) as consumer:
            print(f"lab stream: {options.stream} ({consumer.log.describe()}) as {options.group}/{options.consumer}, "
                  f"{consumer.model_name} v{consumer.version}, on model change: {options.on_model_change}"
                  + (f", metrics on 127.0.0.1:{args.metrics_port}" if args.metrics_port else ""),
                  file=sys.stderr, flush=True)
            summary = consumer.run(stop, drain=args.drain)
    finally:
        metrics.close()
    print(json.dumps(summary, sort_keys=True))
    return 0


def publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a JSON Lines file, one event (a JSON object of the request's fields) a line; "
                                "- for standard input")
    _stream_arg(p)


def _read_events(name: str) -> list[dict]:
    if name == "-":
        lines, where = sys.stdin.read().splitlines(), "standard input"
    else:
        path = Path(name)
        if not path.is_file():
            raise LabError(f"no file {name}: give a JSON Lines file of events, or - for standard input")
        lines, where = path.read_text().splitlines(), name
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise LabError(f"{where} line {number} is not JSON ({exc}); nothing was appended") from None
        if not isinstance(event, dict):
            raise LabError(f"{where} line {number} is not a JSON object but {type(event).__name__}; "
                           "nothing was appended")
        events.append(event)
    return events


def publish_run(args: argparse.Namespace, ctx) -> int:
    from lab.streaming.consumer import open_event_log

    events = _read_events(args.file)
    with open_event_log(ctx.config, ctx.pm, args.stream) as log:
        ids = log.append(events) if events else []
        print(f"appended {len(ids)} event(s) to stream {log.stream}"
              + (f" (ids {ids[0]} .. {ids[-1]})" if ids else ""))
    return 0


def status_args(p: argparse.ArgumentParser) -> None:
    _stream_arg(p)
    p.add_argument("--group", help="only this consumer group")
    p.add_argument("--json", action="store_true", help="print JSON")


def status(config, pm, stream: str | None = None, group: str | None = None) -> dict:
    """The stream's length and, per consumer group, its lag, predictions, dead letters and model."""
    from lab.streaming.consumer import open_event_log
    from lab.streaming.store import StreamStore

    log = open_event_log(config, pm, stream, create=False)
    if log is None:  # the embedded log was never written to: nothing to report, and nothing to create
        return {"stream": stream or config.stream.stream, "length": 0,
                "backend": f"sqlite {config.stream_path} (not created yet)",
                "groups": [{"group": group, "lag": 0}] if group else []}
    with log:
        groups = [g for g in log.groups() if group is None or g["group"] == group]
        if group is not None and not groups:
            groups = [{"group": group, "lag": log.lag(group)}]
        out = {"stream": log.stream, "backend": log.describe(), "length": log.length(), "groups": groups}
    if config.stream_path.exists():
        with StreamStore(config.stream_path) as store:
            for g in groups:
                g.update(store.counts(out["stream"], g["group"]))
                state = store.model_state(out["stream"], g["group"])
                g["model"] = f"{state['model_name']} v{state['model_version']}" if state else None
                changes = store.model_changes(out["stream"], g["group"])
                g["last_model_change"] = changes[-1] if changes else None
    return out


def status_run(args: argparse.Namespace, ctx) -> int:
    out = status(ctx.config, ctx.pm, args.stream, args.group)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"stream {out['stream']} ({out['backend']}): {out['length']} event(s)")
    if not out["groups"]:
        print("  no consumer group yet: `lab stream run` starts one")
    for g in out["groups"]:
        line = f"  group {g['group']}: lag {g['lag']}"
        for key in ("predictions", "dead_letters", "model_changes"):
            if key in g:
                line += f", {key.replace('_', ' ')} {g[key]}"
        if g.get("model"):
            line += f", model {g['model']}"
        print(line)
        change = g.get("last_model_change")
        if change:
            print(f"    last model change {change['at']}: v{change['from_version']} -> v{change['to_version']}, "
                  f"{change['policy']}, {change['rescored']} re-scored")
    return 0
