"""Filtered ANN benchmark: every strategy alone, and the planner, at recall@10 >= 0.95.

Data: ``--documents`` x ``--dimension`` vectors from a Gaussian mixture with
Zipf-sized clusters (ANN over isotropic Gaussian noise is meaningless), and
``--queries`` queries drawn from the same mixture. Attributes:

* ``tenant``: 1,000 uniform categories, independent of the clusters;
* ``topic``: the cluster's label, so ``topic in (...)`` keeps whole clusters
  (correlated with the vectors: most queries lie far from the allowed rows);
* ``price``: uniform in [0, 1), independent (range filters);
* ``tags``: a list; tag ``pS`` is present with probability S (multi-label).

For each selectivity in ``--selectivities`` and each filter kind, the filter
text goes through the real filter language to a bitmap, the exact filtered
top-10 is the ground truth, and each strategy's knob (efSearch, nprobe,
over-fetch) is bisected on the planner's ladder for the smallest value whose recall@10 >= 0.95; the
QPS at that knob is the strategy's figure. The planner runs with the knobs it
chooses itself (cost model calibrated on the same index) and no oracle, twice:
calibrated on documents moved off themselves by noise (the default), and on
``--calibration-sample`` other queries drawn from the mixture (a sample of the
workload, as ``retk index --calibration-queries`` takes). All
queries of a filter are searched as one batch. Times are single-threaded,
then re-measured with 2 threads at the same knobs. Build time and memory
(serialized index bytes; the float32 matrix for exact) are per strategy.

Usage::

    nice -n 10 .venv/bin/python benchmarks/filtered_ann.py --documents 200000 --queries 1000 \\
        --output results/filtered_ann.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from retk.ann.filter_language import Filter
from retk.ann.filtered import MAX_FETCH, AllowedSet, FilteredSearcher, build_hnswlib, hnswlib_available
from retk.ann.planner import COVERAGE_LADDER, EF_LADDER, FETCH_FACTORS, Planner, apply_base_knobs, calibrate, describe_knobs, fetch_for

K = 10
# Each reported time is the best of this many rounds, each round running every strategy and planner once in turn,
# so that a passing disturbance of the machine does not fall on one of them alone.
REPEATS = 5
TARGET = 0.95
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5, 1.0)
KINDS = ("categorical", "correlated", "range", "multilabel")


def make_data(documents: int, dimension: int, queries: int, clusters: int, seed: int, sample: int = 0):
    """Return ``(vectors, query_vectors, cluster_of_row, workload_sample)`` from a Zipf-sized Gaussian mixture.

    ``workload_sample`` is ``sample`` more queries from the same mixture,
    drawn after the others (so the queries do not depend on ``sample``), for
    the planner that calibrates on a sample of the workload.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dimension)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    weights /= weights.sum()
    spread = rng.uniform(0.6, 1.2, clusters).astype(np.float32)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(clusters, size=count, p=weights)
        points = np.empty((count, dimension), dtype=np.float32)
        for start in range(0, count, 50_000):
            part = labels[start : start + 50_000]
            noise = rng.standard_normal((len(part), dimension)).astype(np.float32)
            points[start : start + len(part)] = centers[part] + noise * spread[part, None]
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        return points, labels

    vectors, labels = draw(documents)
    query_vectors, _ = draw(queries)
    workload, _ = draw(sample)
    return vectors, query_vectors, labels, workload


def make_attributes(labels: np.ndarray, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed + 1)
    count = len(labels)
    tenant = np.char.add("t", np.char.zfill(rng.integers(0, 1000, count).astype(str), 4))
    topic = np.char.add("c", np.char.zfill(labels.astype(str), 4))
    price = rng.random(count)
    present = {f"p{s:g}": rng.random(count) < s for s in SELECTIVITIES}
    tags = [[name for name, rows in present.items() if rows[i]] for i in range(count)]
    return pa.table(
        {
            "id": pa.array(np.arange(count).astype(str)),
            "tenant": pa.array(tenant),
            "topic": pa.array(topic),
            "price": pa.array(price),
            "tags": pa.array(tags, pa.list_(pa.string())),
        }
    )


def filter_text(kind: str, selectivity: float, labels: np.ndarray) -> str:
    if kind == "categorical":
        values = max(1, round(selectivity * 1000))
        if values >= 1000:
            return "tenant >= 't0000'"
        return "tenant in (" + ", ".join(f"'t{i:04d}'" for i in range(values)) + ")"
    if kind == "correlated":
        # Whole clusters, taken in a seeded random order until the target share is reached.
        counts = np.bincount(labels)
        order = np.random.default_rng(7).permutation(len(counts))
        chosen, total = [], 0
        for cluster in order:
            if counts[cluster] == 0:
                continue
            if total >= selectivity * len(labels) - 1e-9 and chosen:
                break
            if total + counts[cluster] > 1.5 * selectivity * len(labels) and chosen:
                continue
            chosen.append(cluster)
            total += counts[cluster]
        return "topic in (" + ", ".join(f"'c{c:04d}'" for c in sorted(chosen)) + ")"
    if kind == "range":
        return f"price < {selectivity:.6g}" if selectivity < 1 else "price between 0 and 1"
    return f"tags contains 'p{selectivity:g}'"


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    values = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth) if len(t)]
    return float(np.mean(values)) if values else 1.0


def ladder_for(strategy: str, nlist: int):
    if strategy in ("hnsw", "hnswlib"):
        return [("ef", v) for v in EF_LADDER]
    if strategy == "ivf":
        return [("coverage", v) for v in COVERAGE_LADDER]
    return [("fetch_factor", v) for v in FETCH_FACTORS]


def run_strategy(searcher, queries, allowed, truth, strategy, nlist, exact_seconds, budget, max_run_seconds):
    """Find the smallest knob on the ladder whose recall reaches TARGET, by bisection (recall grows with the knob).

    The result has no time: :func:`best_seconds` times every strategy at its
    knob together. A run slower than ``budget`` times exact search (and than ``max_run_seconds``)
    ends the search upwards: larger knobs are only slower.
    """
    ladder = []
    for name, value in ladder_for(strategy, nlist):
        knobs = {"fetch": fetch_for(min(K, allowed.count), allowed.selectivity, value)} if name == "fetch_factor" else {name: value}
        # The searcher caps the fetch, so larger factors would rerun the same search.
        if knobs.get("fetch", 0) <= MAX_FETCH:
            ladder.append((name, value, knobs))
    if not ladder:
        return {"knob": {}, "recall": 0.0, "seconds": None, "qps": None, "unreached": True, "tried": 0, "why": f"fetch above {MAX_FETCH}"}
    limit = min(budget * exact_seconds, max_run_seconds) if max_run_seconds else budget * exact_seconds
    tried, found = [], None
    low, high = 0, len(ladder) - 1
    while low <= high:
        middle = (low + high) // 2
        name, value, knobs = ladder[middle]
        hits = searcher.search(queries, allowed, K, strategy, **knobs)
        r = recall(hits.rows, truth)
        tried.append({"knob": {name: value}, "recall": round(r, 4), "seconds": hits.seconds, "fallbacks": hits.fallbacks})
        if r >= TARGET:
            found = (middle, hits, r)
            high = middle - 1
        elif hits.seconds > limit:
            break
        else:
            low = middle + 1
    if found is None:
        best = max(tried, key=lambda t: t["recall"])
        return {"knob": best["knob"], "recall": best["recall"], "seconds": None, "qps": None, "unreached": True, "tried": len(tried)}
    position, hits, r = found
    return {"knob": ladder[position][2], "recall": r, "fallbacks": hits.fallbacks, "tried": len(tried)}


def best_seconds(runs: dict, rounds: int = REPEATS) -> dict:
    """Run each timed function twice per round, in turn, and return each one's fastest second run.

    The first run of each pair warms the caches with that strategy's own data,
    so that no strategy pays for the one that ran before it.
    """
    best = {name: math.inf for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            run()
            best[name] = min(best[name], run())
    return best


def serialized_bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (default: 4 x sqrt(documents), rounded to a power of two)")
    parser.add_argument("--hnswlib", action="store_true", help="also run hnswlib with a filter callback (slow: a Python call per visited node)")
    parser.add_argument("--selectivities", default=",".join(f"{s:g}" for s in SELECTIVITIES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--threads", default="1,2", help="thread counts; knobs are searched with the first")
    parser.add_argument("--budget", type=float, default=20.0, help="stop raising a knob once a run is this many times slower than exact")
    parser.add_argument("--max-run-seconds", type=float, default=10.0, help="... or once a run takes this long (0: no limit)")
    parser.add_argument("--calibration-sample", type=int, default=1024,
                        help="also run a planner calibrated on this many other queries from the mixture (0: only the default planner)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    selectivities = [float(s) for s in args.selectivities.split(",")]
    kinds = args.kinds.split(",")
    threads = [int(t) for t in args.threads.split(",")]

    def limit(count: int):
        faiss.omp_set_num_threads(count)
        return threadpool_limits(limits=count)

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    report: dict = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "k": K, "target_recall": TARGET},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": __import__("os").cpu_count()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    with limit(threads[0]):
        started = time.perf_counter()
        vectors, queries, labels, workload = make_data(args.documents, args.dimension, args.queries, args.clusters, args.seed, args.calibration_sample)
        table = make_attributes(labels, args.seed)
        log(f"data: {args.documents} x {args.dimension}, {args.queries} queries ({time.perf_counter() - started:.1f} s)")
        nlist = args.nlist or 2 ** round(math.log2(4 * math.sqrt(args.documents)))
        builds, memory = {"exact": 0.0}, {"exact": vectors.nbytes}

    with limit(max(threads)):
        started = time.perf_counter()
        hnsw = faiss.index_factory(args.dimension, f"HNSW{args.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = args.ef_construction
        hnsw.add(vectors)
        builds["hnsw"] = time.perf_counter() - started
        log(f"HNSW{args.hnsw_m} efConstruction={args.ef_construction}: {builds['hnsw']:.1f} s")
        started = time.perf_counter()
        ivf = faiss.index_factory(args.dimension, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(1).choice(len(vectors), size=min(len(vectors), nlist * 64), replace=False)]
        ivf.train(sample)
        ivf.add(vectors)
        builds["ivf"] = time.perf_counter() - started
        log(f"IVF{nlist}: {builds['ivf']:.1f} s")
        graph = None
        if args.hnswlib and hnswlib_available():
            started = time.perf_counter()
            graph = build_hnswlib(vectors, m=args.hnsw_m // 2, ef_construction=args.ef_construction, threads=max(threads))
            builds["hnswlib"] = time.perf_counter() - started
            memory["hnswlib"] = int(graph.index_file_size())
            log(f"hnswlib: {builds['hnswlib']:.1f} s")
    memory["hnsw"] = serialized_bytes(hnsw)
    memory["ivf"] = serialized_bytes(ivf)
    memory["postfilter"] = memory["hnsw"]
    builds["postfilter"] = builds["hnsw"]

    searcher = FilteredSearcher(vectors, hnsw, ivf_index=ivf, hnswlib_index=graph)
    # Each planner gets its own searcher: calibration sets the searcher's base efSearch.
    planners, calibrations = {}, {}
    samples = {"planner": None, **({"planner_workload": workload} if len(workload) else {})}
    for name, sample in samples.items():
        own = FilteredSearcher(vectors, hnsw, ivf_index=ivf, hnswlib_index=graph)
        with limit(threads[0]):
            started = time.perf_counter()
            model = calibrate(own, workload=sample)
            own.regions  # noqa: B018 - fit the k-means regions the planner reads local selectivity from, inside the timing
            calibrations[name] = {"model": model, "seconds": time.perf_counter() - started}
        log(f"{name} calibration: {calibrations[name]['seconds']:.1f} s on {model['queries']} queries ({model['query_source']})")
        planners[name] = Planner(own, model)
        builds[name] = builds["hnsw"] + builds["ivf"] + calibrations[name]["seconds"] + builds.get("hnswlib", 0.0)
        memory[name] = memory["exact"] + memory["hnsw"] + memory["ivf"] + memory.get("hnswlib", 0)
    report.update({"nlist": nlist, "build_seconds": builds, "memory_bytes": memory, "calibration": {n: c["model"] for n, c in calibrations.items()}})
    # Single strategies run on the shared searcher; post-filtering searches with the default calibration's base efSearch.
    apply_base_knobs(searcher, calibrations["planner"]["model"])
    strategies = [s for s, reason in searcher.availability().items() if reason is None and s != "exact"]

    rows = []
    for selectivity in selectivities:
        for kind in kinds if selectivity < 1 else kinds[:1]:
            text = filter_text(kind, selectivity, labels)
            started = time.perf_counter()
            allowed = AllowedSet(Filter.parse(text).evaluate(table))
            filter_seconds = time.perf_counter() - started
            entry = {"selectivity": selectivity, "kind": kind, "matched": allowed.count,
                     "actual_selectivity": allowed.selectivity, "filter_seconds": filter_seconds, "filter": text[:80], "results": {}}
            results = entry["results"]
            with limit(threads[0]):
                exact = searcher.search(queries, allowed, K, "exact")
                truth = exact.rows
                results["exact"] = {"recall": 1.0, "knob": {}}
                for strategy in strategies:
                    results[strategy] = run_strategy(searcher, queries, allowed, truth, strategy, nlist, exact.seconds, args.budget, args.max_run_seconds)
                for name, planner in planners.items():
                    hits, plan = planner.search(queries, allowed, K)
                    results[name] = {"recall": recall(hits.rows, truth), "chosen": plan.strategy, "knob": describe_knobs(plan.knobs), "fallbacks": hits.fallbacks}
            runs = {name: (lambda planner=planner: planner.search(queries, allowed, K)[0].seconds) for name, planner in planners.items()}
            for strategy, result in results.items():
                if strategy not in planners and not result.get("unreached"):
                    runs[strategy] = lambda strategy=strategy, knob=result["knob"]: searcher.search(queries, allowed, K, strategy, **knob).seconds
            for count in threads:
                suffix = "" if count == threads[0] else f"_{count}t"
                with limit(count):
                    for name, seconds in best_seconds(runs).items():
                        results[name][f"seconds{suffix}"] = seconds
                        results[name][f"qps{suffix}"] = len(queries) / seconds
            best = max((r["qps"] for s, r in entry["results"].items() if s not in planners and r.get("qps")), default=None)
            for name in planners:
                entry[f"{name}_vs_best"] = entry["results"][name]["qps"] / best if best else None
            rows.append(entry)
            summary = ", ".join(
                f"{s}={r['qps']:.0f}" if r.get("qps") else f"{s}=unreached({r.get('recall')})" for s, r in entry["results"].items()
            )
            chosen = "; ".join(
                f"{name} chose {entry['results'][name]['chosen']} recall {entry['results'][name]['recall']:.3f}, {entry[f'{name}_vs_best']:.2f}x best"
                for name in planners
            )
            log(f"{selectivity:g} {kind} ({allowed.count} rows): {summary}; {chosen}")
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps({**report, "rows": rows}, indent=1, default=float) + "\n")
    report["rows"] = rows
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.output:
        args.output.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(markdown(report))
    return 0


PLANNER_TITLES = {"planner": "planner, noisy documents", "planner_workload": "planner, workload sample"}


def markdown(report: dict) -> str:
    """Return the tables for docs/benchmarks.md: QPS per strategy, each planner's choice and ratio, slowdowns."""
    rows = report["rows"]
    planners = [s for s in rows[0]["results"] if s in PLANNER_TITLES]
    strategies = [s for s in rows[0]["results"] if s not in PLANNER_TITLES]
    header = "| selectivity | filter | matched | " + " | ".join(strategies)
    for name in planners:
        header += f" | {PLANNER_TITLES[name]} (chose) | recall | / best"
    lines = [header + " |", "|---|---|---|" + "---|" * (len(strategies) + 3 * len(planners))]
    for entry in rows:
        cells = []
        for strategy in strategies:
            result = entry["results"][strategy]
            cells.append(f"{result['qps']:.0f}" if result.get("qps") else f"— (recall {result['recall']:.2f})")
        for name in planners:
            planner = entry["results"][name]
            cells += [f"{planner['qps']:.0f} ({planner['chosen']})", f"{planner['recall']:.3f}", f"{entry[f'{name}_vs_best']:.2f}"]
        lines.append(f"| {entry['selectivity']:.1%} | {entry['kind']} | {entry['matched']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| strategy | " + " | ".join(f"worst QPS ratio {PLANNER_TITLES[name]} / strategy | where" for name in planners) + " |")
    lines.append("|---|" + "---|---|" * len(planners))
    for strategy in strategies:
        cells = []
        for name in planners:
            worst, where = max(
                ((_ratio(entry, name, strategy), f"{entry['selectivity']:.1%} {entry['kind']}") for entry in rows), key=lambda pair: pair[0]
            )
            cells += ["∞ (never reaches 0.95)" if worst == math.inf else f"{worst:.1f}x", where]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    threads = [key for key in rows[0]["results"]["exact"] if key.startswith("qps_")]
    for key in threads:
        lines.append("")
        lines.append(f"QPS with {key[4:-1]} threads, same knobs:")
        lines.append("")
        lines.append("| selectivity | filter | " + " | ".join(strategies + [PLANNER_TITLES[name] for name in planners]) + " |")
        lines.append("|---|---|" + "---|" * (len(strategies) + len(planners)))
        for entry in rows:
            cells = [f"{entry['results'][s].get(key, 0):.0f}" if entry["results"][s].get(key) else "—" for s in strategies + planners]
            lines.append(f"| {entry['selectivity']:.1%} | {entry['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(entry: dict, planner: str, strategy: str) -> float:
    """Planner QPS over the strategy's at its oracle knob; infinite where the strategy never reaches the target."""
    result = entry["results"][strategy]
    return math.inf if not result.get("qps") else entry["results"][planner]["qps"] / result["qps"]


if __name__ == "__main__":
    sys.exit(main())
