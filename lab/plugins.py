"""The plugin manager: built-ins, then entry points, then the project's own plugins."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import pluggy

from lab import __version__, hookspecs
from lab.errors import ConfigError

# Built-in backends, registered under their entry-point names so the entry-point scan
# (which also lists them once the project is installed) does not load them twice. Labs'
# own plugins (the demo labs, templates) are not backends: they come through their entry
# points, exactly like a third-party plugin.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("lab_core", "lab.pipeline.core_hooks"),
    ("lab_commands", "lab.commands"),
    ("duckdb_offline", "plugins.duckdb_offline"),
    ("sqlite_online", "plugins.sqlite_online"),
    ("papermill_executor", "plugins.papermill_executor"),
    ("lightning_tabular", "plugins.lightning_tabular"),
    ("litestar_serving", "plugins.litestar_serving"),
    ("evidently_drift", "plugins.evidently_drift"),
)


class LabPluginManager(pluggy.PluginManager):
    """A pluggy manager whose ``register`` names the fix for common mistakes.

    ``local_plugins`` maps each project plugin ([tool.lab] plugins, imported from the
    project folder) to its module file, so ``lab plugins`` can show it as local."""

    def __init__(self, project_name: str):
        super().__init__(project_name)
        self.local_plugins: dict[str, str | None] = {}

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        if inspect.isclass(plugin):
            raise ConfigError(
                f"register() got the class {plugin.__name__}, not an instance: "
                f"have you forgotten the ()? Use register({plugin.__name__}())."
            )
        return super().register(plugin, name)


def _trace(pm: pluggy.PluginManager) -> None:
    def before(hook_name, hook_impls, kwargs):
        names = [impl.plugin_name for impl in hook_impls]
        print(f"[lab hook] {hook_name} -> {names}", file=sys.stderr)

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        status = f"raised {type(exc).__name__}" if exc else "ok"
        print(f"[lab hook] {hook_name} {status}", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def make_plugin_manager(
    project_plugins: tuple[str, ...] = (),
    *,
    builtins: bool = True,
    entry_points: bool = True,
) -> LabPluginManager:
    """Build a plugin manager.

    ``builtins=False, entry_points=False`` gives a bare manager (tests, plugin authors).
    ``project_plugins`` are module names imported from the project root.
    """
    pm = LabPluginManager("lab")
    pm.add_hookspecs(hookspecs)
    if builtins:
        for name, module in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints("lab")
    for module in project_plugins:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import project plugin {module!r} listed in [tool.lab] plugins: {exc}. "
                "Check the module name and that it sits in the project folder."
            ) from None
        if pm.get_plugin(module) is None:
            pm.register(mod, name=module)
            pm.local_plugins[module] = getattr(mod, "__file__", None)
    if os.environ.get("LAB_TRACE_HOOKS"):
        _trace(pm)
    return pm


def get_plugin_manager(config) -> LabPluginManager:
    """The plugin manager for a lab: built-ins, entry points, then [tool.lab] plugins."""
    root = str(config.root)
    if config.plugins and root not in sys.path:
        sys.path.insert(0, root)
    return make_plugin_manager(tuple(config.plugins))


def _local_file(module: str, file: str | None) -> str:
    """A project plugin's file as named from the project folder (``pkg/hooks.py``)."""
    if not file:
        return module
    path = Path(file)
    depth = len(module.split(".")) + (path.name == "__init__.py")
    return Path(*path.parts[-depth:]).as_posix()


def plugin_table(pm: pluggy.PluginManager) -> list[dict]:
    """One row per plugin: its name, version and hooks, for ``lab plugins``. The version
    is the distribution's for an installed plugin, ``local (FILE)`` (or ``VERSION (local
    FILE)`` when it sets ``__version__``) for a project plugin, else lab's own."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    local = getattr(pm, "local_plugins", {})
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if name in local:
            where = _local_file(name, local[name])
            own = getattr(plugin, "__version__", None)
            version = f"{own} (local {where})" if own else f"local ({where})"
        elif dist is not None:
            version = f"{dist.project_name} {dist.version}"
        else:
            version = getattr(plugin, "__version__", None) or f"lab {__version__}"
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "version": version, "hooks": hooks})
    return sorted(rows, key=lambda r: r["name"])


def _by_name(batches, what: str) -> dict:
    """Every plugin's contributions by ``.name``; a name given twice is an error naming ``what``."""
    found: dict = {}
    for batch in batches:
        for item in batch or []:
            if item.name in found:
                raise ConfigError(f"{what} {item.name!r} is defined by two plugins; rename one")
            found[item.name] = item
    return found


def feature_views(pm, config) -> dict:
    """Every plugin's feature views by name; a name defined twice is an error. A view
    named in ``[tool.lab.freshness]`` gets that freshness objective (its version stays)."""
    views = _by_name(pm.hook.lab_feature_views(config=config), "feature view")
    objectives = config.section("freshness") if config is not None else None
    return _with_freshness(views, objectives) if objectives else views


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _with_freshness(views: dict, objectives: dict) -> dict:
    """``views`` with the objectives of ``[tool.lab.freshness]`` (view = "15m", "2h", "1d"
    or seconds) set; an unknown view or a bad duration is a ConfigError naming it."""
    import dataclasses
    import datetime as dt

    out = dict(views)
    for name, value in objectives.items():
        if name not in views:
            raise ConfigError(f"[tool.lab.freshness] names view {name!r}, which no loaded plugin defines; "
                              f"views: {', '.join(sorted(views)) or 'none'}")
        text = str(value).strip().lower()
        unit = _SECONDS.get(text[-1:])
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1)
        except ValueError:
            seconds = float("nan")
        if isinstance(value, bool) or not 0 < seconds < float("inf"):
            raise ConfigError(f"[tool.lab.freshness] {name} = {value!r} is not a positive duration; write "
                              "seconds or a number with s, m, h or d (\"15m\", \"2h\", \"1d\")")
        out[name] = dataclasses.replace(views[name], freshness=dt.timedelta(seconds=seconds))
    return out


def model_flavor(pm, name: str):
    """The model flavor called ``name``; the error lists the flavors there are."""
    flavors = {f.name: f for batch in pm.hook.lab_model_flavors() for f in (batch or [])}
    if name not in flavors:
        raise ConfigError(
            f"no model flavor {name!r}; loaded flavors: {', '.join(sorted(flavors)) or 'none'}"
        )
    return flavors[name]


def model_specs(pm, config) -> dict:
    """Every plugin's model specs by name; a name declared twice is an error."""
    return _by_name(pm.hook.lab_model_specs(config=config), "model")


def model_spec(pm, config, name: str | None = None):
    """The spec of model ``name`` (default: ``[tool.lab] model_name``, or the lab's only model)."""
    specs = model_specs(pm, config)
    name = name or config.model_name
    if name is None:
        if len(specs) == 1:
            return next(iter(specs.values()))
        raise ConfigError(
            f"this lab declares {len(specs)} models ({', '.join(sorted(specs)) or 'none'}); "
            "set [tool.lab] model_name or pass the model's name")
    if name not in specs:
        raise ConfigError(
            f"no plugin declares model {name!r} (lab_model_specs); declared: {', '.join(sorted(specs)) or 'none'}. "
            "Check [tool.lab] model_name and that the lab's plugin is listed in [tool.lab] plugins")
    return specs[name]
