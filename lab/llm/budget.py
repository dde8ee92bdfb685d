"""Token budgets: how one request's context window is shared between the system message,
the retrieved context, the user's input and the answer, and whether a prompt's token use
has drifted.

    [tool.lab.llm.budget]
    output_reserve = 0          # tokens kept for the answer; 0: the request's max_tokens
    context_max_tokens = 0      # a cap on retrieved context (tokens); 0: what the window leaves
    safety_tokens = 16          # slack for tokenizer mismatch with a remote model
    drift_recent = 50           # calls in the recent window of the drift check
    drift_min_baseline = 50     # calls the baseline needs before a drift is judged
    drift_ratio = 1.5           # recent median or p95 above ratio x the baseline's: drift

A prompt's front matter may set ``output_reserve`` and ``context_max_tokens`` too (it
wins). Retrieved passages arrive as ``(text, relevance)``; those that do not fit are
dropped lowest relevance first, and the best passage that does not fit whole is cut at a
sentence boundary. An input that does not fit even with no context is a ``BudgetExceeded``
(HTTP 400) naming the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError
from lab.llm.settings import sub_table

BUDGET_DRIFT = "llm.budget_drift"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class BudgetExceeded(LabError):
    """The request does not fit the model's context window even without context (HTTP 400)."""

    http_status = 400


@dataclass(frozen=True)
class BudgetSettings:
    """``[tool.lab.llm.budget]`` (tokens, and the drift check's window sizes and ratio)."""

    output_reserve: int = 0
    context_max_tokens: int = 0
    safety_tokens: int = 16
    drift_recent: int = 50
    drift_min_baseline: int = 50
    drift_ratio: float = 1.5

    def __post_init__(self) -> None:
        for name in ("output_reserve", "context_max_tokens", "safety_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[tool.lab.llm.budget] {name} must be 0 or more tokens, got {getattr(self, name)}")
        if self.drift_recent < 1 or self.drift_min_baseline < 1:
            raise ConfigError("[tool.lab.llm.budget] drift_recent and drift_min_baseline must be at least 1 call")
        if self.drift_ratio <= 1:
            raise ConfigError(f"[tool.lab.llm.budget] drift_ratio must be above 1, got {self.drift_ratio}")


def budget_settings(config: LabConfig) -> BudgetSettings:
    return build_section(BudgetSettings, sub_table(config, "budget"), "tool.lab.llm.budget")


@dataclass(frozen=True)
class Allocation:
    """One request's shares of ``window`` (tokens): ``system`` and ``input`` as counted,
    ``output`` reserved for the answer, ``context`` allowed, ``context_used`` taken by
    ``kept`` (passages, best first); ``dropped`` passages did not fit, ``truncated`` is
    True when the last kept passage was cut at a sentence boundary."""

    window: int
    system: int
    input: int
    output: int
    context: int
    context_used: int
    kept: tuple[str, ...]
    dropped: int
    truncated: bool


def _cut(text: str, room: int, count: Callable[[str], int]) -> str:
    """The longest run of whole leading sentences of ``text`` within ``room`` tokens ("" if none)."""
    sentences = _SENTENCE_END.split(text.strip())
    best = ""
    for i in range(1, len(sentences) + 1):
        candidate = " ".join(sentences[:i])
        if count(candidate) > room:
            break
        best = candidate
    return best


def allocate(*, window: int, system_tokens: int, input_tokens: int, output_reserve: int,
             contexts: Sequence[tuple[str, float]], count: Callable[[str], int],
             context_max_tokens: int = 0, safety_tokens: int = 0, context_factor: float = 1.0) -> Allocation:
    """Share ``window`` tokens: system, input and the output reserve first; the context
    gets what is left (at most ``context_max_tokens`` when positive, times
    ``context_factor``, e.g. 0.5 when spend is degraded). Passages are taken best
    relevance first (ties: the order given) while they fit; the first one that does not
    fit whole is cut at a sentence boundary, and every passage after it is dropped.
    ``count`` counts a text's tokens with the model's tokenizer."""
    fixed = system_tokens + input_tokens + output_reserve + safety_tokens
    left = window - fixed
    if left < 0:
        raise BudgetExceeded(
            f"the request does not fit the model's context window of {window} tokens: system {system_tokens} + "
            f"input {input_tokens} + output reserve {output_reserve} + safety {safety_tokens} = {fixed} tokens "
            "before any context; shorten the input, lower max_tokens (or output_reserve), or use a model with a "
            "larger context_window")
    room = min(left, context_max_tokens) if context_max_tokens > 0 else left
    room = int(room * context_factor)
    ranked = sorted(enumerate(contexts), key=lambda item: (-float(item[1][1]), item[0]))
    kept: list[str] = []
    used = 0
    truncated = False
    for position, (_, (text, _relevance)) in enumerate(ranked):
        tokens = count(text)
        if used + tokens <= room:
            kept.append(text)
            used += tokens
            continue
        part = _cut(text, room - used, count)
        if part:
            kept.append(part)
            used += count(part)
            truncated = True
        break
    return Allocation(window, system_tokens, input_tokens, output_reserve, room, used, tuple(kept),
                      len(contexts) - len(kept), truncated)


# -- drift of a prompt's token use ------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted-able ``values`` (q in [0, 1])."""
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


@dataclass(frozen=True)
class BudgetDrift:
    """One prompt's token use (input + output per call): the ``recent`` calls against the
    earlier ``baseline``; ``breached`` when the recent median or p95 exceeds ``ratio``
    times the baseline's. ``reason`` says why, or why it could not be judged."""

    prompt: str | None
    baseline_calls: int
    recent_calls: int
    baseline_median: float | None
    baseline_p95: float | None
    recent_median: float | None
    recent_p95: float | None
    ratio: float
    breached: bool
    reason: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def budget_drift(tokens: Sequence[int], *, prompt: str | None = None, recent: int = 50,
                 min_baseline: int = 50, ratio: float = 1.5) -> BudgetDrift:
    """Compare the last ``recent`` of ``tokens`` (per call, oldest first) with all the
    calls before them; judged only with at least ``min_baseline`` earlier calls and a full
    recent window."""
    values = [float(t) for t in tokens]
    base, last = values[:-recent] if len(values) > recent else [], values[-recent:]
    if len(base) < min_baseline or len(last) < recent:
        return BudgetDrift(prompt, len(base), len(last), None, None, None, None, ratio, False,
                           f"not judged: {len(values)} calls, needs {min_baseline} baseline + {recent} recent")
    bm, bp = _quantile(base, 0.5), _quantile(base, 0.95)
    rm, rp = _quantile(last, 0.5), _quantile(last, 0.95)
    reasons = []
    if rm > ratio * bm:
        reasons.append(f"median {rm:.0f} > {ratio} x baseline {bm:.0f}")
    if rp > ratio * bp:
        reasons.append(f"p95 {rp:.0f} > {ratio} x baseline {bp:.0f}")
    return BudgetDrift(prompt, len(base), len(last), bm, bp, rm, rp, ratio, bool(reasons),
                       "; ".join(reasons) or "within the ratio")


def ledger_tokens(config: LabConfig, prompt: str | None = None) -> dict[str | None, list[int]]:
    """Tokens (input + output) of every answered, uncached call in the LLM ledger
    (``lab.llm.ledger``), oldest first, per prompt name (or only ``prompt``'s)."""
    from lab.llm.ledger import ledger_path
    from lab.sqlite import connect

    path = ledger_path(config)
    if not path.exists():
        return {}
    conn = connect(path, readonly=True, dict_rows=False)
    try:
        sql = ("SELECT prompt_name, input_tokens + output_tokens FROM llm_calls WHERE status = 'ok' AND cached = 0"
               + (" AND prompt_name = ?" if prompt is not None else "") + " ORDER BY id")
        out: dict[str | None, list[int]] = {}
        for name, tokens in conn.execute(sql, [prompt] if prompt is not None else []):
            out.setdefault(name, []).append(int(tokens))
        return out
    finally:
        conn.close()


def check_budget_drift(config: LabConfig, pm=None, prompt: str | None = None) -> list[BudgetDrift]:
    """``budget_drift`` for each prompt in the ledger (or only ``prompt``), with
    ``[tool.lab.llm.budget]``'s windows; emits ``llm.budget_drift`` for each breach."""
    from lab.events import emit

    s = budget_settings(config)
    results = [budget_drift(tokens, prompt=name, recent=s.drift_recent, min_baseline=s.drift_min_baseline,
                            ratio=s.drift_ratio)
               for name, tokens in sorted(ledger_tokens(config, prompt).items(), key=lambda kv: str(kv[0]))]
    if pm is not None:
        for result in results:
            if result.breached:
                emit(pm, BUDGET_DRIFT, **result.as_dict())
    return results
