"""docs/hooks.md is the reference of lab/hookspecs.py, and cannot drift from it.

The list of hooks comes from the spec module itself (the functions pluggy marks as hook
specs), so a hook added without its section fails here, as does a section for a hook that
no longer exists, an undocumented parameter, a signature that differs from the spec, a
combining mode that is not the spec's (firstresult or not), or a relative link to a file
that is gone. Event names emitted anywhere in lab/ or plugins/ must be in its Events table.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from lab import hookspecs

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "hooks.md"
EVENT_NAME = re.compile(r"^[a-z_]+\.[a-z_]+$")


def spec_hooks() -> dict[str, dict]:
    """Every hook spec: its parameters, its signature as written, and whether it is firstresult."""
    tree = ast.parse(inspect.getsource(hookspecs))
    sources = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    hooks = {}
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        options = getattr(func, "lab_spec", None)  # set by pluggy's HookspecMarker("lab")
        if options is None:
            continue
        hooks[name] = {"params": list(inspect.signature(func).parameters),
                       "signature": signature_text(sources[name]),
                       "firstresult": bool(options.get("firstresult"))}
    return hooks


def _annotation(node: ast.expr | None) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value  # hookspecs quotes the types it only names under TYPE_CHECKING
    return ast.unparse(node)


def signature_text(func: ast.FunctionDef) -> str:
    """``name(a: T, b: U) -> R`` with the spec's annotations unquoted."""
    args = ", ".join(f"{a.arg}: {_annotation(a.annotation)}" if a.annotation else a.arg for a in func.args.args)
    return f"{func.name}({args}) -> {_annotation(func.returns)}"


def doc_sections(text: str) -> dict[str, str]:
    """The body of every ``## `hook_name``` section, by hook name."""
    parts = re.split(r"^## ", text, flags=re.M)
    sections = {}
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        found = re.fullmatch(r"`(\w+)`", title.strip())
        if found:
            sections[found.group(1)] = body
    return sections


def relative_links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]


def missing_reference(hooks: dict[str, dict], text: str) -> list[str]:
    """Every way ``text`` fails to document ``hooks``, as sentences (empty: none)."""
    sections = doc_sections(text)
    problems = [f"hook {name} has no '## `{name}`' section in docs/hooks.md" for name in hooks if name not in sections]
    problems += [f"docs/hooks.md documents {name}, which lab/hookspecs.py does not define"
                 for name in sections if name not in hooks]
    for name, hook in hooks.items():
        body = sections.get(name)
        if body is None:
            continue
        if f"```python\n{hook['signature']}\n```" not in body:
            problems.append(f"section {name} lacks the signature block `{hook['signature']}`")
        for param in hook["params"]:
            if not re.search(rf"^- `{param}`:", body, flags=re.M):
                problems.append(f"section {name} does not document parameter {param} ('- `{param}`: ...')")
        if not hook["params"] and "- No parameters." not in body:
            problems.append(f"section {name} should say '- No parameters.'")
        combined = re.search(r"^- \*\*Combined\*\*: (.*)$", body, flags=re.M)
        if combined is None:
            problems.append(f"section {name} lacks a '- **Combined**:' line")
        elif combined.group(1).startswith("firstresult") != hook["firstresult"]:
            problems.append(f"section {name} says '{combined.group(1)}', but the spec's firstresult is "
                            f"{hook['firstresult']}")
        if not re.search(r"^- \*\*Built-in\*\*: .*\]\(", body, flags=re.M):
            problems.append(f"section {name} lacks a '- **Built-in**:' line linking the code that answers or calls it")
        if "```python\n" not in body.replace(f"```python\n{hook['signature']}\n```", ""):
            problems.append(f"section {name} has no example implementation")
    return problems


def emitted_event_names() -> dict[str, str]:
    """Event names the code hands to ``lab_on_event``: string constants (direct, or module
    constants in capitals) in the arguments of any ``...emit(...)`` or ``announce(...)`` call
    in lab/ and plugins/, and every name ``lab.events`` defines. Name -> a file emitting it."""
    trees = {path: ast.parse(path.read_text()) for root in ("lab", "plugins") for path in (REPO / root).rglob("*.py")}
    constants: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.isupper():
                        constants.setdefault(target.id, set()).add(node.value.value)
    found = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if not (called.endswith("emit") or called == "announce"):
                continue
            for arg in node.args[:3]:
                for sub in ast.walk(arg):
                    values = set()
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        values = {sub.value}
                    elif isinstance(sub, (ast.Name, ast.Attribute)):
                        ident = sub.id if isinstance(sub, ast.Name) else sub.attr
                        values = constants.get(ident, set()) if ident.isupper() else set()
                    for value in values:
                        if EVENT_NAME.match(value):
                            found.setdefault(value, str(path.relative_to(REPO)))
    events_module = trees[REPO / "lab" / "events.py"]
    for node in events_module.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and EVENT_NAME.match(str(node.value.value)):
            found.setdefault(node.value.value, "lab/events.py")
    return found


# ------------------------------------------------------------------------------ the tests


def test_every_hook_has_a_complete_section_and_no_section_is_stale():
    hooks = spec_hooks()
    assert len(hooks) >= 17 and "lab_online_store" in hooks  # the spec module was read
    assert missing_reference(hooks, DOC.read_text()) == []


def test_a_hook_added_without_its_section_fails():
    hooks = spec_hooks()
    added = {**hooks, "lab_new_thing": {"params": ["config"], "signature": "lab_new_thing(config: LabConfig) -> None",
                                        "firstresult": False}}
    assert missing_reference(added, DOC.read_text()) == [
        "hook lab_new_thing has no '## `lab_new_thing`' section in docs/hooks.md"]


def test_a_removed_section_or_parameter_or_changed_signature_fails():
    hooks, text = spec_hooks(), DOC.read_text()
    without = re.sub(r"^## `lab_sweep_storage`\n.*?(?=^## )", "", text, flags=re.M | re.S)
    assert "hook lab_sweep_storage has no '## `lab_sweep_storage`' section in docs/hooks.md" in \
        missing_reference(hooks, without)
    no_param = text.replace("- `study_name`:", "- study name:")
    assert any("parameter study_name" in p for p in missing_reference(hooks, no_param))
    changed = {**hooks, "lab_sweep_storage": {**hooks["lab_sweep_storage"],
                                              "signature": "lab_sweep_storage(config: LabConfig) -> str | None"}}
    assert any("signature" in p for p in missing_reference(changed, text))
    stale = text + "\n## `lab_gone`\n\nA hook that was removed.\n"
    assert "docs/hooks.md documents lab_gone, which lab/hookspecs.py does not define" in missing_reference(hooks, stale)
    not_first = text.replace("- **Combined**: firstresult; the built-in SQLite", "- **Combined**: collected; the built-in SQLite")
    assert any("lab_online_store" in p and "firstresult" in p for p in missing_reference(hooks, not_first))


def test_every_linked_file_exists():
    links = relative_links(DOC.read_text())
    assert len(links) > 15
    missing = [link for link in links if not (DOC.parent / link.split("#")[0]).exists()]
    assert missing == [], f"docs/hooks.md links to files that do not exist: {missing}"


def test_every_emitted_event_name_is_in_the_events_table():
    events = emitted_event_names()
    assert {"stage.finished", "model.promoted", "quality.degraded", "serving.leak_suspected"} <= set(events)
    table = DOC.read_text().partition("\n## Events\n")[2]
    listed = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, flags=re.M))
    missing = {name: where for name, where in events.items() if name not in listed}
    assert missing == {}, f"event names emitted but not in docs/hooks.md's Events table: {missing}"
    assert listed - set(events) == set(), "the Events table lists names nothing emits"


@pytest.mark.parametrize("name", sorted(spec_hooks()))
def test_the_spec_itself_has_a_docstring(name):
    assert (getattr(hookspecs, name).__doc__ or "").strip(), f"lab/hookspecs.py: {name} has no docstring"
