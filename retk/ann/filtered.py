"""Filtered nearest-neighbour search: one allowed-row set, five ways to search it.

Strategies (``STRATEGIES``):

``exact``
    Gather the allowed rows of the embedding matrix and score them with one
    BLAS matrix product per chunk (or, when most rows are allowed, scan the
    matrix in contiguous blocks and mask the rest). Exact, and cheap whenever
    few rows are allowed or few queries are asked.
``hnsw``
    The FAISS HNSW index searched with an ``IDSelectorBitmap``; ``efSearch``
    grows as the filter gets more selective (see :mod:`retk.ann.planner`).
``ivf``
    The FAISS IVF index searched with an ``IDSelectorBitmap``. With the
    ``coverage`` knob (what the planner uses) each query probes its nearest
    lists that contain allowed rows until they contain ``coverage`` of them,
    so the probe count follows the filter; with ``nprobe`` it is fixed.
``hnswlib``
    An hnswlib graph searched with a filter callback (optional backend:
    ``pip install hnswlib``).
``postfilter``
    Search the unfiltered index for ``fetch`` candidates (k / selectivity
    times an over-fetch factor) and keep the allowed ones.

Every strategy returns exactly ``min(k, allowed.count)`` hits per query, best
first, ties broken by the tie order (document id in an index): a query that an
approximate strategy answers short is searched again exactly, and FAISS's
``-1`` padding never leaves this module. FAISS ignores ``IDSelector`` on GPU
indexes, so :meth:`FilteredSearcher.availability` refuses ``hnsw`` and ``ivf``
for an index that lives on a GPU; ``exact`` (on the CPU, over the memory-mapped
embeddings) and ``postfilter`` (filtering after the search) stay correct there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from retk.ann.regions import Regions

logger = logging.getLogger(__name__)

STRATEGIES = ("exact", "hnsw", "ivf", "hnswlib", "postfilter")
# Rows gathered or scanned per matrix product: 32,768 x 384 float32 is 48 MiB.
CHUNK_ROWS = 32_768
# Copying one row out of the matrix costs about as much as this many query-row products (float32, any
# dimension: both scale with it). Exact search scans the whole matrix instead of gathering the allowed rows
# when the products it wastes on disallowed rows cost less than the gather (see ``scans_whole_matrix``).
GATHER_COST_IN_PAIRS = 12
MAX_FETCH = 8192
GPU_MAX_FETCH = 2048


class AllowedSet:
    """The rows a filter allows, as a boolean mask with the views each strategy needs.

    ``rows`` (sorted row numbers), ``bits`` (the little-endian bitmap FAISS's
    ``IDSelectorBitmap`` reads) and the selector itself are built on first use.
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = np.ascontiguousarray(mask, dtype=bool)
        self.total = len(self.mask)
        self.count = int(self.mask.sum())
        self._rows: np.ndarray | None = None
        self._bits: np.ndarray | None = None
        self._selector: Any = None

    @classmethod
    def everything(cls, total: int) -> "AllowedSet":
        return cls(np.ones(total, dtype=bool))

    @classmethod
    def from_rows(cls, rows: Sequence[int] | np.ndarray, total: int) -> "AllowedSet":
        mask = np.zeros(total, dtype=bool)
        mask[np.asarray(rows, dtype=np.int64)] = True
        return cls(mask)

    @property
    def selectivity(self) -> float:
        return self.count / self.total if self.total else 0.0

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.flatnonzero(self.mask).astype(np.int64)
        return self._rows

    @property
    def bits(self) -> np.ndarray:
        if self._bits is None:
            self._bits = np.packbits(self.mask, bitorder="little")
        return self._bits

    def selector(self) -> Any:
        """A FAISS ``IDSelectorBitmap``; it points into :attr:`bits`, which this object keeps alive."""
        if self._selector is None:
            self._selector = faiss.IDSelectorBitmap(self.total, faiss.swig_ptr(self.bits))
        return self._selector


@dataclass
class FilteredHits:
    """Per-query rows and scores (each of length ``min(k, allowed.count)``) and how they were found."""

    rows: list[np.ndarray]
    scores: list[np.ndarray]
    strategy: str
    knobs: dict[str, Any] = field(default_factory=dict)
    fallbacks: int = 0
    seconds: float = 0.0


class TieOrder:
    """Row ranks that break score ties: by document id in an index, by row number otherwise."""

    def __init__(self, total: int, ids: Sequence[str] | None = None) -> None:
        self.total = total
        self._ids = ids
        self._rank: np.ndarray | None = None

    @property
    def rank(self) -> np.ndarray:
        if self._rank is None:
            if self._ids is None:
                self._rank = np.arange(self.total, dtype=np.int64)
            else:
                order = np.argsort(np.asarray(self._ids, dtype=object).astype(str), kind="stable")
                rank = np.empty(self.total, dtype=np.int64)
                rank[order] = np.arange(self.total, dtype=np.int64)
                self._rank = rank
        return self._rank


def _top(scores: np.ndarray, rows: np.ndarray, kk: int, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``kk`` best (score descending, tie rank ascending) columns of ``scores``.

    ``rows`` is ``(c,)`` or ``(nq, c)`` row numbers for the columns; scores of
    ``-inf`` mark disallowed columns and may appear only when a row has fewer
    than ``kk`` allowed columns.
    """
    nq, columns = scores.shape
    kc = min(kk, columns)
    if rows.ndim == 1:
        rows = np.broadcast_to(rows, scores.shape)
    if kc < columns:
        part = np.argpartition(-scores, kc - 1, axis=1)[:, :kc]
        top_scores = np.take_along_axis(scores, part, axis=1)
        top_rows = np.take_along_axis(rows, part, axis=1)
        threshold = top_scores.min(axis=1)
        tied = ((scores >= threshold[:, None]).sum(axis=1) > kc) & np.isfinite(threshold)
        for position in np.flatnonzero(tied):
            # Documents tied with the kk-th score beyond the partition: choose by tie rank.
            candidates = np.flatnonzero(scores[position] >= threshold[position])
            candidate_rows = rows[position, candidates]
            order = np.lexsort((rank[candidate_rows], -scores[position, candidates]))[:kc]
            top_scores[position] = scores[position, candidates[order]]
            top_rows[position] = candidate_rows[order]
    else:
        top_scores, top_rows = scores, np.array(rows)
    order = np.lexsort((rank[top_rows], -top_scores), axis=-1)
    return np.take_along_axis(top_rows, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def scans_whole_matrix(count: int, total: int, queries: int) -> bool:
    """Whether exact search over ``count`` of ``total`` rows should scan every row and mask, rather than gather.

    Scanning wastes ``queries x (total - count)`` products; gathering copies
    ``count`` rows. One query over 10% of the rows already scans; 1,000
    queries gather until 99% of the rows are allowed.
    """
    return (total - count) * queries <= GATHER_COST_IN_PAIRS * count


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, allowed: AllowedSet, k: int, order: TieOrder, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``min(k, allowed.count)`` by inner product over the allowed rows: ``(rows, scores)`` arrays."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    kk = min(k, allowed.count)
    best_rows = np.empty((nq, 0), dtype=np.int64)
    best_scores = np.empty((nq, 0), dtype=np.float32)
    if kk == 0 or nq == 0:
        return best_rows, best_scores
    rank = order.rank
    if scans_whole_matrix(allowed.count, allowed.total, nq):
        for start in range(0, allowed.total, chunk_rows):
            end = min(start + chunk_rows, allowed.total)
            keep = allowed.mask[start:end]
            if not keep.any():
                continue
            scores = queries @ np.asarray(vectors[start:end], dtype=np.float32).T
            if not keep.all():
                scores[:, ~keep] = -np.inf
            chunk_rows_, chunk_scores = _top(scores, np.arange(start, end, dtype=np.int64), kk, rank)
            best_rows, best_scores = _merge(best_rows, best_scores, chunk_rows_, chunk_scores, kk, rank)
    else:
        rows = allowed.rows
        for start in range(0, len(rows), chunk_rows):
            block_rows = rows[start : start + chunk_rows]
            scores = queries @ np.asarray(vectors[block_rows], dtype=np.float32).T
            chunk_rows_, chunk_scores = _top(scores, block_rows, kk, rank)
            best_rows, best_scores = _merge(best_rows, best_scores, chunk_rows_, chunk_scores, kk, rank)
    return best_rows[:, :kk], best_scores[:, :kk]


def _merge(rows_a, scores_a, rows_b, scores_b, kk, rank):
    if rows_a.shape[1] == 0:
        return rows_b, scores_b
    return _top(np.concatenate([scores_a, scores_b], axis=1), np.concatenate([rows_a, rows_b], axis=1), kk, rank)


def _on_gpu(index: Any) -> bool:
    """Whether a FAISS index lives on a GPU (where search ignores ``IDSelector``)."""
    if index is None:
        return False
    name = type(faiss.downcast_index(index)).__name__ if isinstance(index, faiss.Index) else type(index).__name__
    return "Gpu" in name or name in ("IndexReplicas", "IndexShards")


def hnsw_of(index: Any) -> Any:
    if index is None:
        return None
    return getattr(faiss.downcast_index(index), "hnsw", None)


def ivf_of(index: Any) -> Any:
    if index is None:
        return None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def describe_index(index: Any) -> str:
    if index is None:
        return "none"
    if hnsw_of(index) is not None:
        return f"HNSW (M={hnsw_of(index).nb_neighbors(1)})"
    ivf = ivf_of(index)
    if ivf is not None:
        return f"IVF (nlist={ivf.nlist})"
    return type(faiss.downcast_index(index)).__name__.replace("Index", "") or "FAISS"


class FilteredSearcher:
    """Search an embedding matrix restricted to an :class:`AllowedSet`, with any available strategy.

    ``vectors`` is the ``(N, d)`` float32 matrix (a memory map is fine);
    ``index`` is the FAISS index over the same rows (any kind); ``hnsw_index``
    and ``ivf_index`` default to ``index`` when it is of that kind;
    ``hnswlib_index`` is an optional ``hnswlib.Index`` whose labels are row
    numbers; ``ids`` order tied scores.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        index: Any = None,
        *,
        hnsw_index: Any = None,
        ivf_index: Any = None,
        hnswlib_index: Any = None,
        ids: Sequence[str] | None = None,
        regions: Regions | None = None,
    ) -> None:
        self.vectors = vectors
        self.total = len(vectors)
        self.index = index
        if hnsw_index is None and hnsw_of(index) is not None:
            hnsw_index = index
        if ivf_index is None and ivf_of(index) is not None:
            ivf_index = index
        self.hnsw_index = hnsw_index
        self.ivf_index = ivf_index
        self.hnswlib_index = hnswlib_index
        self.order = TieOrder(self.total, ids)
        self._regions = regions
        self.default_ef = hnsw_of(self.hnsw_index).efSearch if self.hnsw_index is not None else 64
        self.default_nprobe = ivf_of(self.ivf_index).nprobe if self.ivf_index is not None else 16

    @property
    def regions(self) -> Regions:
        """The coarse regions the planner reads local selectivity from; clustered on first use when none were given."""
        if self._regions is None:
            self._regions = Regions.fit(self.vectors)
        return self._regions

    def availability(self) -> dict[str, str | None]:
        """Each strategy mapped to None when usable, else the reason it is not."""
        reasons: dict[str, str | None] = {"exact": None, "postfilter": None}
        if self.index is None:
            reasons["postfilter"] = "no FAISS index to over-fetch from"
        if self.hnsw_index is None:
            reasons["hnsw"] = f"the index is {describe_index(self.index)}, not HNSW (build it with --index-spec HNSW32,Flat)"
        else:
            reasons["hnsw"] = None
        if self.ivf_index is None:
            reasons["ivf"] = f"the index is {describe_index(self.index)}, not IVF (build it with --index-spec IVF1024,Flat)"
        elif _on_gpu(self.ivf_index):
            reasons["ivf"] = "the IVF index is on a GPU, where FAISS ignores IDSelector"
        else:
            reasons["ivf"] = None
        if self.hnswlib_index is None:
            reasons["hnswlib"] = "no hnswlib graph (optional backend: pip install hnswlib)"
        else:
            reasons["hnswlib"] = None
        return {name: reasons[name] for name in STRATEGIES}

    def exact(self, queries: np.ndarray, allowed: AllowedSet, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self.vectors, queries, allowed, k, self.order)

    def search(
        self, queries: np.ndarray, allowed: AllowedSet, k: int, strategy: str = "exact", **knobs: Any
    ) -> FilteredHits:
        """Run one strategy; knobs are ``ef`` (hnsw, hnswlib), ``nprobe`` (ivf) and ``fetch`` (postfilter)."""
        if allowed.total != self.total:
            raise ValueError(f"allowed set covers {allowed.total} rows, the index {self.total}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; expected one of {', '.join(STRATEGIES)}")
        reason = self.availability()[strategy]
        if reason is not None:
            raise ValueError(f"strategy '{strategy}' is not available: {reason}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        started = time.perf_counter()
        kk = min(k, allowed.count)
        if strategy == "exact" or kk == 0:
            rows, scores = self.exact(queries, allowed, k)
            hits = FilteredHits(list(rows), list(scores), strategy)
        else:
            candidate_rows, candidate_scores, used = getattr(self, f"_{strategy}")(queries, allowed, kk, **knobs)
            hits = self._complete(queries, allowed, kk, candidate_rows, candidate_scores, strategy, used)
        hits.seconds = time.perf_counter() - started
        return hits

    def _complete(self, queries, allowed, kk, candidate_rows, candidate_scores, strategy, knobs) -> FilteredHits:
        """Drop padding and disallowed rows, order ties, and search short queries exactly."""
        rank = self.order.rank
        rows_out: list[np.ndarray] = []
        scores_out: list[np.ndarray] = []
        short: list[int] = []
        for position in range(len(queries)):
            rows = candidate_rows[position]
            scores = candidate_scores[position]
            valid = rows >= 0
            valid[valid] = allowed.mask[rows[valid]]
            rows, scores = rows[valid], scores[valid]
            if len(rows) < kk:
                short.append(position)
                rows_out.append(rows)
                scores_out.append(scores)
                continue
            order = np.lexsort((rank[rows], -scores))[:kk]
            rows_out.append(rows[order].astype(np.int64))
            scores_out.append(scores[order].astype(np.float32))
        if short:
            exact_rows, exact_scores = self.exact(queries[short], allowed, kk)
            for slot, position in enumerate(short):
                rows_out[position] = exact_rows[slot]
                scores_out[position] = exact_scores[slot]
        return FilteredHits(rows_out, scores_out, strategy, knobs, fallbacks=len(short))

    def _hnsw(self, queries, allowed, kk, ef: int | np.ndarray | None = None, **_: Any):
        def run(group: np.ndarray, value: int):
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(value, kk)
            if allowed.count < allowed.total:
                params.sel = allowed.selector()
            scores, rows = self.hnsw_index.search(group, kk, params=params)
            return rows, scores

        return _per_knob(queries, kk, _knob_values(ef, self.default_ef, len(queries), kk), run, "ef")

    def _ivf(self, queries, allowed, kk, nprobe: int | None = None, coverage: int | None = None, **_: Any):
        ivf = ivf_of(self.ivf_index)
        if coverage is None:
            nprobe = min(int(nprobe or self.default_nprobe), ivf.nlist)
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            if allowed.count < allowed.total:
                params.sel = allowed.selector()
            scores, rows = self.ivf_index.search(queries, kk, params=params)
            return rows, scores, {"nprobe": nprobe}
        return self._ivf_coverage(ivf, queries, allowed, kk, int(coverage))

    def _ivf_coverage(self, ivf, queries, allowed, kk, coverage):
        """Probe, per query, the nearest lists that hold allowed rows until they hold ``coverage`` allowed rows.

        The allowed rows per list come from the bitmap, so a filter correlated
        with the clusters sends each query as far as the allowed rows are, and
        lists without any allowed row are never scanned.
        """
        allowed_per_list = np.bincount(self._list_of_row()[allowed.rows], minlength=ivf.nlist)
        centroid_scores, lists = ivf.quantizer.search(queries, ivf.nlist)
        counts = allowed_per_list[np.maximum(lists, 0)] * (lists >= 0)
        # Lists before the one that reaches the coverage are probed; empty ones are skipped below.
        reached = np.cumsum(counts, axis=1) >= coverage
        probes = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, ivf.nlist)
        useful = (counts > 0) & (np.arange(ivf.nlist)[None, :] < probes[:, None])
        width = max(1, int(useful.sum(axis=1).max()))
        # Stable sort moves each query's useful lists to the front, nearest first.
        order = np.argsort(~useful, axis=1, kind="stable")[:, :width]
        assign = np.take_along_axis(lists, order, axis=1)
        assign_scores = np.ascontiguousarray(np.take_along_axis(centroid_scores, order, axis=1), dtype=np.float32)
        assign = np.ascontiguousarray(np.where(np.take_along_axis(useful, order, axis=1), assign, -1), dtype=np.int64)
        params = faiss.SearchParametersIVF()
        params.nprobe = width
        if allowed.count < allowed.total:
            params.sel = allowed.selector()
        count = len(queries)
        scores = np.empty((count, kk), dtype=np.float32)
        rows = np.empty((count, kk), dtype=np.int64)
        ivf.search_preassigned_c(
            count, faiss.swig_ptr(queries), kk, faiss.swig_ptr(assign), faiss.swig_ptr(assign_scores),
            faiss.swig_ptr(scores), faiss.swig_ptr(rows), False, params,
        )
        return rows, scores, {"coverage": coverage, "max_lists": width}

    def _list_of_row(self) -> np.ndarray:
        """The IVF list of every row, read from the inverted lists once."""
        if getattr(self, "_row_lists", None) is None:
            ivf = ivf_of(self.ivf_index)
            owner = np.full(self.total, -1, dtype=np.int64)
            for number in range(ivf.nlist):
                size = ivf.invlists.list_size(number)
                if size:
                    ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size)
                    owner[np.asarray(ids, dtype=np.int64)] = number
            self._row_lists = owner
        return self._row_lists

    def _hnswlib(self, queries, allowed, kk, ef: int | np.ndarray | None = None, **_: Any):
        values = _knob_values(ef, self.default_ef, len(queries), kk)
        return _per_knob(queries, kk, values, lambda group, value: self._hnswlib_group(group, allowed, kk, value), "ef")

    def _hnswlib_group(self, queries, allowed, kk, ef: int):
        self.hnswlib_index.set_ef(ef)
        mask = allowed.mask
        accept = None if allowed.count == allowed.total else (lambda label: bool(mask[label]))
        try:
            labels, distances = self.hnswlib_index.knn_query(queries, k=kk, filter=accept, num_threads=1)
        except RuntimeError:
            # hnswlib raises when it cannot find k allowed neighbours, so the exact fallback searches those queries.
            labels = np.full((len(queries), kk), -1, dtype=np.int64)
            distances = np.zeros((len(queries), kk), dtype=np.float32)
            for position in range(len(queries)):
                try:
                    found, dist = self.hnswlib_index.knn_query(queries[position : position + 1], k=kk, filter=accept, num_threads=1)
                    labels[position], distances[position] = found[0], dist[0]
                except RuntimeError:
                    pass
        # hnswlib's "ip" space returns 1 - inner product.
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def _postfilter(self, queries, allowed, kk, fetch: int | None = None, ef: int | None = None, nprobe: int | None = None, **_: Any):
        if fetch is None:
            fetch = int(np.ceil(kk / max(allowed.selectivity, 1e-9) * 2))
        fetch = int(min(max(fetch, kk), self.total, MAX_FETCH))
        if _on_gpu(self.index):
            # NOTE: FAISS GPU indexes accept k <= 2048 (faiss 1.8 to 1.15); untested here, no GPU in CI.
            fetch = min(fetch, GPU_MAX_FETCH)
        params = None
        used: dict[str, Any] = {"fetch": fetch}
        if hnsw_of(self.index) is not None:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(ef or self.default_ef), fetch)
            used["ef"] = params.efSearch
        elif ivf_of(self.index) is not None and not _on_gpu(self.index):
            params = faiss.SearchParametersIVF()
            params.nprobe = min(int(nprobe or self.default_nprobe), ivf_of(self.index).nlist)
            used["nprobe"] = params.nprobe
        if params is not None:
            scores, rows = self.index.search(queries, fetch, params=params)
        else:
            scores, rows = self.index.search(queries, fetch)
        return rows, scores, used


def _knob_values(value: int | np.ndarray | None, default: int, count: int, kk: int) -> np.ndarray:
    """Return one knob per query: ``value`` (a scalar or one per query) or ``default``, at least ``kk``."""
    values = np.broadcast_to(np.asarray(default if value is None else value, dtype=np.int64), (count,))
    return np.maximum(values, kk)


def _per_knob(queries: np.ndarray, kk: int, values: np.ndarray, run: Any, name: str):
    """Search each group of queries that share a knob value with ``run(group, value) -> (rows, scores)``."""
    rows = np.empty((len(queries), kk), dtype=np.int64)
    scores = np.empty((len(queries), kk), dtype=np.float32)
    for value in np.unique(values):
        positions = np.flatnonzero(values == value)
        rows[positions], scores[positions] = run(np.ascontiguousarray(queries[positions]), int(value))
    used = int(values[0]) if len(np.unique(values)) == 1 else values.copy()
    return rows, scores, {name: used}


def build_hnswlib(vectors: np.ndarray, m: int = 32, ef_construction: int = 200, threads: int = -1) -> Any:
    """Build an hnswlib inner-product graph over ``vectors`` with labels = row numbers (needs ``hnswlib``)."""
    import hnswlib

    count, dimension = vectors.shape
    graph = hnswlib.Index(space="ip", dim=dimension)
    graph.init_index(max_elements=count, ef_construction=ef_construction, M=m)
    for start in range(0, count, 65_536):
        block = np.ascontiguousarray(vectors[start : start + 65_536], dtype=np.float32)
        graph.add_items(block, np.arange(start, start + len(block)), num_threads=threads)
    return graph


def hnswlib_available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = [
    "STRATEGIES",
    "AllowedSet",
    "FilteredHits",
    "FilteredSearcher",
    "TieOrder",
    "build_hnswlib",
    "exact_search",
    "hnswlib_available",
]
