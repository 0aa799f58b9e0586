"""Choose a filtered-search strategy per query batch from the filter's selectivity and a calibrated cost model.

Selectivity is not estimated: the filter is evaluated to a bitmap first, and
counting its bits is cheap. The cost model estimates, for each strategy, how long a
query takes at a given selectivity and which knob (``efSearch``, ``nprobe``,
over-fetch) reaches the target recall there. It is measured on the index itself
by :func:`calibrate`:

* ``exact``: the cost of gathering one row and of one query-row dot product
  (so exact cost = overhead + gather x allowed rows + dot x queries x allowed rows);
* ``hnsw``, ``ivf``, ``hnswlib``, ``postfilter``: at selectivities from 100%
  down to 0.2% in 1-2-5 steps (those that leave at least 50 rows), on a filter
  of uniformly random rows, the smallest knob on a ladder whose recall@k
  against exact search reaches ``target_recall`` (refined between the ladder's
  steps, see :func:`_climb`), and the time per query at
  that knob, counting the exact fallback for queries that come back short. IVF must also
  reach the target on a filter correlated with the vectors (the rows nearest
  one random document). Climbing stops once a run
  takes ``CALIBRATION_BUDGET`` times as long as exact search on the same
  filter, which bounds the calibration's time.

A random filter leaves every query the same share of allowed rows nearby. A
real filter need not: one correlated with the vectors leaves some queries
with almost none (:mod:`retk.ann.regions`). So graph search and post-filtering,
which only see a query's neighbourhood, are costed per query at that query's
local selectivity, and each query gets its own ``efSearch`` (a value that
only a few queries of the batch share is raised to the next one, so that each
FAISS call has enough queries to spread over threads). IVF, whose
``coverage`` knob already follows the allowed rows list by list, is costed at
the global selectivity. Queries whose neighbourhood lies below every
selectivity graph search reached in calibration rule it out for the batch.

The calibration queries are documents moved off themselves by noise unless a
sample of the real workload is given (``retk index --calibration-queries``).
With a sample, a knob must reach the target at the sample's lower confidence
bound (:func:`calibrate`).

Between calibrated selectivities the knob and the time are interpolated
linearly in log-log space; below the smallest one, knob and time grow as
1/selectivity and the estimate is marked extrapolated; where no knob on the
ladder reached the target, the strategy is not used at that selectivity or
below. The planner picks the cheapest estimate and prefers ``exact`` when it is
within ``EXACT_PREFERENCE`` of the cheapest, since it is never wrong.

Why calibrate at build time (:class:`retk.retrieval.dense.DenseIndexBuilder`)
and store the result in the manifest rather than calibrate lazily on first
search: an index folder is immutable once its atomic rename has happened, so a
lazily computed model could not be cached in it without racing concurrent
readers or failing on read-only deployments, and recomputing it on every open
would add seconds to every CLI search. At build time it costs a few seconds
next to minutes of encoding, runs on the machine that built the index, and
every later search gets the same, inspectable plan. Indexes built before the
cost model existed (no ``filter_calibration`` in the manifest) use
``DEFAULT_MODEL``, a conservative model that sends everything to ``exact``
unless a strategy is asked for.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retk.ann.filtered import MAX_FETCH, STRATEGIES, AllowedSet, FilteredSearcher, scans_whole_matrix
from retk.ann.regions import Regions

logger = logging.getLogger(__name__)

CALIBRATION_VERSION = 3
CALIBRATION_SELECTIVITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
CALIBRATION_MIN_ROWS = 50
CALIBRATION_QUERIES = 256
# A workload sample may hold more queries: its recall estimates the workload's, and more queries narrow the bound below.
WORKLOAD_QUERIES = 1024
TARGET_RECALL = 0.95
# With a workload sample, a knob reaches the target when the one-sided 95% lower confidence bound of its mean
# recall over the sample does (mean - z x standard error), so that the workload's recall reaches it too.
CONFIDENCE_Z = 1.645
EXACT_PREFERENCE = 1.05
# A knob whose run takes this many times longer than exact search is not worth raising further: calibration
# stops there and marks the selectivity unreached, which also bounds the calibration's time.
CALIBRATION_BUDGET = 20.0
# Exact search on a tiny index takes microseconds, so the budget is at least this many seconds of it.
BUDGET_FLOOR_SECONDS = 0.005
EF_LADDER = (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048, 3072, 4096)
FETCH_FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
# IVF's knob is the number of allowed rows each query's probed lists must hold (see FilteredSearcher._ivf_coverage).
COVERAGE_LADDER = (20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360, 20480, 40960)
KNOB_OF = {"hnsw": "ef", "hnswlib": "ef", "ivf": "coverage", "postfilter": "fetch_factor"}
# IVF is ruled out when more than IVF_FAR_QUERIES of a batch's queries have a local selectivity under
# IVF_FAR_SHARE of the global one (a filter correlated with the vectors).
IVF_FAR_SHARE = 0.1
IVF_FAR_QUERIES = 0.01
# Local selectivities are rounded down to steps of 1% of their value before the cost curves are read (Planner._graph).
LEVEL_STEP = math.log(1.01)
# Queries that share an efSearch value with fewer others than this search with the next larger value (_merge_small_groups).
MIN_GROUP_QUERIES = 64

# Used when an index has no calibration: exact costs of a typical 2-core CPU, no ANN points.
DEFAULT_MODEL: dict[str, Any] = {
    "version": CALIBRATION_VERSION,
    "source": "default",
    "k": 10,
    "exact": {"overhead_ms": 0.05, "gather_ns_per_row": 150.0, "dot_ns_per_pair": 0.3},
}


# ---------------------------------------------------------------------------
# Calibration.


def calibrate(
    searcher: FilteredSearcher,
    *,
    k: int = 10,
    queries: int = CALIBRATION_QUERIES,
    selectivities: tuple[float, ...] = CALIBRATION_SELECTIVITIES,
    target_recall: float = TARGET_RECALL,
    strategies: tuple[str, ...] | None = None,
    seed: int = 0,
    workload: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure the cost model of ``searcher``'s strategies on its own vectors (see the module docstring).

    ``workload`` is an optional sample of real query vectors. When it is
    given, up to ``WORKLOAD_QUERIES`` of them replace the ``queries``
    documents moved off themselves by noise. Real queries can lie nearer to or
    farther from the documents than the noisy documents do, and the knobs
    follow them. Recall on a sample estimates the workload's, so a knob must
    reach the target at the estimate's lower confidence bound
    (``CONFIDENCE_Z``). The noisy documents are a stand-in, not a sample of
    the workload, and their mean recall is used as it is.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    vectors = searcher.vectors
    total = searcher.total
    if workload is None:
        sample, source, z = _calibration_queries(vectors, min(queries, total), rng), "documents + noise", 0.0
    else:
        sample, source, z = _workload_sample(workload, WORKLOAD_QUERIES, rng, vectors.shape[1]), "workload sample", CONFIDENCE_Z
    model: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "source": "calibrated",
        "k": k,
        "documents": total,
        "queries": len(sample),
        "query_source": source,
        "target_recall": target_recall,
        "confidence_z": z,
        "exact": _calibrate_exact(searcher, sample, rng),
    }
    available = searcher.availability()
    chosen = [s for s in (strategies or STRATEGIES) if s != "exact" and available[s] is None]
    levels = [s for s in selectivities if s * total >= CALIBRATION_MIN_ROWS]
    masks = {s: _calibration_masks(vectors, s, rng, correlated="ivf" in chosen) for s in levels}
    truths: dict[float, list[np.ndarray]] = {}
    exact_seconds: dict[float, list[float]] = {}
    for s in levels:
        for allowed in masks[s]:
            hits = searcher.search(sample, allowed, k, "exact")
            truths.setdefault(s, []).append(hits.rows)
            exact_seconds.setdefault(s, []).append(hits.seconds)
    for strategy in chosen:
        # Only IVF is planned at the global selectivity, so only IVF must also meet the target on a correlated filter.
        kinds = slice(None) if strategy == "ivf" else slice(0, 1)
        picked = ({s: m[kinds] for s, m in masks.items()}, {s: t[kinds] for s, t in truths.items()}, {s: e[kinds] for s, e in exact_seconds.items()})
        model[strategy] = _calibrate_strategy(searcher, strategy, sample, k, levels, *picked, target_recall, z)
        # The unfiltered knob becomes the base that post-filtering searches with.
        apply_base_knobs(searcher, model)
    model["seconds"] = round(time.perf_counter() - started, 3)
    return model


def _calibration_queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Documents moved off themselves by noise (cosine about 0.8 to their source), like real queries."""
    rows = np.sort(rng.choice(len(vectors), size=count, replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    norms = np.linalg.norm(base, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = base / norms + 0.75 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return np.ascontiguousarray(queries * norms.mean(), dtype=np.float32)


def _workload_sample(workload: np.ndarray, count: int, rng: np.random.Generator, dimension: int) -> np.ndarray:
    """Return up to ``count`` rows of a workload's query vectors, drawn without replacement."""
    workload = np.asarray(workload, dtype=np.float32)
    if workload.ndim != 2 or workload.shape[1] != dimension or len(workload) == 0:
        raise ValueError(f"calibration queries must be a non-empty (n, {dimension}) matrix, got shape {workload.shape}")
    if len(workload) > count:
        workload = workload[np.sort(rng.choice(len(workload), size=count, replace=False))]
    return np.ascontiguousarray(workload)


def _calibration_masks(vectors: np.ndarray, selectivity: float, rng: np.random.Generator, correlated: bool) -> list[AllowedSet]:
    """Return a filter of random rows, then (when ``correlated``) the rows nearest one random document."""
    total = len(vectors)
    count = max(1, int(round(selectivity * total)))
    if count >= total:
        return [AllowedSet.everything(total)]
    masks = [AllowedSet.from_rows(rng.choice(total, size=count, replace=False), total)]
    if correlated:
        anchor = np.asarray(vectors[int(rng.integers(total))], dtype=np.float32)
        projection = np.concatenate(
            [np.asarray(vectors[start : start + 65_536], dtype=np.float32) @ anchor for start in range(0, total, 65_536)]
        )
        masks.append(AllowedSet.from_rows(np.argpartition(-projection, count - 1)[:count], total))
    return masks


def _calibrate_exact(searcher: FilteredSearcher, sample: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    total = searcher.total
    rows = np.sort(rng.choice(total, size=min(total, 20_000), replace=False))
    allowed = AllowedSet.from_rows(rows, total)
    one = sample[:1]
    # Gather and product separately; best of three to ride out scheduling noise.
    gather = min(_timed(lambda: np.asarray(searcher.vectors[rows], dtype=np.float32)) for _ in range(3))
    block = np.asarray(searcher.vectors[rows], dtype=np.float32)
    product = min(_timed(lambda: sample @ block.T) for _ in range(3))
    overhead = min(_timed(lambda: searcher.exact(one, AllowedSet.from_rows(rows[:16], total), 10)) for _ in range(3))
    whole = min(_timed(lambda: searcher.exact(sample, allowed, 10)) for _ in range(2))
    dot = product / (len(sample) * len(rows))
    # Selection (partition, sort) scales with queries x rows too: fold it into the per-pair cost.
    per_pair = max(dot, (whole - gather) / (len(sample) * len(rows)))
    return {
        "overhead_ms": round(overhead * 1e3, 4),
        "gather_ns_per_row": round(gather / len(rows) * 1e9, 3),
        "dot_ns_per_pair": round(per_pair * 1e9, 5),
    }


def _calibrate_strategy(searcher, strategy, sample, k, levels, masks, truths, exact_seconds, target_recall, z) -> dict[str, Any]:
    ladder = _ladder(searcher, strategy)
    points: list[dict[str, Any]] = []
    unreached: list[float] = []
    start_at = 0
    for selectivity in levels:
        found = []
        for allowed, truth, exact_time in zip(masks[selectivity], truths[selectivity], exact_seconds[selectivity]):
            result = _climb(searcher, strategy, sample, k, allowed, truth, exact_time, target_recall, ladder, start_at, z)
            if result is None:
                break
            found.append(result)
        if len(found) < len(masks[selectivity]):
            unreached.append(selectivity)
            break
        start_at = max(position for position, _, _ in found)
        knob = max(value for _, value, _ in found)

        # Time the chosen knob on every filter, best of three, and keep the slowest filter's time.
        seconds = 0.0
        for allowed in masks[selectivity]:
            arguments = _knob_arguments(strategy, knob, k, allowed)
            best = min(searcher.search(sample, allowed, k, strategy, **arguments).seconds for _ in range(3))
            seconds = max(seconds, best)
        points.append(
            {
                "selectivity": selectivity,
                KNOB_OF[strategy]: knob,
                "ms_per_query": round(seconds / len(sample) * 1e3, 5),
                "recall": round(min(recall for _, _, recall in found), 4),
            }
        )
    # A sparser filter does not make a strategy cheaper, so a lower time at a lower selectivity is timing noise.
    for previous, point in zip(points, points[1:]):
        point["ms_per_query"] = max(point["ms_per_query"], previous["ms_per_query"])
    return {"knob": KNOB_OF[strategy], "points": points, "unreached": unreached}


def _climb(searcher, strategy, sample, k, allowed, truth, exact_time, target_recall, ladder, start, z=0.0) -> tuple[int, float, float] | None:
    """Return ``(ladder position, knob, recall)`` for the smallest knob that reaches ``target_recall``, or None.

    The knob climbs the ladder from ``start`` to the first step that reaches the
    target. Recall is then interpolated linearly between that step and the one
    below it, and the interpolated knob is kept if a measurement shows that it
    reaches the target too. Recall here is the mean over the queries less
    ``z`` standard errors.
    """

    def measure(value: float) -> tuple[float, float]:
        hits = searcher.search(sample, allowed, k, strategy, **_knob_arguments(strategy, value, k, allowed))
        return _recall_bound(hits.rows, truth, z), hits.seconds

    below = None
    for position in range(start, len(ladder)):
        recall, seconds = measure(ladder[position])
        if recall >= target_recall:
            return (position, *_refine(measure, strategy, ladder, position, recall, below, target_recall))
        if seconds > CALIBRATION_BUDGET * max(exact_time, BUDGET_FLOOR_SECONDS):
            return None
        below = recall
    return None


def _refine(measure, strategy, ladder, position, recall, below, target_recall) -> tuple[float, float]:
    """Return ``(knob, recall)``: the interpolated knob below ``ladder[position]`` if it reaches the target, else that step.

    ``below`` is the recall at the step below, or None when it was not measured yet.
    """
    upper = ladder[position]
    if position == 0:
        return upper, recall

    lower = ladder[position - 1]
    if below is None:
        below = measure(lower)[0]
    if below >= target_recall:
        return upper, recall

    candidate = _round_up(strategy, lower + (upper - lower) * (target_recall - below) / (recall - below))
    if candidate < upper:
        refined = measure(candidate)[0]
        if refined >= target_recall:
            return candidate, refined
    return upper, recall


def _round_up(strategy: str, value: float) -> float:
    """Round a knob up to what the strategy takes: whole efSearch and coverage, a fetch factor to 0.01."""
    if KNOB_OF[strategy] == "fetch_factor":
        return math.ceil(value * 100) / 100
    return math.ceil(value)


def _ladder(searcher: FilteredSearcher, strategy: str) -> tuple:
    if strategy == "ivf":
        return COVERAGE_LADDER
    if strategy == "postfilter":
        return FETCH_FACTORS
    return EF_LADDER


def _knob_arguments(strategy: str, value: float, k: int, allowed: AllowedSet) -> dict[str, Any]:
    if strategy in ("hnsw", "hnswlib"):
        return {"ef": int(value)}
    if strategy == "ivf":
        return {"coverage": int(value)}
    return {"fetch": fetch_for(k, allowed.selectivity, value)}


def fetch_for(k: int, selectivity: float, factor: float) -> int:
    """Candidates the post-filter strategy fetches: k / selectivity times ``factor``."""
    return int(math.ceil(k / max(selectivity, 1e-9) * factor))


def _recall_bound(found: list[np.ndarray], truth: list[np.ndarray], z: float) -> float:
    """Return mean recall@k over the queries less ``z`` standard errors (0: the mean itself)."""
    scores = np.array(
        [len(set(rows.tolist()) & set(expected.tolist())) / len(expected) for rows, expected in zip(found, truth) if len(expected)]
    )
    if len(scores) == 0:
        return 1.0
    if z == 0 or len(scores) == 1:
        return float(scores.mean())
    return float(scores.mean() - z * scores.std(ddof=1) / math.sqrt(len(scores)))


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------
# Planning.


@dataclass
class Estimate:
    strategy: str
    seconds: float | None
    knobs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Plan:
    """The strategy chosen for one filtered search, and why."""

    strategy: str
    knobs: dict[str, Any]
    count: int
    total: int
    queries: int
    reason: str
    estimates: list[Estimate]
    filter_text: str | None = None
    model_source: str = "default"
    requested: str = "auto"
    fallbacks: int | None = None
    seconds: float | None = None

    @property
    def selectivity(self) -> float:
        return self.count / self.total if self.total else 0.0

    def explain(self) -> str:
        """Human-readable text: selectivity, chosen strategy and why, and every strategy's estimate."""
        lines = []
        if self.filter_text is not None:
            lines.append(f"filter: {self.filter_text}")
        lines.append(f"matches: {self.count:,} of {self.total:,} documents (selectivity {_percent(self.selectivity)})")
        knob_text = describe_knobs(self.knobs)
        lines.append(f"strategy: {self.strategy}" + (f" ({knob_text})" if knob_text else "") + f"  (requested: {self.requested})")
        lines.append(f"why: {self.reason}")
        lines.append(f"estimates for {self.queries} quer{'y' if self.queries == 1 else 'ies'} (cost model: {self.model_source}):")
        for estimate in self.estimates:
            cost = f"{estimate.seconds * 1e3:10.3f} ms" if estimate.seconds is not None else f"{'-':>13}"
            lines.append(f"  {estimate.strategy:<11}{cost}  {estimate.note}")
        if self.seconds is not None:
            fallback = f", {self.fallbacks} quer{'y' if self.fallbacks == 1 else 'ies'} completed by exact search" if self.fallbacks else ""
            lines.append(f"ran in {self.seconds * 1e3:.3f} ms{fallback}")
        return "\n".join(lines)


def _selectivity_floor(allowed: AllowedSet) -> float:
    """Return the filter's selectivity, at least one row's share, so that logarithms stay finite."""
    return max(allowed.selectivity, 1.0 / max(allowed.total, 1))


def _curve_at(points: list[dict[str, Any]], unreached: list[float], knob_name: str, selectivity: float) -> tuple[float, float, bool] | None:
    """Interpolate calibration ``points`` at ``selectivity`` (see the module docstring), or return None where out of reach."""
    if (unreached and selectivity <= max(unreached) * 1.0001) or not points:
        return None
    ordered = sorted(points, key=lambda p: -p["selectivity"])
    if selectivity >= ordered[0]["selectivity"]:
        return ordered[0][knob_name], ordered[0]["ms_per_query"], False
    lowest = ordered[-1]
    if selectivity <= lowest["selectivity"]:
        if unreached:
            return None
        growth = lowest["selectivity"] / selectivity
        knob = lowest[knob_name] if knob_name == "fetch_factor" else lowest[knob_name] * growth
        return knob, lowest["ms_per_query"] * growth, True
    for high, low in zip(ordered, ordered[1:]):
        if low["selectivity"] <= selectivity <= high["selectivity"]:
            t = (math.log(high["selectivity"]) - math.log(selectivity)) / (math.log(high["selectivity"]) - math.log(low["selectivity"]))
            knob = math.exp((1 - t) * math.log(high[knob_name]) + t * math.log(low[knob_name]))
            ms = math.exp((1 - t) * math.log(max(high["ms_per_query"], 1e-6)) + t * math.log(max(low["ms_per_query"], 1e-6)))
            return knob, ms, False
    return None


def _exact_clearly_cheapest(estimates: list[Estimate]) -> bool:
    """Say whether exact search costs under half of every other estimate, a margin that local selectivity seldom overturns."""
    costs = {e.strategy: e.seconds for e in estimates if e.seconds is not None}
    others = [seconds for strategy, seconds in costs.items() if strategy != "exact"]
    return "exact" in costs and all(costs["exact"] * 2 <= seconds for seconds in others)


def _merge_small_groups(efs: np.ndarray) -> np.ndarray:
    """Raise the efSearch of groups under ``MIN_GROUP_QUERIES`` queries to the next larger value in the batch.

    Each distinct efSearch is one FAISS call, parallelised on its own, so a few
    queries alone in a call leave threads idle. A larger efSearch only adds
    recall.
    """
    values, counts = np.unique(efs, return_counts=True)
    merged = efs.copy()
    carried = 0
    for position, (value, count) in enumerate(zip(values[:-1], counts[:-1])):
        carried += count
        if carried < MIN_GROUP_QUERIES:
            merged[merged == value] = values[position + 1]
        else:
            carried = 0
    return merged


def describe_knobs(knobs: dict[str, Any]) -> str:
    """Format knobs as ``name=value`` pairs, a per-query knob as its range and median."""
    parts = []
    for name, value in knobs.items():
        if isinstance(value, np.ndarray):
            parts.append(f"{name}={int(value.min())}..{int(value.max())} per query (median {int(np.median(value))})")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def _spread(local: np.ndarray, allowed: AllowedSet) -> str:
    """Say how unevenly the allowed rows lie around the queries, when they do."""
    if len(local) < 2 or allowed.count in (0, allowed.total):
        return ""
    low, high = np.quantile(local, [0.1, 0.9])
    if high <= 2 * max(low, 1e-12):
        return ""
    return f"; allowed rows nearby: {_percent(float(low))} to {_percent(float(high))} of rows (10th to 90th percentile of queries)"


def _percent(value: float) -> str:
    if value == 0:
        return "0%"
    if value >= 0.01:
        return f"{value:.1%}"
    return f"{value:.3%}"


def apply_base_knobs(searcher: FilteredSearcher, model: dict[str, Any]) -> None:
    """Set the searcher's default efSearch and nprobe to the calibrated unfiltered (100%) knobs."""
    for strategy, attribute, name in (("hnsw", "default_ef", "ef"),):
        points = (model.get(strategy) or {}).get("points") or []
        if points and points[0]["selectivity"] >= 1.0:
            setattr(searcher, attribute, int(points[0][name]))


class Planner:
    """Pick a strategy for a batch of queries over an :class:`AllowedSet` using a calibration dict."""

    def __init__(self, searcher: FilteredSearcher, model: dict[str, Any] | None = None) -> None:
        self.searcher = searcher
        self.model = model if model else DEFAULT_MODEL
        apply_base_knobs(searcher, self.model)

    @property
    def source(self) -> str:
        if self.model.get("source") == "calibrated":
            queries = f"{self.model.get('queries')} {'queries' if self.model.get('query_source') == 'workload sample' else 'noisy documents'}"
            return f"calibrated on this index ({self.model.get('seconds', 0):.1f} s, {queries})"
        return "default (no calibration in the manifest: only exact is chosen automatically)"

    def estimate(self, strategy: str, allowed: AllowedSet, local: np.ndarray, k: int, available: dict[str, str | None] | None = None) -> Estimate:
        """Estimate one strategy for a batch of queries whose local selectivities are ``local``.

        ``available`` is the searcher's :meth:`~retk.ann.filtered.FilteredSearcher.availability`, when the caller has it.
        """
        reason = (available or self.searcher.availability())[strategy]
        if reason is not None:
            return Estimate(strategy, None, note=f"unavailable: {reason}")
        if strategy == "exact":
            return self._exact(allowed, len(local))
        section = self.model.get(strategy)
        if not section:
            return Estimate(strategy, None, note="not calibrated for this index")
        return ESTIMATORS[strategy](self, strategy, section, allowed, local, k)

    def local_selectivity(self, allowed: AllowedSet, queries: np.ndarray) -> np.ndarray:
        """Return each query's share of allowed rows in the regions around it (:mod:`retk.ann.regions`)."""
        return self.searcher.regions.local_selectivity(queries, allowed.mask)

    def _exact(self, allowed: AllowedSet, queries: int) -> Estimate:
        costs = self.model["exact"]
        count = allowed.count
        scan = scans_whole_matrix(count, allowed.total, queries)
        rows = allowed.total if scan else count
        gather = 0.0 if scan else costs["gather_ns_per_row"] * count * 1e-9
        seconds = costs["overhead_ms"] * 1e-3 + gather + costs["dot_ns_per_pair"] * 1e-9 * queries * rows
        how = f"scan all {allowed.total:,} vectors, mask" if scan else f"gather {count:,} vectors"
        return Estimate("exact", seconds, note=f"{how} + BLAS; exact")

    def _curve(self, section: dict[str, Any], selectivity: float) -> tuple[float, float, bool] | None:
        """Return the calibrated ``(knob, ms per query, extrapolated)`` at ``selectivity``, or None where out of reach."""
        return _curve_at(section.get("points", []), section.get("unreached", []), section["knob"], selectivity)

    def _graph(self, strategy: str, section: dict[str, Any], allowed: AllowedSet, local: np.ndarray, k: int) -> Estimate:
        """Estimate graph search per query at its local selectivity, so each query gets its own efSearch."""
        # Rounding each local selectivity down to a 1% step (a slightly larger efSearch) leaves few levels to interpolate.
        floor = np.maximum(local, 1.0 / max(allowed.total, 1))
        levels, inverse = np.unique(np.exp(np.floor(np.log(floor) / LEVEL_STEP) * LEVEL_STEP), return_inverse=True)
        curves = [self._curve(section, float(level)) for level in levels]
        missing = int(sum(np.count_nonzero(inverse == position) for position, curve in enumerate(curves) if curve is None))
        if missing:
            return Estimate(strategy, None, note=f"{missing} of {len(local)} queries have too few allowed rows nearby to reach recall {self._target()}")
        efs = _merge_small_groups(np.array([int(min(math.ceil(curve[0]), EF_LADDER[-1] * 4)) for curve in curves])[inverse])
        seconds = sum(curves[position][1] for position in inverse) * 1e-3
        extrapolated = " (extrapolated below the calibrated selectivities)" if any(curve[2] for curve in curves) else ""
        knobs = {"ef": int(efs[0]) if len(set(efs.tolist())) == 1 else efs}
        return Estimate(strategy, seconds, knobs, note=f"{describe_knobs(knobs)}{extrapolated}{_spread(local, allowed)}")

    def _ivf(self, strategy: str, section: dict[str, Any], allowed: AllowedSet, local: np.ndarray, k: int) -> Estimate:
        """Estimate IVF at the global selectivity, because it probes lists until they contain enough allowed rows.

        Queries with almost no allowed rows nearby find their neighbours spread
        over lists that the coverage rule does not reach, so they rule IVF out.
        """
        far = int(np.count_nonzero(local < IVF_FAR_SHARE * allowed.selectivity))
        if far > IVF_FAR_QUERIES * len(local):
            return Estimate(strategy, None, note=f"{far} of {len(local)} queries have almost no allowed rows nearby")
        curve = self._curve(section, _selectivity_floor(allowed))
        if curve is None:
            return Estimate(strategy, None, note=f"cannot reach recall {self._target()} at selectivity {_percent(allowed.selectivity)} (calibration)")
        knobs = {"coverage": int(math.ceil(curve[0]))}
        extrapolated = " (extrapolated below the calibrated selectivities)" if curve[2] else ""
        return Estimate(strategy, curve[1] * 1e-3 * len(local), knobs, note=f"{describe_knobs(knobs)}{extrapolated}")

    def _postfilter(self, strategy: str, section: dict[str, Any], allowed: AllowedSet, local: np.ndarray, k: int) -> Estimate:
        """Estimate over-fetching at the global selectivity, plus exact search for the queries with too few allowed rows nearby."""
        curve = self._curve(section, _selectivity_floor(allowed))
        if curve is None:
            return Estimate(strategy, None, note=f"cannot reach recall {self._target()} at selectivity {_percent(allowed.selectivity)} (calibration)")
        kk = min(k, allowed.count)
        fetch = fetch_for(kk, allowed.selectivity, curve[0])
        short = int(np.count_nonzero(local * min(fetch, MAX_FETCH) < kk))
        seconds = curve[1] * 1e-3 * len(local) + (self._exact(allowed, short).seconds if short else 0.0)
        knobs = {"fetch": fetch}
        shortfall = f"; about {short} short answers completed exactly" if short else ""
        return Estimate(strategy, seconds, knobs, note=f"{describe_knobs(knobs)}{shortfall}")

    def _target(self) -> float:
        return self.model.get("target_recall", TARGET_RECALL)

    def plan(self, allowed: AllowedSet, queries: np.ndarray | int, k: int, strategy: str = "auto") -> Plan:
        """Return the plan for a batch of query vectors (or a query count), obeying any ``strategy`` other than ``auto``."""
        if strategy != "auto" and strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; expected auto or one of {', '.join(STRATEGIES)}")
        count = queries if isinstance(queries, int) else len(queries)
        available = self.searcher.availability()
        # First pass: every query at the global selectivity.
        estimates = [self.estimate(name, allowed, np.full(count, allowed.selectivity), k, available) for name in STRATEGIES]
        if not isinstance(queries, int) and 0 < allowed.count and not _exact_clearly_cheapest(estimates):
            # Reading each query's neighbourhood costs a product with every region centroid, so it is done only when it can change the choice.
            local = self.local_selectivity(allowed, queries)
            estimates = [self.estimate(name, allowed, local, k, available) for name in STRATEGIES]
        queries = count
        by_name = {e.strategy: e for e in estimates}
        source = self.source
        if allowed.count == 0:
            return Plan("exact", {}, 0, allowed.total, queries, "the filter matches no document: nothing to search", estimates, model_source=source, requested=strategy)
        if strategy != "auto":
            chosen = by_name[strategy]
            if chosen.seconds is None and available[strategy] is not None:
                raise ValueError(f"strategy '{strategy}' is not available: {available[strategy]}")
            knobs = chosen.knobs or self._default_knobs(strategy, allowed, k)
            return Plan(strategy, knobs, allowed.count, allowed.total, queries, f"strategy '{strategy}' was requested", estimates, model_source=source, requested=strategy)
        if allowed.count <= k:
            return Plan("exact", {}, allowed.count, allowed.total, queries, f"at most k={k} documents match: exact search returns all of them", estimates, model_source=source)
        usable = [e for e in estimates if e.seconds is not None]
        best = min(usable, key=lambda e: e.seconds)
        exact = by_name["exact"]
        if best.strategy != "exact" and exact.seconds <= best.seconds * EXACT_PREFERENCE:
            reason = (
                f"exact is within {EXACT_PREFERENCE:.2f}x of the cheapest estimate ({best.strategy}, "
                f"{best.seconds * 1e3:.3f} ms) and never misses a document"
            )
            best = exact
        elif best.strategy == "exact":
            others = [e for e in usable if e.strategy != "exact"]
            if others:
                runner = min(others, key=lambda e: e.seconds)
                reason = f"lowest estimated cost; the next best, {runner.strategy}, is estimated {runner.seconds / max(best.seconds, 1e-12):.1f}x slower"
            else:
                reason = "the only strategy this index supports with a cost estimate"
        else:
            reason = (
                f"lowest estimated cost, {exact.seconds / max(best.seconds, 1e-12):.1f}x below exact; "
                f"its knob was calibrated to recall@{self.model.get('k', 10)} ≥ {self.model.get('target_recall', TARGET_RECALL)}"
            )
        return Plan(best.strategy, best.knobs, allowed.count, allowed.total, queries, reason, estimates, model_source=source)

    def _default_knobs(self, strategy: str, allowed: AllowedSet, k: int) -> dict[str, Any]:
        """Knobs for a requested strategy that the cost model has no estimate for: scale with 1/selectivity."""
        s = max(allowed.selectivity, 1e-9)
        if strategy in ("hnsw", "hnswlib"):
            return {"ef": int(min(max(self.searcher.default_ef, math.ceil(2 * k / s)), 16_384))}
        if strategy == "ivf":
            return {"coverage": 40 * k}
        if strategy == "postfilter":
            return {"fetch": fetch_for(min(k, allowed.count), s, 2.0)}
        return {}

    def search(self, queries: np.ndarray, allowed: AllowedSet, k: int, strategy: str = "auto"):
        """Plan, run, and return ``(hits, plan)``; ``hits.seconds`` counts the planning too."""
        started = time.perf_counter()
        plan = self.plan(allowed, queries, k, strategy)
        hits = self.searcher.search(queries, allowed, k, plan.strategy, **plan.knobs)
        hits.seconds = time.perf_counter() - started
        plan.fallbacks = hits.fallbacks
        plan.seconds = hits.seconds
        if hits.knobs:
            plan.knobs = hits.knobs
        return hits, plan


ESTIMATORS = {"hnsw": Planner._graph, "hnswlib": Planner._graph, "ivf": Planner._ivf, "postfilter": Planner._postfilter}


def calibrate_dense_index(vectors: np.ndarray, index: Any, regions: Regions | None = None, **options: Any) -> dict[str, Any]:
    """Calibrate the strategies a dense index supports (exact, post-filter, and HNSW or IVF per its kind)."""
    searcher = FilteredSearcher(vectors, index, regions=regions)
    return calibrate(searcher, **options)


__all__ = [
    "DEFAULT_MODEL",
    "Estimate",
    "Plan",
    "Planner",
    "calibrate",
    "calibrate_dense_index",
    "fetch_for",
]
