"""``lab keys create|list|revoke`` (the server's API keys) and ``lab audit`` (what was
done through the server's admin routes, by which key). Named in ``lab/commands.py``."""

from __future__ import annotations

import argparse
import json

from lab.cli import Context
from lab.errors import ConfigError
from lab.serving.keys import SCOPES, KeyStore, keys_path

ADMIN_EVENT_PREFIX = "admin."
"""Registry event kinds of the server's admin routes: ``admin.promote``, ``admin.rollback``,
``admin.flags``, ``admin.shadow`` and ``admin.denied`` (a key without the scope asked)."""


def _short_time(at: str | None) -> str:
    return (at or "-")[:19].replace("T", " ")


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="who the key is for (e.g. deploy-bot); its actions are audited as key:NAME")
    p.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                   help="what it may do, repeatable or comma-separated: " + "; ".join(
                       f"{name} ({what})" for name, what in SCOPES.items()))


def _create_run(args: argparse.Namespace, ctx: Context) -> int:
    with KeyStore.open(keys_path(ctx.config)) as store:
        key, raw = store.create(args.name, ",".join(args.scope))
    print(f"created key {key.name} (id {key.id}) with scope(s) {', '.join(key.scopes)} in {store.path}")
    print("the key, shown this once (only its SHA-256 is stored); send it as `Authorization: Bearer KEY` "
          "or `X-API-Key: KEY`:")
    print(raw)
    return 0


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", action="store_true", help="only keys not revoked")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _list_run(args: argparse.Namespace, ctx: Context) -> int:
    path = keys_path(ctx.config)
    if not path.exists():
        keys = []
    else:
        with KeyStore.open(path, create=False) as store:
            keys = store.list(include_revoked=not args.live)
    if args.json:
        print(json.dumps([k.to_dict() for k in keys], indent=2))
        return 0
    if not keys:
        print(f"no {'live ' if args.live else ''}API keys: the server's admin routes refuse every request; create "
              "one with `lab keys create NAME --scope admin`")
    for k in keys:
        state = "live" if k.live else f"revoked {_short_time(k.revoked_at)} by {k.revoked_by}"
        print(f"{k.id}  {k.name:<20} {','.join(k.scopes):<24} created {_short_time(k.created_at)} by "
              f"{k.created_by}  {state}")
    return 0


def _revoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the key's name or id (see `lab keys list`)")
    p.add_argument("--reason", default="", help="why, kept with the key")


def _revoke_run(args: argparse.Namespace, ctx: Context) -> int:
    with KeyStore.open(keys_path(ctx.config)) as store:
        key = store.revoke(args.name, reason=args.reason)
    print(f"revoked key {key.name} (id {key.id}); a running server refuses it from its next request")
    return 0


# -- lab audit ----------------------------------------------------------------------------


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="how many of the latest admin actions (default: 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def admin_events(registry, limit: int) -> list[dict]:
    """The latest ``limit`` admin events of the registry's audit log, oldest first."""
    kinds = [f"{ADMIN_EVENT_PREFIX}{k}" for k in ("promote", "rollback", "flags", "shadow", "denied")]
    rows = [row for kind in kinds for row in registry.events(kind, limit)]
    return sorted(rows, key=lambda r: r["id"])[-limit:]


def _state(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) if value is not None else "-"


def _audit_run(args: argparse.Namespace, ctx: Context) -> int:
    from lab.registry import Registry  # only when the command runs

    if args.limit < 1:
        raise ConfigError(f"--limit must be 1 or more, got {args.limit}")
    if not ctx.config.registry_path.exists():
        rows = []
    else:
        with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as registry:
            rows = admin_events(registry, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no admin actions recorded yet (the server's /admin routes record each one here)")
    for r in rows:
        p = r["payload"]
        change = (f"needed scope {p.get('scope')}" if r["kind"] == "admin.denied"
                  else f"{_state(p.get('before'))} -> {_state(p.get('after'))}")
        reason = f"  {p['reason']}" if p.get("reason") else ""
        print(f"{_short_time(r['at'])}  {r['kind']:<14} {r['subject'] or '-':<16} by {r['actor']:<16} "
              f"{change}  request {p.get('request_id') or '-'}{reason}")
    return 0
