"""Deterministic top-k selection: score descending, then document id ascending."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Extra candidates fetched beyond k, so documents tied with the k-th score can be
# ordered by id. The fetch doubles while a tie runs past its end.
TIE_MARGIN = 16

RowSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Hit:
    """One ranked document. ``rank`` starts at 1."""

    doc_id: str
    score: float
    rank: int
    title: str = ""
    text: str = ""
    attributes: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    """The hits for one query, and how many were requested."""

    query: str
    hits: list[Hit]
    k: int
    # Set by filtered search: the filter text, how many documents it allowed,
    # and the planner's decision (``retk.ann.planner.Plan``).
    filter: str | None = None
    matched: int | None = None
    plan: Any = None

    @property
    def note(self) -> str | None:
        """A message when fewer than ``k`` documents matched, else None."""
        if self.filter is not None and self.matched == 0:
            return f"the filter {self.filter} matched no documents, so there are no hits"
        if len(self.hits) < self.k:
            if self.filter is not None and self.matched is not None and self.matched < self.k:
                return f"the filter {self.filter} matched only {self.matched} documents, fewer than k={self.k}"
            return f"only {len(self.hits)} documents matched, fewer than k={self.k}"
        return None

    @property
    def explanation(self) -> str | None:
        """The planner's explanation (selectivity, strategy and why) of a filtered search."""
        return self.plan.explain() if self.plan is not None else None


def ranked_rows(
    search_rows: RowSearch, query_count: int, k: int, document_count: int, ids: Sequence[str]
) -> list[list[tuple[int, float]]]:
    """Return each query's top-k ``(row, score)`` pairs, ties broken by document id.

    ``search_rows(query_positions, fetch)`` returns two ``(len(positions), fetch)``
    arrays, rows and scores, with row -1 marking padding. A query whose last
    fetched score still equals its k-th score may have tied documents beyond
    the fetch, so it is searched again with a doubled fetch.
    """
    results: list[list[tuple[int, float]]] = [[] for _ in range(query_count)]
    pending = np.arange(query_count)
    fetch = min(document_count, k + TIE_MARGIN)
    while len(pending) and fetch > 0:
        rows, scores = search_rows(pending, fetch)
        retry = []
        for position, row_list, score_list in zip(pending, rows, scores):
            candidates = _order_candidates(row_list, score_list, ids)
            if _tie_may_continue(candidates, k, fetch, document_count):
                retry.append(position)
            results[position] = candidates[:k]
        pending = np.asarray(retry, dtype=np.int64)
        fetch = min(document_count, fetch * 2)
    return results


def _order_candidates(rows: np.ndarray, scores: np.ndarray, ids: Sequence[str]) -> list[tuple[int, float]]:
    valid = rows >= 0
    pairs = [(int(row), float(score)) for row, score in zip(rows[valid], scores[valid])]
    pairs.sort(key=lambda pair: (-pair[1], ids[pair[0]]))
    return pairs


def _tie_may_continue(candidates: list[tuple[int, float]], k: int, fetch: int, document_count: int) -> bool:
    if len(candidates) < fetch or fetch >= document_count or len(candidates) < k:
        return False
    return candidates[-1][1] == candidates[k - 1][1]
