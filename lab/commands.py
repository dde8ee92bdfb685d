"""Core ``lab`` subcommands: plugins, run, promote, rollback, features, models."""

from __future__ import annotations

import argparse

from lab.cli import Command, Context


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plugins_run(args: argparse.Namespace, ctx: Context) -> int:
    import json

    from lab.plugins import plugin_table

    rows = plugin_table(ctx.pm)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<22} {row['version']:<16} {', '.join(row['hooks'])}")
    return 0


COMMANDS: list[Command] = [
    Command("plugins", "list loaded plugins with their versions and hooks", _plugins_args, _plugins_run),
]
