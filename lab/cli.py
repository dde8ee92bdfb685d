"""The ``lab`` command line: ``Command``, ``Context`` and ``main``.

Every command, the core's included, comes from a plugin's ``lab_cli_commands`` (the
core's from ``lab.commands``, registered as the built-in plugin ``lab_commands``); this
module imports no command module. A command may name its functions as
``"module:function"``: the module is imported, and the command's arguments added, only
when that command runs or shows its own help, so ``lab --help`` stays fast. Every
``LabError`` becomes a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lab.config import load_config
from lab.errors import LabError
from lab.plugins import get_plugin_manager


@dataclass(frozen=True)
class Command:
    """A ``lab`` subcommand. ``name`` may have two words (``"features training-set"``).

    ``add_arguments(parser)`` adds its arguments; ``run(args, ctx)`` returns an exit
    status (None means 0); ``ctx`` is a ``Context``. Either may be a function or the
    string ``"package.module:function"``, imported on first use.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | str
    run: Callable[[argparse.Namespace, "Context"], int | None] | str


def resolve(command: Command, what: str) -> Callable:
    """``command.add_arguments`` or ``command.run`` as a function, importing its module if named."""
    target = getattr(command, what)
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise LabError(f"the command 'lab {command.name}' names {target!r} for {what}, which cannot be "
                       f"loaded ({exc}); fix the plugin that defines it (see `lab plugins`)") from None


class _CommandParser(argparse.ArgumentParser):
    """A command's parser, whose arguments are added on first use: when it parses or
    prints its usage, not when ``lab``'s whole parser is built."""

    def __init__(self, *args: Any, command: Command | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pending = command

    def _complete(self) -> None:
        if self._pending is not None:
            command, self._pending = self._pending, None
            resolve(command, "add_arguments")(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


class Context:
    """What a command runs against: the config and plugin manager, built on first use."""

    def __init__(self, root: str | None = None):
        self._root = root
        self._config = None
        self._pm = None

    @property
    def config(self):
        if self._config is None:
            self._config = load_config(self._root)
        return self._config

    @property
    def pm(self):
        if self._pm is None:
            self._pm = get_plugin_manager(self.config)
        return self._pm


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lab", description="A local-first ML platform.")
    parser.add_argument("--root", help="project folder (default: LAB_HOME or the nearest pyproject.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    groups: dict[str, Any] = {}
    seen: set[str] = set()
    for cmd in commands:
        if cmd.name in seen:
            raise LabError(f"two plugins define the command 'lab {cmd.name}'; rename one")
        seen.add(cmd.name)
        words = cmd.name.split()
        if len(words) == 1:
            p = sub.add_parser(words[0], help=cmd.help, description=cmd.help, command=cmd)
        else:
            group, leaf = words[0], " ".join(words[1:])
            if group not in groups:
                gp = sub.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True,
                                                  parser_class=_CommandParser)
            p = groups[group].add_parser(leaf, help=cmd.help, description=cmd.help, command=cmd)
        p.set_defaults(_command=cmd)
    return parser


def top_level_help(root: str | None = None) -> str:
    """``lab --help``'s text: every command the lab's plugins define (lab.launch caches it)."""
    ctx = Context(root)
    return build_parser([cmd for batch in ctx.pm.hook.lab_cli_commands() for cmd in (batch or [])]).format_help()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --root must be known before plugins load, since plugins come from the project.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--root")
    known, _ = pre.parse_known_args(argv)
    ctx = Context(known.root)
    try:
        # The core's commands come first (lab.commands answers tryfirst), then the plugins'.
        commands = [cmd for batch in ctx.pm.hook.lab_cli_commands() for cmd in (batch or [])]
        parser = build_parser(commands)
        args = parser.parse_args(argv)
        if not getattr(args, "_command", None):
            parser.print_help()
            return 2
        status = resolve(args._command, "run")(args, ctx)
        return int(status or 0)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
