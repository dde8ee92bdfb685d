"""The core's ``lab`` subcommands, contributed through ``lab_cli_commands`` like a plugin's.

This module is the built-in plugin ``lab_commands`` (``lab.plugins.DEFAULT_PLUGINS``):
``plugins`` and ``run`` live here; the registry's, the feature store's and the
experiments' commands live beside their code; ``lab init`` in ``lab.scaffold``. The
CLI (``lab.cli``) imports none of them: it asks the plugin manager. Each command keeps
its heavy imports inside ``run``, so building the parser loads no data library.
"""

from __future__ import annotations

import argparse
import json
import time

from lab import hookimpl
from lab.cli import Command, Context
from lab.experiments.commands import COMMANDS as EXPERIMENT_COMMANDS
from lab.features.commands import COMMANDS as FEATURE_COMMANDS
from lab.pipeline.runner import run_pipeline
from lab.plugins import plugin_table
from lab.registry.commands import COMMANDS as REGISTRY_COMMANDS
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


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stages", nargs="*", help="run only these stages (default: all, in order)")
    p.add_argument("--force", action="store_true", help="run stages even when nothing changed")
    p.add_argument("--new", action="store_true", help="start a new run instead of resuming a stopped one")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a [tool.lab] setting for this run only, e.g. train.seed=7 (a TOML value; "
                        "repeatable); the stages that receive it rerun")


def _run_run(args: argparse.Namespace, ctx: Context) -> int:
    started = time.perf_counter()
    from lab.config import apply_overrides

    result = run_pipeline(apply_overrides(ctx.config, args.set), ctx.pm, only=args.stages or None,
                          force=args.force, new_run=args.new)
    ran = sum(1 for s in result.stages if s.status == "finished")
    skipped = sum(1 for s in result.stages if s.status == "skipped")
    print(f"run {result.run_id}: {ran} stage(s) ran, {skipped} skipped, "
          f"{time.perf_counter() - started:.1f} s; notebooks in {result.run_dir}")
    _print_champion(ctx)
    return 0


def _print_champion(ctx: Context) -> None:
    from lab.registry import Registry

    with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as registry:
        champion = registry.get_alias(ctx.config.model_name, "champion")
    if champion is None:
        print(f"model {ctx.config.model_name!r} has no champion yet")
        return
    m = champion.metrics
    print(f"champion {champion.name} v{champion.version} on the reference test window: "
          f"AUC {m.get('roc_auc', float('nan')):.4f}  AP {m.get('average_precision', float('nan')):.4f}  "
          f"CP@100 {m.get('card_precision_at_100', float('nan')):.4f}")


COMMANDS: list[Command] = [
    Command("plugins", "list loaded plugins with their versions and hooks", _plugins_args, _plugins_run),
    Command("run", "run the notebook pipeline; unchanged stages are skipped, a stopped run resumes",
            _run_args, _run_run),
    *REGISTRY_COMMANDS,
    *FEATURE_COMMANDS,
    *EXPERIMENT_COMMANDS,
    INIT_COMMAND,
]


@hookimpl(tryfirst=True)
def lab_cli_commands():
    """The core's commands, first in ``lab --help``."""
    return list(COMMANDS)
