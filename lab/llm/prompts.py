"""Prompts as code: templates under version control, rendered, hashed and registered.

A prompt is a file ``prompts/<name>.md`` under the lab root (``[tool.lab.llm]
prompts_dir``)::

    +++
    model = "extractive"
    temperature = 0.0
    max_tokens = 200
    output_reserve = 256   # tokens kept free for the answer (the token budget reads it)
    k = 4                  # passages to retrieve for it
    tone = "plain"         # anything else is kept in ``params``
    +++
    ### system
    Answer from the passages only.
    ### user
    {{question}}

The TOML front matter between two ``+++`` lines is optional; the body holds ``{{var}}``
placeholders. Lines ``### system``, ``### user`` (and ``### assistant``) split it into
messages; without them the whole body is the user message.

Its content hash is the first 16 hex digits of the SHA-256 of its canonical text: the
front matter as sorted JSON, a newline, then the body with ``\\n`` line ends and no
trailing blank space. Comments or key order in the front matter do not change it; any
change to a value or to the body does.

Registered, a prompt is a registry model of flavor ``prompt``: its text copied into
``runs/prompts/<name>/<hash>/prompt.md``, its lineage the hash and the source path, no
metrics. So aliases (``production``, ``candidate``, any), ``lab history`` and ``lab
rollback NAME --alias production`` work as for any model. Registering an unchanged text
again registers nothing and says which version already holds it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lab.atomic import atomic_write_text
from lab.errors import ConfigError, LabError, NotFound
from lab.llm.settings import llm_settings
from lab.llm.types import Message
from lab.registry import Registry

__all__ = [
    "FLAVOR", "DEFAULT_ALIAS", "Prompt", "parse_prompt", "render", "prompt_path", "prompt_names", "read_prompt",
    "register_prompt", "load_prompt", "resolve_version",
]

FLAVOR = "prompt"
"""The registry flavor of a registered prompt."""

DEFAULT_ALIAS = "production"
"""The alias the server and ``load_prompt`` follow when none is named."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_HEADER = re.compile(r"^###\s+(system|user|assistant)\s*$", re.IGNORECASE)
_FENCE = "+++"
# front-matter keys with a meaning, and the types they must have
_TYPED: dict[str, tuple[type, ...]] = {
    "model": (str,), "temperature": (int, float), "max_tokens": (int,), "output_reserve": (int,), "k": (int,),
}


@dataclass(frozen=True)
class Prompt:
    """One prompt template: ``name``, its front matter (``params``: every key, the typed
    ones included), its ``body``, content ``hash`` (16 hex), the ``source`` it was read
    from (relative to the lab root) and, once loaded from the registry, its ``version``."""

    name: str
    body: str
    params: dict[str, Any] = field(default_factory=dict)
    hash: str = ""
    source: str = ""
    version: int | None = None

    @property
    def model(self) -> str | None:
        return self.params.get("model")

    @property
    def temperature(self) -> float | None:
        value = self.params.get("temperature")
        return None if value is None else float(value)

    @property
    def max_tokens(self) -> int | None:
        return self.params.get("max_tokens")

    @property
    def output_reserve(self) -> int | None:
        """Tokens kept free for the answer when the context is trimmed (the token budget)."""
        return self.params.get("output_reserve")

    @property
    def k(self) -> int | None:
        """How many retrieved passages the prompt is written for."""
        return self.params.get("k")

    @property
    def variables(self) -> tuple[str, ...]:
        """The placeholder names in the body, in order of first use."""
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.body)))

    def ledger_fields(self) -> dict[str, Any]:
        """What the LLM ledger records of it: ``{"name", "version", "hash"}``."""
        return {"name": self.name, "version": self.version, "hash": self.hash}


def _canonical_body(body: str) -> str:
    return body.replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"


def content_hash(params: Mapping[str, Any], body: str) -> str:
    """The first 16 hex digits of the SHA-256 of the canonical text (see the module)."""
    text = json.dumps(dict(params), sort_keys=True, ensure_ascii=False) + "\n" + _canonical_body(body)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"prompt name {name!r} must be letters, digits, '_', '.' or '-' (the file "
                          "prompts/NAME.md), e.g. answer")
    return name


def parse_prompt(text: str, name: str, source: str = "") -> Prompt:
    """A ``Prompt`` from a file's ``text``; ``LabError`` naming the file and the fix for
    unclosed or invalid front matter, a typed key of the wrong type, or text before the
    first ``### role`` line."""
    _check_name(name)
    where = source or f"prompt {name!r}"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    params: dict[str, Any] = {}
    body = text
    lines = text.split("\n")
    if lines and lines[0].strip() == _FENCE:
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() == _FENCE)
        except StopIteration:
            raise LabError(f"{where}: the front matter opened by '+++' on line 1 is never closed; end it with a "
                           "line '+++'") from None
        try:
            params = tomllib.loads("\n".join(lines[1:end]))
        except tomllib.TOMLDecodeError as exc:
            raise LabError(f"{where}: the front matter is not valid TOML ({exc}); fix it between the '+++' "
                           "lines") from None
        body = "\n".join(lines[end + 1:])
    for key, types in _TYPED.items():
        value = params.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            kind = " or ".join(t.__name__ for t in types)
            raise LabError(f"{where}: front matter key {key!r} must be a {kind}, got {value!r}")
    for key in ("max_tokens", "k", "output_reserve"):
        if params.get(key) is not None and params[key] < (1 if key != "output_reserve" else 0):
            raise LabError(f"{where}: front matter key {key!r} must be positive, got {params[key]!r}")
    if not body.strip():
        raise LabError(f"{where}: the prompt has no body; write the message text after the front matter")
    prompt = Prompt(name=name, body=_canonical_body(body), params=params, hash=content_hash(params, body),
                    source=source)
    _sections(prompt)  # a misplaced header fails here, not at the first request
    return prompt


def _sections(prompt: Prompt) -> list[tuple[str, str]]:
    """``[(role, template text)]``: split at ``### role`` lines, or the whole body as user."""
    sections: list[tuple[str, list[str]]] = []
    before: list[str] = []
    for line in prompt.body.split("\n"):
        match = _HEADER.match(line.strip())
        if match:
            sections.append((match.group(1).lower(), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            before.append(line)
    if not sections:
        return [("user", prompt.body.strip())]
    if "\n".join(before).strip():
        raise LabError(f"{prompt.source or 'prompt ' + repr(prompt.name)}: text before the first '### system' or "
                       "'### user' line; move it under one of them")
    return [(role, "\n".join(text).strip()) for role, text in sections]


def _value_text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise LabError(f"variable {name!r} must be text, a number or a list of texts, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)  # passages, one paragraph each
    raise LabError(f"variable {name!r} must be text, a number or a list of texts, got {type(value).__name__}")


def render(prompt: Prompt, variables: Mapping[str, Any] | None = None) -> tuple[Message, ...]:
    """The prompt's messages with every ``{{var}}`` replaced by ``variables[var]`` (text,
    a number, or a list of texts joined by blank lines). One pass: a value holding
    ``{{x}}`` is not expanded again. A variable the prompt uses and ``variables`` lacks,
    or one given that it does not use, is a ``LabError`` naming it."""
    variables = dict(variables or {})
    wanted = prompt.variables
    missing = [v for v in wanted if v not in variables]
    if missing:
        raise LabError(f"prompt {prompt.name!r} needs variable(s) {', '.join(map(repr, missing))}; pass "
                       f"{' '.join(f'--var {v}=...' for v in missing)} (it uses: {', '.join(wanted)})")
    unknown = [v for v in variables if v not in wanted]
    if unknown:
        raise LabError(f"prompt {prompt.name!r} has no variable(s) {', '.join(map(repr, unknown))}; it uses: "
                       f"{', '.join(wanted) or 'none'}")
    texts = {k: _value_text(k, v) for k, v in variables.items()}
    return tuple(Message(role, _PLACEHOLDER.sub(lambda m: texts[m.group(1)], template))
                 for role, template in _sections(prompt))


# -- files under prompts/ ----------------------------------------------------------------


def prompts_folder(config) -> Path:
    """``[tool.lab.llm] prompts_dir`` under the lab root."""
    return config.root / llm_settings(config).prompts_dir


def prompt_names(config) -> list[str]:
    """The prompts in the prompts folder, by name, sorted."""
    folder = prompts_folder(config)
    return sorted(p.stem for p in folder.glob("*.md")) if folder.is_dir() else []


def prompt_path(config, name: str) -> Path:
    """``prompts/<name>.md``; ``NotFound`` naming the prompts there are."""
    path = prompts_folder(config) / f"{_check_name(name)}.md"
    if not path.is_file():
        raise NotFound(f"no prompt file {path.relative_to(config.root)}; prompts there: "
                       f"{', '.join(prompt_names(config)) or 'none'} (write {path.relative_to(config.root)})")
    return path


def read_prompt(config, name: str) -> Prompt:
    """The working copy of prompt ``name`` (its file under the prompts folder)."""
    path = prompt_path(config, name)
    return parse_prompt(path.read_text(encoding="utf-8"), name, path.relative_to(config.root).as_posix())


# -- the registry ------------------------------------------------------------------------


def _open_registry(config, create: bool = False):
    if not create and not config.registry_path.exists():
        raise NotFound(f"there is no registry at {config.registry_path} yet: register a prompt first with "
                       "`lab prompt register NAME`")
    return Registry.open(config.registry_path, project_root=config.root)


def register_prompt(config, name: str) -> tuple[Any, bool]:
    """Register the working copy of prompt ``name``: ``(ModelVersion, True)`` when a new
    version was made, ``(the version already holding this hash, False)`` when the text is
    unchanged (nothing written). The text is copied (atomically) into
    ``runs/prompts/<name>/<hash>/prompt.md`` before the version is registered."""
    prompt = read_prompt(config, name)
    with _open_registry(config, create=True) as registry:
        versions = registry.list_model_versions(name)
        other = [v for v in versions if v.flavor != FLAVOR]
        if other:
            raise LabError(f"{name!r} is a registered model of flavor {other[0].flavor!r}, not a prompt; rename "
                           f"the prompt file")
        for version in reversed(versions):
            if (version.lineage or {}).get("prompt_hash") == prompt.hash:
                return version, False
        folder = config.runs_path / "prompts" / name / prompt.hash
        target = folder / "prompt.md"
        folder.mkdir(parents=True, exist_ok=True)
        source = (config.root / prompt.source).read_text(encoding="utf-8")
        atomic_write_text(target, source)
        version = registry.register_model(
            name, run_id=None, flavor=FLAVOR, artifact_path=target.relative_to(config.root).as_posix(), metrics={},
            lineage={"prompt_hash": prompt.hash, "source": prompt.source, "params": prompt.params})
    return version, True


def resolve_version(registry, name: str, alias_or_version: str | int = DEFAULT_ALIAS):
    """The ``ModelVersion`` of prompt ``name`` that ``alias_or_version`` names (a number,
    or an alias); ``NotFound`` naming the fix when there is none."""
    if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
        version = registry.get_model_version(name, int(alias_or_version))
    else:
        if not registry.list_model_versions(name):
            raise NotFound(f"no prompt {name!r} is registered; run `lab prompt register {name}`")
        version = registry.get_alias(name, str(alias_or_version))
        if version is None:
            raise NotFound(f"prompt {name!r} has no alias {alias_or_version!r}; set it with `lab prompt promote "
                           f"{name} VERSION --alias {alias_or_version}`")
    if version.flavor != FLAVOR:
        raise LabError(f"{name!r} v{version.version} is a model of flavor {version.flavor!r}, not a prompt")
    return version


def prompt_of_version(config, version) -> Prompt:
    """The registered text of ``version`` (a ``ModelVersion`` of flavor prompt), parsed;
    ``LabError`` when its file is gone or no longer matches the registered hash."""
    path = config.root / version.artifact_path
    if not path.is_file():
        raise LabError(f"prompt {version.name!r} v{version.version}: its file {version.artifact_path} is missing; "
                       "restore it from version control, or register the prompt again")
    prompt = parse_prompt(path.read_text(encoding="utf-8"), version.name, version.artifact_path)
    expected = (version.lineage or {}).get("prompt_hash")
    if expected and prompt.hash != expected:
        raise LabError(f"prompt {version.name!r} v{version.version}: {version.artifact_path} was changed after "
                       f"registration (hash {prompt.hash}, registered {expected}); registered prompts are "
                       "read-only: edit prompts/ and register a new version")
    return Prompt(name=prompt.name, body=prompt.body, params=prompt.params, hash=prompt.hash,
                  source=(version.lineage or {}).get("source", prompt.source), version=version.version)


def load_prompt(config, name: str, alias_or_version: str | int = DEFAULT_ALIAS) -> Prompt:
    """Registered prompt ``name`` at an alias (default ``production``) or version number."""
    with _open_registry(config) as registry:
        version = resolve_version(registry, name, alias_or_version)
    return prompt_of_version(config, version)
