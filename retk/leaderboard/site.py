"""Build the static leaderboard site from results JSON files.

The site is plain HTML, one CSS file and one small script, with relative
links only, so it opens from ``file://`` and needs no server or CDN. Every
string read from a results file goes through Jinja2's autoescaping, and a
Content-Security-Policy allows only the site's own script file, so a model
name such as ``<script>...`` shows as text and never runs.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from retk.evaluation.significance import DEFAULT_ALPHA, DEFAULT_TRIALS, Comparison, paired_test
from retk.retrieval.atomic import atomic_directory

logger = logging.getLogger(__name__)

METRICS = ("nDCG@10", "MRR@10", "Recall@100", "Recall@1000")
TESTED_METRICS = ("nDCG@10", "MRR@10", "Recall@1000")
FAMILIES = {"lexical": "lexical", "dense": "dense", "fusion": "hybrid"}
ASSETS = ("site.css", "site.js")


@dataclass
class RunEntry:
    """One results file as the site shows it."""

    id: str
    source: str
    dataset: str
    retriever: str
    encoder_name: str
    family: str
    split: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    encode_docs_per_second: float | None
    search_queries_per_second: float | None
    index_bytes: int | None
    hardware: str
    created: str
    reproduce: list[str]
    raw: dict[str, Any]
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    is_baseline: bool = False

    def mark(self, metric: str) -> str:
        comparison = self.comparisons.get(metric)
        return comparison.mark if comparison else ""

    def outcome(self, metric: str) -> str:
        comparison = self.comparisons.get(metric)
        return (comparison.outcome or "") if comparison else ""

    def mark_title(self, metric: str) -> str:
        comparison = self.comparisons.get(metric)
        if comparison is None:
            return ""
        verdict = {"win": "significantly better than", "loss": "significantly worse than"}.get(comparison.outcome or "", "not significantly different from")
        return f"{verdict} the baseline ({comparison.method}, p = {comparison.p_value:.4g}, {comparison.queries} queries)"


def load_results(results_dir: str | Path) -> tuple[list[RunEntry], list[str]]:
    """Read every results JSON under ``results_dir``; return the runs and warnings for skipped files."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} not found")
    runs: list[RunEntry] = []
    warnings: list[str] = []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            warnings.append(f"{path.relative_to(root)}: not readable JSON ({error})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or "dataset" not in data:
            continue  # some other JSON file
        try:
            runs.append(_entry(data, path.relative_to(root).as_posix()))
        except (KeyError, TypeError, ValueError) as error:
            warnings.append(f"{path.relative_to(root)}: not a retk results file ({error})")
    runs = _drop_duplicates(runs, warnings)
    _assign_ids(runs)
    return runs, warnings


def _entry(data: dict[str, Any], source: str) -> RunEntry:
    metrics = {name: float(value) for name, value in data["metrics"].items() if isinstance(value, (int, float))}
    timings = data.get("timings") or {}
    encoder_name = str(data.get("encoder_name") or (data.get("encoder") or {}).get("type") or "unknown")
    retriever = str(data.get("retriever_name") or encoder_name)
    if data.get("rerank") and not data.get("retriever_name"):
        retriever += f"+{data['rerank'].get('name', 'rerank')}"
    family = str(data.get("family") or FAMILIES.get(str(data.get("retriever")), str(data.get("retriever") or "unknown")))

    per_query = {
        name: {str(query): float(score) for query, score in scores.items()}
        for name, scores in (data.get("per_query") or {}).items()
        if isinstance(scores, dict)
    }

    reproduce = data.get("reproduce") or {}
    commands = [reproduce["matrix"]] if reproduce.get("matrix") else []
    commands += list(reproduce.get("steps") or [])
    if not commands:
        commands = [_eval_command(data)]

    return RunEntry(
        id="",
        source=source,
        dataset=str(data.get("dataset_name") or data["dataset"]),
        retriever=retriever,
        encoder_name=encoder_name,
        family=family,
        split=str(data.get("split", "")),
        metrics=metrics,
        per_query=per_query,
        encode_docs_per_second=_number(timings.get("encode_documents_per_second")),
        search_queries_per_second=_number(timings.get("search_queries_per_second")),
        index_bytes=_index_bytes(data),
        hardware=_hardware(data.get("hardware") or {}),
        created=str(data.get("created", "")),
        reproduce=[str(command) for command in commands],
        raw=data,
    )


def _index_bytes(data: dict[str, Any]) -> int | None:
    """Return the recorded index size, else the size of the index folder when it still exists."""
    if isinstance(data.get("index_bytes"), (int, float)):
        return int(data["index_bytes"])
    folder = (data.get("index") or {}).get("path")
    if not folder or not Path(folder).is_dir():
        return None
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _eval_command(data: dict[str, Any]) -> str:
    import shlex

    index = (data.get("index") or {}).get("path") or "INDEX"
    settings = data.get("settings") or {}
    parts = ["retk", "eval", "--dataset", str(data.get("dataset_path") or data["dataset"]), "--index", str(index), "--split", str(data.get("split", "test"))]
    if settings.get("depth", 1000) != 1000:
        parts += ["--depth", str(settings["depth"])]
    if settings.get("ignore_identical_ids") is False:
        parts.append("--keep-identical-ids")
    return shlex.join(parts)


def _drop_duplicates(runs: list[RunEntry], warnings: list[str]) -> list[RunEntry]:
    latest: dict[tuple[str, str], RunEntry] = {}
    for run in runs:
        key = (run.dataset, run.retriever)
        if key in latest:
            older, newer = sorted([latest[key], run], key=lambda r: r.created)
            warnings.append(f"{older.source} and {newer.source} both hold {run.retriever} on {run.dataset}; showing the newer, {newer.source}")
            latest[key] = newer
        else:
            latest[key] = run
    return list(latest.values())


def _assign_ids(runs: list[RunEntry]) -> None:
    used: Counter = Counter()
    for run in sorted(runs, key=lambda r: (r.dataset, r.retriever, r.source)):
        base = _slug(f"{run.dataset}--{run.retriever}")
        used[base] += 1
        run.id = base if used[base] == 1 else f"{base}-{used[base]}"


def choose_baseline(runs: list[RunEntry], requested: str | None) -> str | None:
    """Choose the baseline retriever: ``requested``, else the results' matrix baseline, else bm25 when present."""
    names = {run.retriever for run in runs}
    if requested is not None:
        if requested not in names:
            raise ValueError(f"baseline '{requested}' is not among the results' retrievers: {', '.join(sorted(names))}")
        return requested
    named = Counter(str(run.raw.get("matrix", {}).get("baseline")) for run in runs if run.raw.get("matrix", {}).get("baseline"))
    for name, _ in named.most_common():
        if name in names:
            return name
    return "bm25" if "bm25" in names else None


def compare_to_baseline(runs: list[RunEntry], baseline: str | None, *, method: str, alpha: float, trials: int) -> None:
    """Fill each run's ``comparisons`` against the baseline run of its dataset."""
    by_dataset: dict[str, list[RunEntry]] = defaultdict(list)
    for run in runs:
        by_dataset[run.dataset].append(run)
    for dataset_runs in by_dataset.values():
        base = next((run for run in dataset_runs if run.retriever == baseline), None)
        if base is None:
            continue
        base.is_baseline = True
        for run in dataset_runs:
            if run is base:
                continue
            for metric in TESTED_METRICS:
                if metric in base.per_query and metric in run.per_query:
                    try:
                        run.comparisons[metric] = paired_test(
                            base.per_query[metric], run.per_query[metric], metric=metric, method=method, alpha=alpha, trials=trials
                        )
                    except ValueError as error:
                        logger.warning("%s vs %s on %s: %s", run.retriever, base.retriever, run.dataset, error)


def build_site(
    results_dir: str | Path,
    out: str | Path,
    *,
    baseline: str | None = None,
    method: str = "randomization",
    alpha: float = DEFAULT_ALPHA,
    trials: int = DEFAULT_TRIALS,
    title: str = "retk leaderboard",
) -> Path:
    """Write the leaderboard for the results under ``results_dir`` into ``out``; return ``out/index.html``.

    ``out`` is replaced as a whole once the new site is complete.
    """
    runs, warnings = load_results(results_dir)
    if not runs:
        raise ValueError(f"no retk results JSON files found under {results_dir}")
    baseline = choose_baseline(runs, baseline)
    compare_to_baseline(runs, baseline, method=method, alpha=alpha, trials=trials)
    datasets = sorted({run.dataset for run in runs})
    families = sorted({run.family for run in runs})
    sections = [_dataset_section(dataset, [run for run in runs if run.dataset == dataset]) for dataset in datasets]
    overall = _overall(runs, datasets)
    environment = _environment()
    context = {
        "title": title,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "baseline": baseline,
        "method": method,
        "alpha": alpha,
        "trials": trials,
        "datasets": datasets,
        "families": families,
        "sections": sections,
        "overall": overall,
        "warnings": warnings,
        "metrics": METRICS,
        "run_count": len(runs),
    }
    out = Path(out)
    with atomic_directory(out, overwrite=True) as folder:
        (folder / "assets").mkdir()
        (folder / "runs").mkdir()
        for name in ASSETS:
            (folder / "assets" / name).write_bytes(_template_bytes(f"assets/{name}"))
        (folder / "index.html").write_text(environment.get_template("index.html").render(**context, root="."), encoding="utf-8")
        for run in runs:
            page = environment.get_template("run.html").render(
                title=title, run=run, metrics=METRICS, baseline=baseline, provenance=_provenance_rows(run.raw), root=".."
            )
            (folder / "runs" / f"{run.id}.html").write_text(page, encoding="utf-8")
            (folder / "runs" / f"{run.id}.json").write_text(json.dumps(run.raw, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return out / "index.html"


# --------------------------------------------------------------------------- page data


def _dataset_section(dataset: str, runs: list[RunEntry]) -> dict[str, Any]:
    primary = "MRR@10" if dataset.lower().startswith("multicpr") else "nDCG@10"
    ordered = sorted(runs, key=lambda run: (-run.metrics.get(primary, -1.0), run.retriever))
    return {
        "name": dataset,
        "anchor": _slug(f"dataset-{dataset}"),
        "primary": primary,
        "runs": ordered,
        "split": ", ".join(sorted({run.split for run in runs})),
        "chart": _chart(ordered, primary),
    }


def _overall(runs: list[RunEntry], datasets: list[str]) -> list[dict[str, Any]]:
    by_retriever: dict[str, list[RunEntry]] = defaultdict(list)
    for run in runs:
        by_retriever[run.retriever].append(run)
    rows = []
    for retriever, entries in by_retriever.items():
        row: dict[str, Any] = {
            "retriever": retriever,
            "family": entries[0].family,
            "datasets": len(entries),
            "complete": len(entries) == len(datasets),
            "dataset_names": " ".join(sorted(run.dataset for run in entries)),
        }
        for metric in METRICS:
            values = [run.metrics[metric] for run in entries if metric in run.metrics]
            row[metric] = sum(values) / len(values) if values else None
        for key in ("encode_docs_per_second", "search_queries_per_second"):
            values = [getattr(run, key) for run in entries if getattr(run, key)]
            row[key] = sum(values) / len(values) if values else None
        sizes = [run.index_bytes for run in entries if run.index_bytes is not None]
        row["index_bytes"] = sum(sizes) if sizes else None
        rows.append(row)
    rows.sort(key=lambda row: (not row["complete"], -(row["nDCG@10"] or -1.0), row["retriever"]))
    return rows


CHART_WIDTH, CHART_HEIGHT = 560, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 150, 16, 44


def _chart(runs: list[RunEntry], metric: str) -> dict[str, Any] | None:
    """Effectiveness against search speed: an SVG scatter laid out here, drawn by the template."""
    points = [(run, run.search_queries_per_second, run.metrics.get(metric)) for run in runs]
    points = [(run, x, y) for run, x, y in points if x and x > 0 and y is not None]
    if not points:
        return None
    xs = [math.log10(x) for _, x, _ in points]
    low, high = math.floor(min(xs)), math.ceil(max(xs))
    if high == low:
        high = low + 1
    y_values = [y for _, _, y in points]
    y_low = max(0.0, math.floor(min(y_values) * 10 - 0.5) / 10)
    y_high = min(1.0, math.ceil(max(y_values) * 10 + 0.5) / 10)
    if y_high <= y_low:
        y_high = y_low + 0.1
    plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(value: float) -> float:
        return round(MARGIN_LEFT + (math.log10(value) - low) / (high - low) * plot_w, 1)

    def py(value: float) -> float:
        return round(MARGIN_TOP + (1 - (value - y_low) / (y_high - y_low)) * plot_h, 1)

    x_ticks = [{"x": px(10**power), "label": _tick_label(10**power)} for power in range(low, high + 1)]
    steps = round((y_high - y_low) / 0.1)
    step = 0.1 if steps <= 6 else 0.2
    y_ticks = []
    value = y_low
    while value <= y_high + 1e-9:
        y_ticks.append({"y": py(value), "label": f"{value:.1f}"})
        value = round(value + step, 10)
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": MARGIN_LEFT,
        "right": CHART_WIDTH - MARGIN_RIGHT,
        "top": MARGIN_TOP,
        "bottom": CHART_HEIGHT - MARGIN_BOTTOM,
        "metric": metric,
        "x_ticks": x_ticks,
        "y_ticks": y_ticks,
        "points": [
            {"x": px(x), "y": py(y), "label": run.retriever, "family": run.family, "title": f"{run.retriever}: {metric} {y:.4f}, {x:,.1f} queries/s"}
            for run, x, y in points
        ],
    }


def _tick_label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _provenance_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        elif isinstance(value, list) and value and all(isinstance(item, (dict, list)) for item in value):
            for position, item in enumerate(value):
                walk(f"{prefix}[{position}]", item)
        else:
            rows.append((prefix, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))

    walk("", {key: value for key, value in data.items() if key not in ("per_query", "metrics", "reproduce")})
    return rows


def _hardware(hardware: dict[str, Any]) -> str:
    parts = []
    if hardware.get("cpu"):
        cpu = re.sub(r"\s+", " ", str(hardware["cpu"]).replace("(R)", "").replace("(TM)", "")).strip()
        parts.append(f"{cpu}, {hardware.get('cpu_count', '?')} cores")
    gpus = hardware.get("gpus") or []
    if gpus:
        parts.append(", ".join(str(gpu) for gpu in gpus))
    return "; ".join(parts) or "unknown"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


# --------------------------------------------------------------------------- templates


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("retk.leaderboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["metric"] = lambda value: "—" if value is None else f"{value:.4f}"
    environment.filters["rate"] = _format_rate
    environment.filters["size"] = _format_size
    environment.filters["sortvalue"] = lambda value: "" if value is None else repr(float(value))
    return environment


def _format_rate(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _format_size(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1024**2:
        return f"{value / 1024:.1f} KiB"
    if value < 1024**3:
        return f"{value / 1024**2:.1f} MiB"
    return f"{value / 1024**3:.2f} GiB"


def _template_bytes(name: str) -> bytes:
    return resources.files("retk.leaderboard").joinpath("templates", *name.split("/")).read_bytes()


__all__ = ["RunEntry", "build_site", "choose_baseline", "compare_to_baseline", "load_results"]

