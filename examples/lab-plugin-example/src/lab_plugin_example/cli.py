"""``lab json-online``: what the JSON online store holds, one line per view version."""

from __future__ import annotations

import argparse
import json

from lab.cli import Context
from lab.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.config.section("json_online")
    if settings is None:
        raise ConfigError("this lab has no [tool.lab.json_online] table; add one (path = \"data/online-json\") "
                          "to keep its online features in JSON files")
    from lab_plugin_example.store import JsonOnlineStore

    rows = JsonOnlineStore(ctx.config.root / settings.get("path", "data/online-json")).summary()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no view materialized yet: run `lab features materialize`")
    for row in [] if args.json else rows:
        print(f"{row['view']:<24} {row['version'][:12]:<13} {row['rows']:>8} rows  as of {row['watermark']}")
    return 0
