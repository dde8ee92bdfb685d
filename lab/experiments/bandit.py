"""Thompson sampling over Bernoulli arms, with a floor of traffic per arm.

Use a bandit when a feedback loop would otherwise collapse diversity: the model (or
variant) that is shown more gets more labels and looks better, so the others are never
tried again. The bandit keeps a Beta posterior per arm, gives each arm the share of
traffic equal to the posterior probability that it is the best, and never less than
``floor``, so every arm keeps producing data.

With ``k`` arms, the weight of arm ``i`` is ``floor + (1 - k * floor) * P(i is best)``:
every arm gets at least ``floor``, the weights sum to 1, and ``choose`` (uniform with
probability ``k * floor``, else one Thompson draw) picks each arm with exactly that
probability.

``record`` sets the experiment's weights and appends the allocation to its history
(``store.allocations(name)``, in order) in one transaction (``store.apply_allocation``),
so sticky assignment follows the bandit and the history is what was served. Moving weights moves units between arms over time: compare arms
within an allocation period, not pooled over the whole run (the pooled means mix periods
with different shares and can mislead).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lab.errors import ConfigError, LabError

if TYPE_CHECKING:  # pragma: no cover
    from lab.experiments.store import ExperimentStore

SOURCE = "thompson"


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(value)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class ThompsonBandit:
    """Thompson sampling for Bernoulli rewards (success or failure per unit).

    ``arms`` are the variant names (at least two, distinct strings). Each arm starts from
    a Beta(``prior_alpha``, ``prior_beta``) prior, Beta(1, 1) (uniform) by default.
    ``floor`` is the least share of traffic any arm gets; ``floor * len(arms)`` must not
    exceed 1. ``seed`` makes allocations and choices reproducible.
    """

    def __init__(
        self,
        arms: Sequence[str],
        floor: float = 0.05,
        seed: int | None = None,
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
    ) -> None:
        if isinstance(arms, str) or not isinstance(arms, Sequence):
            raise ConfigError(f"arms must be a list of variant names, got {arms!r}")
        arms = list(arms)
        if len(arms) < 2:
            raise ConfigError(f"a bandit needs at least two arms, got {arms!r}")
        bad = [a for a in arms if not isinstance(a, str) or not a]
        if bad:
            raise ConfigError(f"arm names must be non-empty strings, got {bad!r}")
        if len(set(arms)) != len(arms):
            dupes = sorted({a for a in arms if arms.count(a) > 1})
            raise ConfigError(f"arm names must be distinct; repeated: {', '.join(dupes)}")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise ConfigError(f"floor is a share of traffic in [0, 1], got {floor!r}")
        if floor * len(arms) > 1 + 1e-12:
            raise ConfigError(
                f"floor {floor:g} for {len(arms)} arms asks for {floor * len(arms):.0%} of traffic; "
                f"use a floor of at most 1/{len(arms)} = {1 / len(arms):.4g}"
            )
        self.arms: list[str] = arms
        self.floor = float(floor)
        self.prior = (_positive("prior_alpha", prior_alpha), _positive("prior_beta", prior_beta))
        self._successes = np.zeros(len(arms), dtype=np.int64)
        self._failures = np.zeros(len(arms), dtype=np.int64)
        self._rng = np.random.default_rng(seed)

    def _index(self, arm: str) -> int:
        try:
            return self.arms.index(arm)
        except ValueError:
            raise ConfigError(f"no arm {arm!r}; the arms are {', '.join(self.arms)}") from None

    def update(self, arm: str, successes: int, failures: int) -> None:
        """Add observed outcomes for ``arm`` to its posterior (counts, not rates)."""
        i = self._index(arm)
        wins, losses = _count("successes", successes), _count("failures", failures)  # both, then write
        self._successes[i] += wins
        self._failures[i] += losses

    def posterior(self) -> dict[str, tuple[float, float]]:
        """Each arm's Beta posterior parameters ``(alpha, beta)``."""
        a0, b0 = self.prior
        return {arm: (a0 + float(s), b0 + float(f))
                for arm, s, f in zip(self.arms, self._successes, self._failures)}

    def prob_best(self, n_draws: int = 10_000) -> dict[str, float]:
        """Monte-Carlo probability that each arm has the highest success rate."""
        n_draws = _count("n_draws", n_draws)
        if n_draws == 0:
            raise ConfigError("n_draws must be at least 1")
        a0, b0 = self.prior
        draws = self._rng.beta(a0 + self._successes, b0 + self._failures, size=(n_draws, len(self.arms)))
        wins = np.bincount(draws.argmax(axis=1), minlength=len(self.arms))
        return {arm: float(w) / n_draws for arm, w in zip(self.arms, wins)}

    def allocate(self, n_draws: int = 10_000) -> dict[str, float]:
        """The share of traffic per arm: P(best) mixed with the floor; sums to 1.

        Each call draws from the bandit's random generator, so with a seed the sequence of
        allocations is reproducible.
        """
        best = self.prob_best(n_draws)
        spare = 1.0 - self.floor * len(self.arms)
        weights = {arm: self.floor + spare * p for arm, p in best.items()}
        total = sum(weights.values())
        return {arm: w / total for arm, w in weights.items()}

    def choose(self, rng: np.random.Generator | None = None) -> str:
        """One arm for one unit, picked with the probabilities ``allocate`` gives."""
        rng = rng if rng is not None else self._rng
        if rng.random() < self.floor * len(self.arms):
            return self.arms[int(rng.integers(len(self.arms)))]
        a0, b0 = self.prior
        draw = rng.beta(a0 + self._successes, b0 + self._failures)
        return self.arms[int(draw.argmax())]

    # -- persistence -----------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to resume this bandit, random generator included (JSON-able)."""
        return {
            "arms": list(self.arms),
            "floor": self.floor,
            "prior": list(self.prior),
            "successes": [int(x) for x in self._successes],
            "failures": [int(x) for x in self._failures],
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict) -> "ThompsonBandit":
        """A bandit resumed from ``state()``: same posteriors, same next random draws."""
        try:
            bandit = cls(state["arms"], floor=state["floor"],
                         prior_alpha=state["prior"][0], prior_beta=state["prior"][1])
            for arm, s, f in zip(state["arms"], state["successes"], state["failures"], strict=True):
                bandit.update(arm, s, f)
            if state.get("rng") is not None:
                bandit._rng.bit_generator.state = state["rng"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a saved ThompsonBandit state ({type(exc).__name__}: {exc})") from None
        return bandit

    # -- the experiment store ----------------------------------------------------------

    def record(self, store: "ExperimentStore", experiment_name: str, *, n_draws: int = 10_000,
               actor: str = "bandit") -> dict[str, float]:
        """Allocate, then make it the experiment's weights and append it to its history,
        both in one transaction (``store.apply_allocation``).

        The arms must be exactly the experiment's variants. A stopped experiment is
        refused: a guardrail stop sent its traffic to control and a bandit must not undo
        that. Returns the weights written.
        """
        experiment = store.get(experiment_name)
        variants = [v.name for v in experiment.variants]
        if set(variants) != set(self.arms):
            raise ConfigError(
                f"the bandit's arms ({', '.join(self.arms)}) are not the variants of "
                f"{experiment_name!r} ({', '.join(variants)})"
            )
        if experiment.status == "stopped":
            raise LabError(
                f"experiment {experiment_name!r} is stopped; a bandit does not reallocate a stopped "
                "experiment (see `lab experiment status`)"
            )
        weights = self.allocate(n_draws)
        weights = {name: weights[name] for name in variants}  # control first, as the store keeps them
        # One transaction: the weights served and the history never disagree, even when
        # a guardrail stops the experiment between our read above and this write.
        store.apply_allocation(experiment_name, weights, source=SOURCE, actor=actor, reason=f"{SOURCE} allocation")
        return weights
