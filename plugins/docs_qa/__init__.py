"""Built-in plugin: the ``docs_qa`` template for ``lab init``.

A question-answering lab over lab's own documentation, built only from the platform's
LLM parts: retrieval (``lab.llm.rag``), a prompt as code (``prompts/answer.md``), the
offline extractive provider, and the eval gate (``lab.steps.llm_eval``) before the
prompt's ``production`` alias moves. This package only offers the folder; the data it
shares with the platform's benchmarks (``data/``: the labelled retrieval questions, the
paraphrase pairs, the answer suite) is linked into the template.
"""

from __future__ import annotations

from pathlib import Path

from lab import hookimpl
from lab.scaffold import Template

TEMPLATE = Template(
    name="docs_qa",
    description="Questions about lab's own docs answered with RAG + a prompt, gated by an evaluation suite "
                "(offline: MiniLM embeddings, the extractive provider)",
    path=Path(__file__).resolve().parent / "template",
)

__all__ = ["TEMPLATE", "lab_templates"]


@hookimpl
def lab_templates():
    """The docs_qa template."""
    return [TEMPLATE]
