"""What the model server asks of a router that picks a model version per request.

The server routes by ``Router`` only; the implementation that reads flags and
experiments (``lab.experiments.routing.FlagRouter``) is built by the server plugin, so
this package imports nothing of ``lab.experiments``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Route:
    """Where one request goes: the variant, the model version, and the loaded model."""

    variant: str
    version: Any  # lab.registry.ModelVersion
    model: Any


@runtime_checkable
class Router(Protocol):
    """Routes each request to a loaded model version by one of its fields.

    Thread safety: ``route`` and ``count`` are called on the request path, from the
    event loop, while ``refresh`` and ``check_guardrails`` run in a worker thread; an
    implementation swaps its table whole so a request sees the old or the new one.
    """

    flag: str
    """The name the router routes by (recorded in the ledger as the ``experiment``)."""

    @property
    def unit(self) -> str | None:
        """The request field whose value picks the route; None before the first ``refresh``."""

    @property
    def control(self) -> str | None:
        """The variant whose model the server warms up and falls back to; None before ``refresh``."""

    def refresh(self) -> bool:
        """Reload the routing table if what it is built from changed; True if rebuilt.
        Raises ``LabError`` naming the fix when it cannot be served; the old table stays."""

    def route(self, unit: Hashable) -> tuple[Route, str]:
        """``(route, flag name)`` for the request whose unit field holds ``unit``."""

    def routes(self) -> dict[str, Route]:
        """Variant name -> route, as of the last refresh."""

    def count(self, variant: str, *, failed: bool) -> None:
        """Count one request served by ``variant`` (``failed``: it could not be scored)."""

    def check_guardrails(self, config: Any, pm: Any, ledger: Any) -> Sequence[Any]:
        """Check what this server saw against the guardrails, acting on a breach; returns
        results that each have a ``breached`` attribute."""


__all__ = ["Route", "Router"]
