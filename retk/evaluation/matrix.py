"""Config-driven evaluation of every retriever on every dataset, cached and resumable.

A matrix config (YAML) lists datasets and retrievers::

    name: scifact-bench
    results: results/scifact-bench     # one results JSON per (dataset, retriever)
    site: site/scifact-bench           # optional: build the leaderboard afterwards
    baseline: bm25                     # significance marks on the site compare against it
    datasets:
      - scifact                        # a name under $RETK_DATA_DIR, or a mapping:
      # - {name: ecom, path: ${RETK_DATA_DIR}/multicpr/ecom, split: dev}
    retrievers:
      - {name: bm25, encoder: bm25}
      - {name: minilm, encoder: minilm}
      - {name: bm25+minilm, fusion: [bm25, minilm], k: 60}

``retk eval --config FILE`` (or :func:`run_matrix`) then

* builds each (encoder, corpus) index once, in a cache folder keyed by the
  encoder's settings, the index spec and the corpus's SHA-256
  (``cache:`` in the config, else ``retk.config.cache_dir()/matrix``), so a
  second retriever, a fusion or a second run reuses it without re-encoding;
* skips a cell whose results JSON exists and was made with the same settings
  (its ``matrix.cell_key``), so an interrupted run resumes where it stopped:
  index folders and results files are written atomically, never half;
* writes ``RESULTS/<dataset>/<retriever>.json``: the evaluation's results JSON
  with per-query scores for every metric, the index size, the retriever's
  family and the commands that reproduce the cell.

Relative ``results``, ``site`` and ``cache`` paths are relative to the current
folder; dataset paths may use ``${VARIABLE}``s, and a bare name is looked up
under ``$RETK_DATA_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retk.config import DATA_DIR_VARIABLE, cache_dir, data_dir
from retk.datasets import BeirDataset, open_dataset
from retk.embeddings import registry
from retk.embeddings.registry import ENCODER_ALIASES
from retk.errors import IndexFormatError, RetkError
from retk.evaluation.evaluate import EvaluationResult, evaluate
from retk.retrieval import Index, build_index, fuse
from retk.retrieval.fusion import FUSION_DEPTH, RRF_K, FusionIndex

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = "retk-results/1"
CACHE_SCHEMA = 1
DEFAULT_SPLIT = "test"
FAMILIES = {"lexical": "lexical", "dense": "dense", "fusion": "hybrid"}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the matrix: a label, its folder and the qrels split evaluated."""

    name: str
    path: Path
    split: str = DEFAULT_SPLIT
    on_unknown_qrels: str = "error"


@dataclass(frozen=True)
class RetrieverSpec:
    """One retriever: an encoder (a name, a model folder or a settings mapping) or a fusion of others."""

    name: str
    encoder: dict[str, Any] | None = None
    encoder_argument: str | None = None
    index_spec: str = "auto"
    fusion: tuple[str, ...] = ()
    k: float = RRF_K
    weights: tuple[float, ...] | None = None
    fusion_depth: int = FUSION_DEPTH

    @property
    def is_fusion(self) -> bool:
        return bool(self.fusion)

    def settings(self) -> dict[str, Any]:
        """Return the settings that decide this retriever's results; cache and cell keys hash them."""
        if self.is_fusion:
            return {"fusion": list(self.fusion), "k": self.k, "weights": list(self.weights) if self.weights else None, "depth": self.fusion_depth}
        return {"encoder": self.encoder, "index_spec": self.index_spec}


@dataclass
class MatrixConfig:
    """A parsed matrix config; see the module docs for the YAML it comes from."""

    name: str
    datasets: list[DatasetSpec]
    retrievers: list[RetrieverSpec]
    results_dir: Path
    cache_dir: Path | None = None
    site_dir: Path | None = None
    baseline: str | None = None
    depth: int = 1000
    ignore_identical_ids: bool = True
    significance: dict[str, Any] = field(default_factory=dict)
    save_runs: bool = False
    source: Path | None = None
    source_sha256: str | None = None

    def index_cache(self) -> Path:
        folder = self.cache_dir if self.cache_dir is not None else cache_dir() / "matrix"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def retriever(self, name: str) -> RetrieverSpec:
        for spec in self.retrievers:
            if spec.name == name:
                return spec
        raise RetkError(f"unknown retriever '{name}' in {self.source or 'config'}")


def load_config(path: str | Path, *, results_dir: str | Path | None = None) -> MatrixConfig:
    """Read and check a matrix config file; ``results_dir`` overrides its ``results``."""
    path = Path(path)
    if not path.is_file():
        raise RetkError(f"config file {path} not found")
    raw_bytes = path.read_bytes()
    try:
        raw = yaml.safe_load(raw_bytes.decode("utf-8"))
    except yaml.YAMLError as error:
        raise RetkError(f"{path}: malformed YAML ({error})") from None
    config = parse_config(raw, source=path)
    config.source_sha256 = hashlib.sha256(raw_bytes).hexdigest()
    if results_dir is not None:
        config.results_dir = Path(results_dir)
    return config


def parse_config(raw: Any, *, source: Path | None = None) -> MatrixConfig:
    """Turn a config mapping (as loaded from YAML) into a :class:`MatrixConfig`."""
    where = str(source or "config")
    if not isinstance(raw, dict):
        raise RetkError(f"{where}: expected a mapping at the top level")
    unknown = set(raw) - {"name", "datasets", "retrievers", "results", "cache", "site", "baseline", "depth", "ignore_identical_ids", "significance", "save_runs"}
    if unknown:
        raise RetkError(f"{where}: unknown keys {', '.join(sorted(unknown))}")

    for key in ("datasets", "retrievers"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise RetkError(f"{where}: '{key}' must be a non-empty list")

    datasets = [_parse_dataset(entry, where) for entry in raw["datasets"]]
    retrievers = [_parse_retriever(entry, where) for entry in raw["retrievers"]]
    for kind, names in (("dataset", [d.name for d in datasets]), ("retriever", [r.name for r in retrievers])):
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RetkError(f"{where}: {kind} names must be unique; repeated: {', '.join(repeated)}")

    known = {spec.name: spec for spec in retrievers}
    for spec in retrievers:
        for component in spec.fusion:
            if component not in known:
                raise RetkError(f"{where}: retriever '{spec.name}' fuses unknown retriever '{component}'")
            if known[component].is_fusion:
                raise RetkError(f"{where}: retriever '{spec.name}' fuses '{component}', itself a fusion; fuse base retrievers")

    name = str(raw.get("name") or (source.stem if source else "matrix"))
    baseline = raw.get("baseline")
    significance = dict(raw.get("significance") or {})
    unknown_tests = set(significance) - {"method", "trials", "alpha"}
    if unknown_tests:
        raise RetkError(f"{where}: unknown significance keys {', '.join(sorted(unknown_tests))}; expected method, trials, alpha")
    if baseline is not None and baseline not in known:
        raise RetkError(f"{where}: baseline '{baseline}' is not one of the retrievers")
    return MatrixConfig(
        name=name,
        datasets=datasets,
        retrievers=retrievers,
        results_dir=Path(os.path.expandvars(str(raw.get("results") or f"results/{_slug(name)}"))),
        cache_dir=Path(os.path.expandvars(str(raw["cache"]))) if raw.get("cache") else None,
        site_dir=Path(os.path.expandvars(str(raw["site"]))) if raw.get("site") else None,
        baseline=baseline,
        depth=int(raw.get("depth", 1000)),
        ignore_identical_ids=bool(raw.get("ignore_identical_ids", True)),
        significance=significance,
        save_runs=bool(raw.get("save_runs", False)),
        source=source,
    )


def _parse_dataset(entry: Any, where: str) -> DatasetSpec:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or ("path" not in entry and "name" not in entry):
        raise RetkError(f"{where}: a dataset is a name, a path, or a mapping with 'path' (and optional name, split)")
    raw_path = str(entry.get("path") or entry["name"])
    path = _dataset_path(raw_path, where)
    name = str(entry.get("name") or open_dataset(path).name)
    split = str(entry.get("split") or _default_split(path))
    on_unknown = str(entry.get("on_unknown_qrels", "error"))
    return DatasetSpec(name=name, path=path, split=split, on_unknown_qrels=on_unknown)


def _dataset_path(raw: str, where: str) -> Path:
    missing = [name for name in re.findall(r"\$\{?(\w+)\}?", raw) if name not in os.environ]
    if missing:
        raise RetkError(f"{where}: dataset path '{raw}' uses unset environment variables: {', '.join(missing)}")
    path = Path(os.path.expanduser(os.path.expandvars(raw)))
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        root = data_dir()
        if root is None:
            raise RetkError(f"{where}: dataset '{raw}' is not a folder here and {DATA_DIR_VARIABLE} is not set")
        path = root / raw
    if not path.is_dir():
        raise RetkError(f"{where}: dataset folder {path} not found")
    return path


def _default_split(path: Path) -> str:
    dataset = open_dataset(path)
    for split in ("test", "dev"):
        try:
            dataset.qrels_path(split)
            return split
        except RetkError:
            continue
    return DEFAULT_SPLIT


def _parse_retriever(entry: Any, where: str) -> RetrieverSpec:
    if isinstance(entry, str):
        entry = {"name": entry, "encoder": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise RetkError(f"{where}: each retriever needs a 'name'")
    name = str(entry["name"])
    if not re.fullmatch(r"[\w.+\-]+", name):
        raise RetkError(f"{where}: retriever name '{name}' may contain only letters, digits, '.', '+', '-' and '_'")
    if "fusion" in entry:
        components = entry["fusion"]
        if isinstance(components, dict):
            options = components
            components = options.get("of")
        else:
            options = entry
        if not isinstance(components, list) or len(components) < 2:
            raise RetkError(f"{where}: retriever '{name}': 'fusion' lists at least two retriever names")
        weights = options.get("weights")
        if weights is not None and len(weights) != len(components):
            raise RetkError(f"{where}: retriever '{name}': {len(components)} fused retrievers but {len(weights)} weights")
        return RetrieverSpec(
            name=name,
            fusion=tuple(str(c) for c in components),
            k=float(options.get("k", RRF_K)),
            weights=tuple(float(w) for w in weights) if weights is not None else None,
            fusion_depth=int(options.get("depth", FUSION_DEPTH)),
        )
    if "encoder" not in entry:
        raise RetkError(f"{where}: retriever '{name}' needs an 'encoder' or a 'fusion'")
    encoder, argument = normalize_encoder(entry["encoder"], where)
    return RetrieverSpec(name=name, encoder=encoder, encoder_argument=argument, index_spec=str(entry.get("index_spec", "auto")))


def normalize_encoder(spec: Any, where: str = "config") -> tuple[dict[str, Any], str | None]:
    """Return the encoder settings a spec names, and the ``retk index --encoder`` argument if there is one.

    A spec is an alias (``bm25``, ``minilm``, ``bm25-zh``, ``multilingual-e5-small``...),
    a local model folder, or a mapping: ``{type: ..., ...}`` settings, or
    ``{name: ALIAS, ...}`` an alias with some settings changed.
    """
    if isinstance(spec, str):
        if spec in ENCODER_ALIASES:
            return dict(ENCODER_ALIASES[spec]), spec
        folder = Path(os.path.expanduser(os.path.expandvars(spec)))
        if folder.exists():
            resolved = str(folder.resolve())
            # Same order as load_encoder: registered path detectors first, then sentence-transformers folders.
            for detect in getattr(registry, "PATH_DETECTORS", []):
                detected = detect(folder.resolve())
                if detected is not None:
                    return dict(detected), resolved
            if folder.is_dir():
                return {"type": "sentence-transformers", "model": resolved}, resolved
        raise RetkError(f"{where}: unknown encoder '{spec}': expected one of {', '.join(ENCODER_ALIASES)}, a model folder or a mapping")
    if isinstance(spec, dict):
        spec = dict(spec)
        alias = spec.pop("name", None)
        if alias is not None:
            if alias not in ENCODER_ALIASES:
                raise RetkError(f"{where}: unknown encoder '{alias}'")
            return {**ENCODER_ALIASES[alias], **spec}, alias if not spec else None
        if "type" not in spec:
            raise RetkError(f"{where}: an encoder mapping needs 'type' or 'name'")
        return spec, None
    raise RetkError(f"{where}: an encoder is a name or a mapping, got {type(spec).__name__}")


# --------------------------------------------------------------------------- progress


class MatrixObserver:
    """Callbacks a matrix run reports to; the default does nothing."""

    def start(self, cells: Sequence["Cell"]) -> None: ...

    def cell_started(self, cell: "Cell") -> None: ...

    def cell_stage(self, cell: "Cell", stage: str) -> None: ...

    def build_progress(self, done: int, total: int) -> None: ...

    def cell_finished(self, cell: "Cell", outcome: "CellOutcome") -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Cell:
    """One (dataset, retriever) pair and where its results go."""

    dataset: DatasetSpec
    retriever: RetrieverSpec
    results_path: Path

    @property
    def label(self) -> str:
        return f"{self.dataset.name} / {self.retriever.name}"


@dataclass
class CellOutcome:
    """What happened to a cell: ``computed`` or ``skipped``, with its results JSON."""

    cell: Cell
    status: str
    seconds: float
    results: dict[str, Any]


# --------------------------------------------------------------------------- running


class MatrixRunner:
    """Run a :class:`MatrixConfig`; see :func:`run_matrix`."""

    def __init__(self, config: MatrixConfig, observer: MatrixObserver | None = None, *, force: bool = False) -> None:
        self.config = config
        self.observer = observer or MatrixObserver()
        self.force = force
        self._checksums: dict[Path, str] = {}
        self._checksum_file = config.index_cache() / "corpus-checksums.json"

    def cells(self) -> list[Cell]:
        results = self.config.results_dir
        return [
            Cell(dataset, retriever, results / _slug(dataset.name) / f"{_slug(retriever.name)}.json")
            for dataset in self.config.datasets
            for retriever in self.config.retrievers
        ]

    def run(self) -> list[CellOutcome]:
        cells = self.cells()
        self.observer.start(cells)
        outcomes = []
        try:
            for cell in cells:
                outcomes.append(self._run_cell(cell))
        finally:
            self.observer.finish()
        return outcomes

    # A cell is done when its results JSON exists and was made with today's settings.
    def cell_key(self, cell: Cell) -> str:
        dataset = open_dataset(cell.dataset.path)
        retriever = cell.retriever
        settings = {
            "schema": RESULTS_SCHEMA,
            "dataset": cell.dataset.name,
            "split": cell.dataset.split,
            "corpus_sha256": self.corpus_checksum(dataset),
            "qrels_sha256": _file_sha256(dataset.qrels_path(cell.dataset.split)),
            "depth": self.config.depth,
            "ignore_identical_ids": self.config.ignore_identical_ids,
            "on_unknown_qrels": cell.dataset.on_unknown_qrels,
            "retriever": retriever.settings(),
            "components": [self.config.retriever(name).settings() for name in retriever.fusion],
        }
        return _digest(settings)

    def _run_cell(self, cell: Cell) -> CellOutcome:
        key = self.cell_key(cell)
        existing = _read_results(cell.results_path)
        if existing is not None and not self.force and existing.get("matrix", {}).get("cell_key") == key:
            outcome = CellOutcome(cell, "skipped", 0.0, existing)
            self.observer.cell_finished(cell, outcome)
            return outcome
        if existing is not None:
            logger.info("%s: settings changed since %s was written; recomputing", cell.label, cell.results_path)
        self.observer.cell_started(cell)
        started = time.perf_counter()
        dataset = open_dataset(cell.dataset.path)
        index, built, steps = self._index_for(cell, dataset)
        self.observer.cell_stage(cell, "searching and scoring")
        run_path = cell.results_path.with_suffix(".trec") if self.config.save_runs else None
        result = evaluate(
            index,
            dataset,
            split=cell.dataset.split,
            depth=self.config.depth,
            ignore_identical_ids=self.config.ignore_identical_ids,
            on_unknown_qrels=cell.dataset.on_unknown_qrels,
            run_path=run_path,
        )
        steps.append(self._eval_command(cell, index))
        results = self._results_json(cell, key, result, index, built, steps)
        _write_json_atomic(cell.results_path, results)
        outcome = CellOutcome(cell, "computed", time.perf_counter() - started, results)
        self.observer.cell_finished(cell, outcome)
        return outcome

    # ------------------------------------------------------------------ indexes

    def _index_for(self, cell: Cell, dataset: BeirDataset) -> tuple[Index, list[str], list[str]]:
        """Return the cell's index, the cache folders built for it now, and the commands that build it."""
        retriever = cell.retriever
        if not retriever.is_fusion:
            index, built = self._cached_index(cell, retriever, dataset)
            return index, ([str(index.path)] if built else []), [self._index_command(dataset, retriever, index.path)]
        components, built, steps = [], [], []
        for name in retriever.fusion:
            spec = self.config.retriever(name)
            index, was_built = self._cached_index(cell, spec, dataset)
            components.append(index)
            built += [str(index.path)] if was_built else []
            steps.append(self._index_command(dataset, spec, index.path))
        key = _digest({"schema": CACHE_SCHEMA, "fusion": retriever.settings(), "components": [str(c.path.name) for c in components]})
        folder = self.config.index_cache() / "fusions" / f"{_slug(retriever.name)}-{key[:16]}"
        fused = self._open_cached(folder)
        if fused is None:
            self.observer.cell_stage(cell, "fusing")
            fused = fuse(
                components,
                folder,
                k=retriever.k,
                weights=list(retriever.weights) if retriever.weights else None,
                depth=retriever.fusion_depth,
                overwrite=folder.exists(),
            )
        steps.append(self._fuse_command(retriever, components, folder))
        return fused, built, steps

    def index_folder(self, retriever: RetrieverSpec, dataset: BeirDataset) -> Path:
        """The cache folder of ``retriever``'s index of ``dataset``'s corpus."""
        key = _digest(
            {"schema": CACHE_SCHEMA, "encoder": retriever.encoder, "index_spec": retriever.index_spec, "corpus_sha256": self.corpus_checksum(dataset)}
        )
        label = _slug(str(retriever.encoder.get("model") or retriever.encoder.get("type")).rsplit("/", 1)[-1].removeprefix("bundled:"))
        return self.config.index_cache() / "indexes" / f"{_slug(dataset.name)}-{label}-{key[:16]}"

    def _cached_index(self, cell: Cell, retriever: RetrieverSpec, dataset: BeirDataset) -> tuple[Index, bool]:
        folder = self.index_folder(retriever, dataset)
        index = self._open_cached(folder)
        if index is not None:
            return index, False
        from retk.embeddings import encoder_from_config

        self.observer.cell_stage(cell, f"encoding {dataset.name} with {retriever.name}")
        encoder = encoder_from_config(retriever.encoder)
        index = build_index(
            dataset.corpus(),
            folder,
            encoder,
            index_spec=retriever.index_spec,
            overwrite=folder.exists(),
            progress=self.observer.build_progress,
        )
        return index, True

    @staticmethod
    def _open_cached(folder: Path) -> Index | None:
        if not folder.exists():
            return None
        try:
            return Index.open(folder)
        except (IndexFormatError, OSError) as error:
            logger.warning("rebuilding unusable cached index %s: %s", folder, error)
            return None

    def corpus_checksum(self, dataset: BeirDataset) -> str:
        """SHA-256 of the dataset's corpus file, remembered by path, size and modification time."""
        path = dataset.corpus_path.resolve()
        if path in self._checksums:
            return self._checksums[path]
        if not path.is_file():
            raise RetkError(f"{dataset.root}: corpus file {path} not found; the matrix needs each dataset's corpus")
        stat = path.stat()
        stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        known = _read_json(self._checksum_file) or {}
        checksum = known.get(stamp)
        if checksum is None:
            checksum = _file_sha256(path)
            known[stamp] = checksum
            _write_json_atomic(self._checksum_file, known)
        self._checksums[path] = checksum
        return checksum

    # ------------------------------------------------------------------ provenance

    def _results_json(
        self, cell: Cell, key: str, result: EvaluationResult, index: Index, built: list[str], steps: list[str]
    ) -> dict[str, Any]:
        results = result.to_json()
        results["per_query"] = result.per_query
        family = FAMILIES.get(index.manifest["retriever"], index.manifest["retriever"])
        sizes = index.components if isinstance(index, FusionIndex) else [index]
        results.update(
            {
                "schema": RESULTS_SCHEMA,
                "retriever_name": cell.retriever.name,
                "dataset_name": cell.dataset.name,
                "family": family,
                "index_bytes": sum(_folder_bytes(component.path) for component in sizes),
                "reproduce": {"matrix": self.matrix_command(), "steps": steps},
                "matrix": {
                    "name": self.config.name,
                    "config": str(self.config.source) if self.config.source else None,
                    "config_sha256": self.config.source_sha256,
                    "baseline": self.config.baseline,
                    "cell_key": key,
                    "built_indexes": built,
                },
            }
        )
        return results

    def matrix_command(self) -> str:
        source = self.config.source or Path("CONFIG.yaml")
        return f"retk eval --config {shlex.quote(str(source))}"

    def _index_command(self, dataset: BeirDataset, retriever: RetrieverSpec, folder: Path) -> str:
        if retriever.encoder_argument is None:
            return f"# index of {retriever.name}: encoder settings {json.dumps(retriever.encoder, sort_keys=True)} (see the config)"
        parts = ["retk", "index", str(dataset.root), "--out", str(folder), "--encoder", retriever.encoder_argument]
        if retriever.index_spec != "auto":
            parts += ["--index-spec", retriever.index_spec]
        return shlex.join(parts)

    @staticmethod
    def _fuse_command(retriever: RetrieverSpec, components: list[Index], folder: Path) -> str:
        parts = ["retk", "fuse", *[str(c.path) for c in components], "--out", str(folder), "--rrf-k", f"{retriever.k:g}"]
        if retriever.weights:
            parts += ["--weights", ",".join(f"{w:g}" for w in retriever.weights)]
        if retriever.fusion_depth != FUSION_DEPTH:
            parts += ["--depth", str(retriever.fusion_depth)]
        return shlex.join(parts)

    def _eval_command(self, cell: Cell, index: Index) -> str:
        parts = ["retk", "eval", "--dataset", str(cell.dataset.path), "--index", str(index.path), "--split", cell.dataset.split]
        if self.config.depth != 1000:
            parts += ["--depth", str(self.config.depth)]
        if not self.config.ignore_identical_ids:
            parts.append("--keep-identical-ids")
        if cell.dataset.on_unknown_qrels == "skip":
            parts.append("--skip-unknown-qrels")
        parts += ["--output", str(cell.results_path)]
        return shlex.join(parts)


def run_matrix(
    config: MatrixConfig | str | Path,
    *,
    observer: MatrixObserver | None = None,
    force: bool = False,
) -> list[CellOutcome]:
    """Run every retriever on every dataset of ``config``; return one outcome per cell.

    Finished cells are skipped (``force=True`` recomputes them; cached
    indexes are still reused).
    """
    if not isinstance(config, MatrixConfig):
        config = load_config(config)
    return MatrixRunner(config, observer, force=force).run()


# --------------------------------------------------------------------------- CLI rendering


class RichMatrixProgress(MatrixObserver):
    """A rich progress display: the running cell, its stage, documents encoded, and the ETA.

    The ETA is the mean time of the cells computed so far times the cells
    still to compute; skipped cells cost nothing and do not count.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=True,
        )
        self.console = console
        self.cells_task: Any = None
        self.build_task: Any = None
        self.total = 0
        self.remaining = 0
        self.computed_seconds: list[float] = []

    def start(self, cells: Sequence[Cell]) -> None:
        self.total = self.remaining = len(cells)
        self.progress.start()
        self.cells_task = self.progress.add_task("cells", total=len(cells), eta="ETA --")

    def cell_started(self, cell: Cell) -> None:
        self.progress.update(self.cells_task, description=f"{cell.label}")

    def cell_stage(self, cell: Cell, stage: str) -> None:
        self.progress.update(self.cells_task, description=f"{cell.label}: {stage}")
        if self.build_task is not None:
            self.progress.remove_task(self.build_task)
            self.build_task = None
        if stage.startswith("encoding"):
            self.build_task = self.progress.add_task("  documents", total=None, eta="")

    def build_progress(self, done: int, total: int) -> None:
        if self.build_task is not None:
            self.progress.update(self.build_task, completed=done, total=total)

    def cell_finished(self, cell: Cell, outcome: CellOutcome) -> None:
        if self.build_task is not None:
            self.progress.remove_task(self.build_task)
            self.build_task = None
        self.remaining -= 1
        if outcome.status == "computed":
            self.computed_seconds.append(outcome.seconds)
            metrics = outcome.results["metrics"]
            self.console.print(
                f"{cell.label}: nDCG@10 {metrics['nDCG@10']:.4f}  MRR@10 {metrics['MRR@10']:.4f}  "
                f"R@1000 {metrics['Recall@1000']:.4f}  ({outcome.seconds:.1f} s)"
            )
        else:
            self.console.print(f"{cell.label}: done before, skipped ({cell.results_path})")
        self.progress.update(self.cells_task, advance=1, eta=self._eta())

    def _eta(self) -> str:
        if not self.remaining:
            return ""
        if not self.computed_seconds:
            return "ETA --"
        seconds = sum(self.computed_seconds) / len(self.computed_seconds) * self.remaining
        minutes, seconds = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"ETA {hours}:{minutes:02d}:{seconds:02d}"

    def finish(self) -> None:
        self.progress.stop()


def run_from_cli(config_path: Path, *, results_dir: Path | None, console: Any, site: bool = True) -> list[CellOutcome]:
    """Run a matrix with a rich progress display, print the table and build the site if configured."""
    from rich.table import Table

    config = load_config(config_path, results_dir=results_dir)
    outcomes = run_matrix(config, observer=RichMatrixProgress(console))
    table = Table("dataset", "retriever", "nDCG@10", "MRR@10", "Recall@100", "Recall@1000", "status", title=f"{config.name}: {config.results_dir}")
    for outcome in outcomes:
        metrics = outcome.results["metrics"]
        table.add_row(
            outcome.cell.dataset.name,
            outcome.cell.retriever.name,
            *(f"{metrics[name]:.4f}" for name in ("nDCG@10", "MRR@10", "Recall@100", "Recall@1000")),
            outcome.status,
        )
    console.print(table)
    if site and config.site_dir is not None:
        from retk.leaderboard import build_site

        significance = config.significance
        index_page = build_site(
            config.results_dir,
            config.site_dir,
            baseline=config.baseline,
            method=significance.get("method", "randomization"),
            alpha=float(significance.get("alpha", 0.05)),
            trials=int(significance.get("trials", 10_000)),
            title=config.name,
        )
        console.print(f"leaderboard: {index_page}")
    return outcomes


# --------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-") or "x"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_results(path: Path) -> dict[str, Any] | None:
    value = _read_json(path)
    return value if isinstance(value, dict) and "metrics" in value else None


def _write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


__all__ = [
    "Cell",
    "CellOutcome",
    "DatasetSpec",
    "MatrixConfig",
    "MatrixObserver",
    "MatrixRunner",
    "RetrieverSpec",
    "RichMatrixProgress",
    "load_config",
    "normalize_encoder",
    "parse_config",
    "run_from_cli",
    "run_matrix",
]

