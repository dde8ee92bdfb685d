"""Passages for a prompt that renders ``{{context}}`` and was given none: retrieved from
the lab's index with the prompt's query variable. The one rule ``lab serve``'s chat route
and an evaluation suite both follow, so a suite measures what the server answers."""

from __future__ import annotations

import threading
from typing import Any, Mapping

from lab.errors import ConfigError

CONTEXT_VAR = "context"


def needs_retrieval(prompt: Any, variables: Mapping[str, Any]) -> bool:
    """Whether ``prompt`` renders ``{{context}}`` and ``variables`` do not supply it."""
    return prompt is not None and CONTEXT_VAR in prompt.variables and CONTEXT_VAR not in variables


class PromptRetriever:
    """Retrieves ``k`` passages (the prompt's front-matter ``k``, else ``[tool.lab.llm.rag]
    k``) for the text in the ``query_var`` variable; opens the lab's index on first use and
    keeps it (thread-safe)."""

    def __init__(self, config, pm, query_var: str = "question"):
        self.config, self.pm, self.query_var = config, pm, query_var
        self._index = None
        self._lock = threading.Lock()

    def index(self):
        with self._lock:
            if self._index is None:
                from lab.llm.rag.index import Index

                self._index = Index(self.config, self.pm)
            return self._index

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None

    def passages(self, prompt: Any, variables: Mapping[str, Any], *, where: str) -> tuple[str, ...]:
        """The passages for ``{{context}}``; ``where`` names the caller in the error when
        the query variable is missing (a suite case, a request's ``variables``)."""
        query = variables.get(self.query_var)
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"{where}: the prompt uses {{{{{CONTEXT_VAR}}}}} and none was given, so passages are "
                              f"retrieved with the {self.query_var!r} variable, which is missing or empty; pass "
                              f"{self.query_var!r} (or {CONTEXT_VAR!r} itself)")
        hits = self.index().search(query, k=getattr(prompt, "k", None))
        return tuple(hit.text for hit in hits)
