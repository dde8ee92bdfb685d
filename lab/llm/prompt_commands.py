"""``lab prompt list|show|register|promote|render`` and ``lab llm calls``.

Named by ``lab.commands`` as ``"module:function"``, so this module loads only when one
of them runs. Aliases move with ``lab prompt promote`` (default alias ``production``);
``lab rollback NAME --alias production`` and ``lab history NAME`` are the registry's own.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from lab import events
from lab.errors import LabError, NotFound
from lab.llm.ledger import LLMLedger, ledger_path
from lab.llm.prompts import (
    DEFAULT_ALIAS,
    FLAVOR,
    load_prompt,
    prompt_names,
    read_prompt,
    register_prompt,
    render,
)
from lab.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from lab.cli import Context


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _registered(ctx: "Context") -> dict[str, dict]:
    """``{name: {"versions": [ModelVersion], "aliases": {alias: version}}}`` of every prompt."""
    config = ctx.config
    if not config.registry_path.exists():
        return {}
    out: dict[str, dict] = {}
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        for model in registry.list_models():
            versions = registry.list_model_versions(model["name"])
            if versions and versions[-1].flavor == FLAVOR:
                out[model["name"]] = {"versions": versions, "aliases": registry.aliases(model["name"])}
    return out


def list_args(p: argparse.ArgumentParser) -> None:
    _json_arg(p)


def list_run(args: argparse.Namespace, ctx: "Context") -> int:
    """Every prompt file and registered prompt: working hash, whether it is registered, aliases."""
    registered = _registered(ctx)
    rows = []
    for name in sorted(set(prompt_names(ctx.config)) | set(registered)):
        try:
            working = read_prompt(ctx.config, name).hash
        except NotFound:
            working = None
        entry = registered.get(name, {"versions": [], "aliases": {}})
        held = next((v.version for v in entry["versions"] if v.lineage.get("prompt_hash") == working), None)
        rows.append({"name": name, "hash": working, "registered_as": held,
                     "versions": len(entry["versions"]), "aliases": entry["aliases"]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no prompts: write {ctx.config.root.name}/prompts/NAME.md, then `lab prompt register NAME`")
        return 0
    print(f"{'prompt':<20} {'working hash':<17} {'registered':<11} {'versions':>8}  aliases")
    for r in rows:
        state = "no file" if r["hash"] is None else (f"v{r['registered_as']}" if r["registered_as"] else "new")
        aliases = ", ".join(f"{a}=v{v}" for a, v in r["aliases"].items()) or "-"
        print(f"{r['name']:<20} {r['hash'] or '-':<17} {state:<11} {r['versions']:>8}  {aliases}")
    return 0


def _which_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="prompt name (the file prompts/NAME.md)")
    p.add_argument("--alias", help="a registered version by alias (e.g. production); default: the working file")
    p.add_argument("--version", type=int, help="a registered version by number; default: the working file")


def _which(args: argparse.Namespace, ctx: "Context"):
    if args.alias is not None and args.version is not None:
        raise LabError("--alias and --version both name a registered version; give one")
    if args.version is not None:
        return load_prompt(ctx.config, args.name, args.version)
    if args.alias is not None:
        return load_prompt(ctx.config, args.name, args.alias)
    return read_prompt(ctx.config, args.name)


def show_args(p: argparse.ArgumentParser) -> None:
    _which_args(p)
    _json_arg(p)


def show_run(args: argparse.Namespace, ctx: "Context") -> int:
    """A prompt's front matter, variables, hash, source and text."""
    prompt = _which(args, ctx)
    if args.json:
        print(json.dumps({"name": prompt.name, "version": prompt.version, "hash": prompt.hash,
                          "source": prompt.source, "params": prompt.params, "variables": list(prompt.variables),
                          "body": prompt.body}, indent=2, default=str))
        return 0
    where = f"v{prompt.version}" if prompt.version is not None else "working file"
    print(f"prompt    {prompt.name} ({where}) {prompt.source}")
    print(f"hash      {prompt.hash}")
    print(f"variables {', '.join(prompt.variables) or '-'}")
    for key, value in prompt.params.items():
        print(f"  {key} = {value!r}")
    print("---")
    print(prompt.body, end="")
    return 0


def register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="prompt name (the file prompts/NAME.md)")


def register_run(args: argparse.Namespace, ctx: "Context") -> int:
    """Register the working file as the next version, unless its hash is registered already."""
    version, created = register_prompt(ctx.config, args.name)
    digest = version.lineage.get("prompt_hash")
    if not created:
        print(f"{args.name}: unchanged (hash {digest} is version {version.version}); nothing registered")
        return 0
    print(f"{args.name}: registered version {version.version} (hash {digest}) at {version.artifact_path}; "
          f"serve it with `lab prompt promote {args.name} {version.version}`")
    events.emit(ctx.pm, events.MODEL_REGISTERED, model=args.name, version=version.version, flavor=FLAVOR,
                hash=digest)
    return 0


def promote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="prompt name")
    p.add_argument("version", type=int, help="registered version (see `lab prompt list` / `lab models NAME`)")
    p.add_argument("--alias", default=DEFAULT_ALIAS,
                   help=f"alias to move (default: {DEFAULT_ALIAS}; e.g. candidate for a trial)")
    p.add_argument("--reason", default="", help="why, kept in the alias history")


def promote_run(args: argparse.Namespace, ctx: "Context") -> int:
    """Point an alias of a prompt at a version (the registry's alias events: history, rollback)."""
    config = ctx.config
    if not config.registry_path.exists():
        raise LabError(f"no registry at {config.registry_path}: register the prompt first with "
                       f"`lab prompt register {args.name}`")
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        target = registry.get_model_version(args.name, args.version)
        if target.flavor != FLAVOR:
            raise LabError(f"{args.name!r} is a model of flavor {target.flavor!r}; promote it with `lab promote`")
        event = registry.promote(args.name, args.version, alias=args.alias, reason=args.reason,
                                 gate=config.gate)
    if event is None:
        print(f"{args.name}: version {args.version} is already {args.alias}; nothing changed")
        return 0
    previous = event["from_version"]
    was = f" (was version {previous})" if previous is not None else " (first time set)"
    print(f"{args.name}: {args.alias} -> version {args.version}{was}")
    events.emit(ctx.pm, events.MODEL_PROMOTED, model=args.name, version=args.version, alias=args.alias,
                previous=previous)
    return 0


def render_args(p: argparse.ArgumentParser) -> None:
    _which_args(p)
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a variable's value (repeat for each; VALUE as text)")
    p.add_argument("--vars", metavar="FILE", help="variables from a JSON object file (lists of texts allowed)")
    _json_arg(p)


def render_run(args: argparse.Namespace, ctx: "Context") -> int:
    """Render a prompt (the working file, or a registered version) with variables."""
    prompt = _which(args, ctx)
    variables: dict = {}
    if args.vars:
        try:
            with open(args.vars, encoding="utf-8") as fh:
                variables = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise LabError(f"--vars {args.vars}: cannot read a JSON object ({exc})") from None
        if not isinstance(variables, dict):
            raise LabError(f"--vars {args.vars} must hold a JSON object {{\"name\": value}}")
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LabError(f"--var {item!r} must be NAME=VALUE")
        variables[name] = value
    messages = render(prompt, variables)
    if args.json:
        print(json.dumps([{"role": m.role, "content": m.content} for m in messages], indent=2))
        return 0
    for message in messages:
        print(f"### {message.role}\n{message.content}")
    return 0


def calls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--last", type=int, default=20, metavar="N", help="how many rows (default 20)")
    p.add_argument("--prompt", help="only this prompt's calls")
    p.add_argument("--status", help="only calls with this status (ok, refused_rate, refused_spend, error, ...)")
    p.add_argument("--totals", action="store_true", help="totals per prompt and version instead of rows")
    _json_arg(p)


def calls_run(args: argparse.Namespace, ctx: "Context") -> int:
    """The LLM ledger's newest calls, or totals per prompt version."""
    path = ledger_path(ctx.config)
    if not path.exists():
        print(f"no LLM calls recorded yet ({path.relative_to(ctx.config.root)} does not exist)")
        return 0
    if args.last < 1:
        raise LabError(f"--last must be 1 or more, got {args.last}")
    with LLMLedger(path) as ledger:
        rows = (ledger.totals(prompt=args.prompt, status=args.status) if args.totals
                else ledger.calls(args.last, prompt=args.prompt, status=args.status))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if args.totals:
        print(f"{'prompt':<24} {'calls':>6} {'ok':>5} {'cached':>6} {'refused':>7} {'errors':>6} "
              f"{'tok in':>8} {'tok out':>8} {'cost $':>10} {'mean ms':>8}")
        for r in rows:
            name = f"{r['prompt_name'] or '-'}" + (f" v{r['prompt_version']}" if r["prompt_version"] else "")
            mean = r["mean_latency_ms"]
            print(f"{name:<24} {r['calls']:>6} {r['ok']:>5} {r['cached']:>6} {r['refused']:>7} {r['errors']:>6} "
                  f"{r['input_tokens']:>8} {r['output_tokens']:>8} {r['cost_usd']:>10.6f} "
                  f"{'-' if mean is None else f'{mean:.1f}':>8}")
        return 0
    print(f"{'at':<20} {'status':<13} {'prompt':<18} {'model':<14} {'in':>5} {'out':>5} {'cost $':>9} "
          f"{'ms':>7}  output")
    for r in rows:
        name = f"{r['prompt_name'] or '-'}" + (f"@v{r['prompt_version']}" if r["prompt_version"] else "")
        text = (r["output"] or r["error"] or "").replace("\n", " ")
        ms = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}"
        print(f"{r['at'][:19]:<20} {r['status'] + ('*' if r['cached'] else ''):<13} {name:<18} "
              f"{(r['model'] or '-'):<14} {r['input_tokens']:>5} {r['output_tokens']:>5} {r['cost_usd']:>9.6f} "
              f"{ms:>7}  {text[:60]}")
    return 0
