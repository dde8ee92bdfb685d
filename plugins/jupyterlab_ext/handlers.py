"""The REST routes of the JupyterLab extension, under ``<base_url>lab/api/``.

Each route is a jupyter-server ``APIHandler`` behind ``@tornado.web.authenticated`` (a
token or the JupyterLab session, as any of the server's own routes), thin over
``views`` and ``jobs``: it checks its input, runs the lab's core on a worker thread (the
registry's SQLite writes may wait for a lock) and answers JSON. Errors are
``{"error": "sentence naming the fix"}``: 400 for bad input (naming the field), 404 for
an unknown model, experiment, notebook or route (naming what exists), 409 for a change
the lab refuses (a promotion gate, with ``unmet``: the criteria not met; nothing to roll
back to; a stopped experiment; a stage run already going on), 503 when the registry
stayed locked. Bad input is never a 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from lab.errors import ConfigError, LabError, NotFound
from lab.registry import PromotionRefused
from plugins.jupyterlab_ext import views
from plugins.jupyterlab_ext.jobs import Jobs

MAX_REASON = 500  # characters of a reason kept in the history
MAX_LIMIT = 1000  # runs one /runs answer may list


class BadRequest(LabError):
    """The request itself is wrong (a 400): its body, a field or a parameter."""


def _body(handler: APIHandler, allowed: dict[str, str]) -> dict:
    """The request's JSON object; unknown fields are a 400 naming those allowed
    (``allowed``: field -> what it must be)."""
    raw = handler.request.body or b""
    what = ", ".join(f"{k} ({v})" for k, v in allowed.items())
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({exc}); send a JSON object with {what}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object with {what}, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; the fields are {what}")
    return body


def _text(body: dict, field: str, default: str | None = None, *, limit: int = MAX_REASON) -> str:
    value = body.get(field, default)
    if value is None:
        raise BadRequest(f"{field} is required: a string")
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{field} must be a string of at most {limit} characters, got {value!r:.80}")
    return value


def _alias(body: dict) -> str:
    alias = _text(body, "alias", "champion", limit=64)
    if not alias.isidentifier():
        raise BadRequest(f"alias must be an identifier such as champion or challenger, got {alias!r}")
    return alias


def _version(body: dict) -> int:
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadRequest(f"version must be a whole number >= 1 (a registered version, see GET lab/api/models), "
                         f"got {version!r}")
    return version


class LabHandler(APIHandler):
    """What every route shares: the lab, the jobs, the user as actor, the error answers."""

    def initialize(self, lab: views.Lab, jobs: Jobs) -> None:
        self.lab, self.jobs = lab, jobs

    @property
    def actor(self) -> str:
        user = self.current_user
        return views.actor_of(getattr(user, "username", None) or str(user or ""))

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value, default=str))

    def refuse(self, status: int, message: str, **extra: Any) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message, **extra}, default=str))

    async def answer(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``work(*args, **kwargs)`` on a worker thread, its value as JSON; a ``LabError``
        becomes the 4xx (or 503) that names its fix."""
        try:
            value = await asyncio.to_thread(work, *args, **kwargs)
        except PromotionRefused as exc:
            self.refuse(409, str(exc), unmet=[c.to_dict() for c in exc.unmet])
        except (BadRequest, ConfigError) as exc:
            self.refuse(400, str(exc))
        except NotFound as exc:
            self.refuse(404, str(exc))
        except LabError as exc:
            self.refuse(503 if "stayed locked" in str(exc) else 409, str(exc))
        else:
            self.reply(value)


class SummaryHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(views.summary, self.lab)


class RunsHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        raw = self.get_argument("limit", "20")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return self.refuse(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
        await self.answer(views.runs, self.lab, limit)


class ModelsHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(views.models, self.lab)


class PromoteHandler(LabHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        def work():
            body = _body(self, {"version": "a registered version number", "alias": "default champion",
                                "reason": "why, kept in the history"})
            return views.promote(self.lab, name, _version(body), alias=_alias(body), reason=_text(body, "reason", ""),
                                 who=self.actor)

        await self.answer(work)


class RollbackHandler(LabHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        def work():
            body = _body(self, {"alias": "default champion", "reason": "why, kept in the history"})
            return views.rollback(self.lab, name, alias=_alias(body), reason=_text(body, "reason", ""),
                                  who=self.actor)

        await self.answer(work)


class HistoryHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        await self.answer(views.history, self.lab, name)


class ExperimentsHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(views.experiments, self.lab)


class StopExperimentHandler(LabHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        def work():
            body = _body(self, {"reason": "why, kept in the audit log"})
            return views.stop_experiment(self.lab, name, reason=_text(body, "reason", ""), who=self.actor)

        await self.answer(work)


class MonitoringHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(views.monitoring, self.lab)


def _run_stage(lab: views.Lab, jobs: Jobs, handler: APIHandler) -> dict:
    from lab.pipeline.runner import select_stages

    body = _body(handler, {"notebook": "the stage's notebook, relative to the server's root folder"})
    notebook = _text(body, "notebook", None, limit=1000)
    config = lab.config()
    stages = select_stages(config)
    wanted = (lab.server_root / notebook).resolve()
    for stage in stages:
        if (config.root / stage.notebook).resolve() == wanted:
            job = jobs.start(config, stage.name, lab.relative(wanted))
            return {"job": job["id"], "stage": stage.name}
    listed = ", ".join(f"{s.name} ({lab.relative(config.root / s.notebook) or s.notebook})" for s in stages)
    raise NotFound(f"{notebook} is not a stage of this lab's pipeline (notebooks/pipeline.toml); its stages are: "
                   f"{listed or 'none'}. Open one of those notebooks, or add a [[stage]] for this one")


class RunStageHandler(LabHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self.answer(_run_stage, self.lab, self.jobs, self)  # a stage run going on: JobBusy, a 409


def _progress(lab: views.Lab, jobs: Jobs) -> dict:
    config = lab.config()
    try:
        from lab.pipeline.progress import read_progress
    except ImportError:  # the runner's progress files come with lab.pipeline.progress
        progress = {"run_id": None, "stages": []}
    else:
        progress = read_progress(config)
    return {**progress, "job": jobs.latest(config)}


class ProgressHandler(LabHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(_progress, self.lab, self.jobs)


ROUTES = {
    "summary": SummaryHandler,
    "runs": RunsHandler,
    "models": ModelsHandler,
    r"models/(?P<name>[^/]+)/promote": PromoteHandler,
    r"models/(?P<name>[^/]+)/rollback": RollbackHandler,
    r"models/(?P<name>[^/]+)/history": HistoryHandler,
    "experiments": ExperimentsHandler,
    r"experiments/(?P<name>[^/]+)/stop": StopExperimentHandler,
    "monitoring": MonitoringHandler,
    "stages/run": RunStageHandler,
    "progress": ProgressHandler,
}


def setup_handlers(serverapp) -> None:
    """Add the routes to the server's web app, for the lab found from its root folder."""
    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    lab = views.Lab(serverapp.root_dir, base_url)
    args = {"lab": lab, "jobs": Jobs()}
    handlers = [(url_path_join(base_url, "lab/api", route), handler, args) for route, handler in ROUTES.items()]
    rules = web_app.default_router.rules
    before = list(rules)
    web_app.add_handlers(".*$", handlers)
    # JupyterLab's extension, loaded first, ends its routes with a catch-all lab/.* (its
    # "not found" page), which would answer ours: our rule goes first. Only these exact
    # paths, none of JupyterLab's own under lab/api/ (settings, workspaces, themes...).
    added = [rule for rule in rules if not any(rule is old for old in before)]
    for rule in added:
        rules.remove(rule)
    rules[0:0] = added
