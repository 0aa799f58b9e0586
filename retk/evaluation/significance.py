"""Paired significance tests between two runs on the same queries.

Both tests pair the per-query scores that :class:`~retk.evaluation.EvaluationResult`
keeps in ``per_query`` (and that results JSON files store), over the queries
the two runs share:

* ``"randomization"`` (default): Fisher's paired randomization (permutation)
  test, two-sided, flipping the sign of each query's difference at random
  ``trials`` times with a fixed seed, as Smucker, Allan and Carterette (CIKM
  2007) recommend for IR. The p-value is ``(hits + 1) / (trials + 1)``.
* ``"t-test"``: the paired Student t-test, ``scipy.stats.ttest_rel``.

No correction for multiple comparisons is applied; with many systems, read
the p-values with that in mind or lower ``alpha``.

Example::

    comparison = paired_test(baseline.per_query["nDCG@10"], candidate.per_query["nDCG@10"])
    print(comparison.mark, comparison.p_value)   # "▲" significantly better, "▼" worse, "" neither
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METHODS = ("randomization", "t-test")
DEFAULT_TRIALS = 10_000
DEFAULT_ALPHA = 0.05
DEFAULT_SEED = 0
WIN, LOSS = "win", "loss"
MARKS = {WIN: "▲", LOSS: "▼"}


@dataclass(frozen=True)
class Comparison:
    """A candidate against a baseline on one metric over ``queries`` paired queries."""

    metric: str
    method: str
    queries: int
    baseline_mean: float
    candidate_mean: float
    p_value: float
    alpha: float

    @property
    def difference(self) -> float:
        return self.candidate_mean - self.baseline_mean

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def outcome(self) -> str | None:
        """``"win"`` or ``"loss"`` when significant, else None."""
        if not self.significant or self.difference == 0:
            return None
        return WIN if self.difference > 0 else LOSS

    @property
    def mark(self) -> str:
        return MARKS.get(self.outcome or "", "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference, "significant": self.significant, "outcome": self.outcome}


def paired_test(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    metric: str = "nDCG@10",
    method: str = "randomization",
    trials: int = DEFAULT_TRIALS,
    alpha: float = DEFAULT_ALPHA,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Test whether ``candidate``'s per-query scores differ from ``baseline``'s.

    Only queries scored in both are compared; with none in common a
    ``ValueError`` is raised. Identical scores give p = 1.
    """
    if method not in METHODS:
        raise ValueError(f"unknown test '{method}'; expected one of {', '.join(METHODS)}")
    shared = sorted(set(baseline) & set(candidate))
    if not shared:
        raise ValueError("the two runs share no scored query")
    base = np.array([baseline[query_id] for query_id in shared], dtype=np.float64)
    cand = np.array([candidate[query_id] for query_id in shared], dtype=np.float64)
    if method == "randomization":
        p_value = randomization_p_value(cand - base, trials=trials, seed=seed)
    else:
        p_value = t_test_p_value(base, cand)
    return Comparison(
        metric=metric,
        method=method,
        queries=len(shared),
        baseline_mean=float(base.mean()),
        candidate_mean=float(cand.mean()),
        p_value=float(p_value),
        alpha=alpha,
    )


def randomization_p_value(differences: np.ndarray, *, trials: int = DEFAULT_TRIALS, seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value of the paired randomization test on per-query differences."""
    differences = np.asarray(differences, dtype=np.float64)
    observed = abs(differences.mean())
    if not np.any(differences):
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, min(trials, 2_000_000 // max(1, len(differences))))
    done = 0
    # A tiny tolerance keeps permutations equal to the observed mean (up to rounding) counted as hits.
    threshold = observed - 1e-12
    while done < trials:
        size = min(chunk, trials - done)
        signs = rng.integers(0, 2, size=(size, len(differences)), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ differences) / len(differences)
        hits += int(np.count_nonzero(means >= threshold))
        done += size
    return (hits + 1) / (trials + 1)


def t_test_p_value(baseline: np.ndarray, candidate: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test (scipy); 1.0 when every difference is zero."""
    from scipy import stats

    differences = np.asarray(candidate) - np.asarray(baseline)
    if not np.any(differences):
        return 1.0
    if len(differences) < 2:
        return 1.0
    if np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12):
        # A constant non-zero difference (up to rounding) has zero variance, so the t statistic is infinite.
        return 0.0
    return float(stats.ttest_rel(candidate, baseline).pvalue)


__all__ = ["Comparison", "METHODS", "paired_test", "randomization_p_value", "t_test_p_value"]
