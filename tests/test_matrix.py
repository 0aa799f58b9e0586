"""The evaluation matrix: one results file per cell, the index cache, resuming, the CLI; significance tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import retk
from retk.embeddings import DenseEncoder, register_encoder
from retk.errors import RetkError
from retk.evaluation import matrix as matrix_module
from retk.evaluation.matrix import MatrixObserver, load_config, parse_config, run_matrix
from retk.evaluation.significance import paired_test, randomization_p_value

REPO = Path(__file__).resolve().parents[1]


@register_encoder
class HashingEncoder(DenseEncoder):
    """A tiny deterministic dense encoder (hashed bag of words) that counts the documents it encodes."""

    type_name = "test-hashing"
    encoded_documents = 0

    def __init__(self, dimension: int = 32) -> None:
        self._dimension = dimension

    @property
    def name(self) -> str:
        return "hashing"

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def similarity(self) -> str:
        return "cosine"

    def config(self) -> dict[str, Any]:
        return {"type": self.type_name, "model": "hashing", "dimension": self._dimension}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HashingEncoder":
        return cls(config.get("dimension", 32))

    def _vectors(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(token.encode()).hexdigest(), 16) % self._dimension] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def encode_queries(self, texts, *, show_progress=False) -> np.ndarray:
        return self._vectors(list(texts))

    def encode_documents(self, texts, *, show_progress=False) -> np.ndarray:
        HashingEncoder.encoded_documents += len(texts)
        return self._vectors(list(texts))


def write_beir(folder: Path, topic: str, size: int = 30) -> Path:
    folder.mkdir(parents=True)
    words = ["apple", "pear", "engine", "river", "music", "protein", "cell", "tax", "storm", "garden"]
    with (folder / "corpus.jsonl").open("w") as handle:
        for i in range(size):
            text = f"{topic} {words[i % len(words)]} {words[(i * 3) % len(words)]} note {i}"
            handle.write(json.dumps({"_id": f"{topic}{i}", "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for i, word in enumerate(words):
            handle.write(json.dumps({"_id": f"q{i}", "text": f"{word} {topic}"}) + "\n")
    (folder / "qrels").mkdir()
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{topic}{i}\t1" for i in range(len(words))] + [f"q{i}\t{topic}{i + 10}\t2" for i in range(3)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return folder


def config_for(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    data = tmp_path / "data"
    if not data.exists():
        write_beir(data / "alpha", "alpha")
        write_beir(data / "beta", "beta", size=40)
    config = {
        "name": "tiny",
        "results": str(tmp_path / "results"),
        "cache": str(tmp_path / "cache"),
        "baseline": "bm25",
        "datasets": [str(data / "alpha"), {"name": "beta", "path": str(data / "beta"), "split": "test"}],
        "retrievers": [
            {"name": "bm25", "encoder": "bm25"},
            {"name": "hashing", "encoder": {"type": "test-hashing", "dimension": 32}},
            {"name": "hybrid", "fusion": ["bm25", "hashing"], "k": 60},
        ],
    }
    config.update(changes)
    return config


def write_config(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config_for(tmp_path, **changes)))
    return path


def results_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "results").rglob("*.json"))


class Interrupt(MatrixObserver):
    """Raise KeyboardInterrupt when the n-th computed cell starts (or while an index is built)."""

    def __init__(self, at_cell: int | None = None, during_build: bool = False) -> None:
        self.at_cell, self.during_build, self.started = at_cell, during_build, 0

    def cell_started(self, cell) -> None:
        self.started += 1
        if self.started == self.at_cell:
            raise KeyboardInterrupt

    def build_progress(self, done: int, total: int) -> None:
        if self.during_build:
            raise KeyboardInterrupt


def test_one_results_file_per_cell_with_provenance(tmp_path: Path) -> None:
    outcomes = run_matrix(load_config(write_config(tmp_path)))
    assert [o.status for o in outcomes] == ["computed"] * 6
    files = results_files(tmp_path)
    assert [f.relative_to(tmp_path / "results").as_posix() for f in files] == [
        "alpha/bm25.json", "alpha/hashing.json", "alpha/hybrid.json", "beta/bm25.json", "beta/hashing.json", "beta/hybrid.json",
    ]
    hybrid = json.loads((tmp_path / "results" / "alpha" / "hybrid.json").read_text())
    assert hybrid["family"] == "hybrid"
    assert hybrid["retriever_name"] == "hybrid"
    assert set(hybrid["per_query"]) == set(hybrid["metrics"])  # every metric's per-query scores are kept
    assert hybrid["index_bytes"] > 0
    assert hybrid["reproduce"]["matrix"].startswith("retk eval --config ")
    assert any(step.startswith("retk fuse ") for step in hybrid["reproduce"]["steps"])
    assert hybrid["reproduce"]["steps"][-1].startswith("retk eval --dataset ")
    # The numbers are those of evaluating the cached index directly.
    bm25 = json.loads((tmp_path / "results" / "beta" / "bm25.json").read_text())
    direct = retk.evaluate(bm25["index"]["path"], tmp_path / "data" / "beta")
    assert bm25["metrics"] == direct.metrics


def test_each_corpus_is_encoded_once_per_encoder(tmp_path: Path) -> None:
    HashingEncoder.encoded_documents = 0
    run_matrix(load_config(write_config(tmp_path)))
    # alpha has 30 documents, beta 40: the dense cell and the hybrid share one index per corpus.
    assert HashingEncoder.encoded_documents == 70
    assert len(list((tmp_path / "cache" / "indexes").iterdir())) == 4  # (bm25, hashing) x (alpha, beta)
    second = run_matrix(load_config(write_config(tmp_path)))
    assert [o.status for o in second] == ["skipped"] * 6
    assert HashingEncoder.encoded_documents == 70
    # A new results folder recomputes every cell but still reuses the cached indexes.
    third = run_matrix(load_config(write_config(tmp_path), results_dir=tmp_path / "results-2"))
    assert [o.status for o in third] == ["computed"] * 6
    assert HashingEncoder.encoded_documents == 70


def test_interrupted_run_resumes_without_recomputing_finished_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(load_config(config), observer=Interrupt(at_cell=3))
    finished = results_files(tmp_path)
    assert len(finished) == 2
    stamps = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in finished}

    evaluated: list[str] = []
    real_evaluate = matrix_module.evaluate

    def counting_evaluate(index, dataset, **options):
        evaluated.append(str(dataset.root))
        return real_evaluate(index, dataset, **options)

    monkeypatch.setattr(matrix_module, "evaluate", counting_evaluate)
    outcomes = run_matrix(load_config(config))
    assert [o.status for o in outcomes] == ["skipped", "skipped"] + ["computed"] * 4
    assert len(evaluated) == 4
    for path, (mtime, content) in stamps.items():
        assert path.stat().st_mtime_ns == mtime
        assert path.read_bytes() == content
    assert len(results_files(tmp_path)) == 6


def test_interrupted_index_build_leaves_no_partial_index(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_matrix(load_config(config), observer=Interrupt(during_build=True))
    cache = tmp_path / "cache" / "indexes"
    assert not cache.exists() or list(cache.iterdir()) == []
    assert results_files(tmp_path) == []
    assert [o.status for o in run_matrix(load_config(config))] == ["computed"] * 6


def test_changed_settings_recompute_only_the_cells_they_touch(tmp_path: Path) -> None:
    run_matrix(load_config(write_config(tmp_path)))
    changed = config_for(tmp_path)
    changed["retrievers"][0] = {"name": "bm25", "encoder": {"name": "bm25", "k1": 0.9, "b": 0.4}}
    outcomes = run_matrix(parse_config(changed))
    statuses = {(o.cell.dataset.name, o.cell.retriever.name): o.status for o in outcomes}
    assert statuses[("alpha", "bm25")] == "computed"
    assert statuses[("alpha", "hybrid")] == "computed"
    assert statuses[("alpha", "hashing")] == "skipped"
    assert statuses[("beta", "hashing")] == "skipped"
    assert json.loads((tmp_path / "results" / "alpha" / "bm25.json").read_text())["encoder"]["k1"] == 0.9


def test_corrupt_cached_index_is_rebuilt(tmp_path: Path) -> None:
    run_matrix(load_config(write_config(tmp_path)))
    for folder in (tmp_path / "cache" / "indexes").iterdir():
        (folder / "documents.parquet").unlink()
    for path in results_files(tmp_path):
        path.unlink()
    assert [o.status for o in run_matrix(load_config(write_config(tmp_path)))] == ["computed"] * 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"retrievers": [{"name": "x", "fusion": ["a", "b"]}]}, "fuses unknown retriever 'a'"),
        ({"retrievers": [{"name": "bm25", "encoder": "bm25"}, {"name": "bm25", "encoder": "bm25"}]}, "repeated: bm25"),
        ({"retrievers": [{"name": "x", "encoder": "no-such-encoder"}]}, "unknown encoder 'no-such-encoder'"),
        ({"baseline": "nobody"}, "baseline 'nobody'"),
        ({"datasets": ["${RETK_TEST_UNSET_VARIABLE}/x"]}, "unset environment variables: RETK_TEST_UNSET_VARIABLE"),
        ({"colour": "blue"}, "unknown keys colour"),
        ({"retrievers": []}, "'retrievers' must be a non-empty list"),
    ],
)
def test_config_errors_are_reported(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(RetkError, match=re.escape(message)):
        parse_config(config_for(tmp_path, **change))


def test_cli_eval_config_builds_site(tmp_path: Path) -> None:
    from retk.cli.main import app

    config = write_config(tmp_path, site=str(tmp_path / "site"))
    done = CliRunner().invoke(app, ["eval", "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "alpha / hybrid" in done.output
    assert "leaderboard:" in done.output
    page = (tmp_path / "site" / "index.html").read_text()
    # Each number on the site is the results file's (data-value contains the exact float).
    for path in results_files(tmp_path):
        data = json.loads(path.read_text())
        run_id = f"{data['dataset_name']}--{data['retriever_name']}"
        row = re.search(rf'<tr data-family="[^"]*" data-run="{re.escape(run_id)}">(.*?)</tr>', page, re.S)
        assert row, run_id
        values = re.findall(r'<td class="num" data-value="([^"]*)">([^<]*)', row.group(1))
        for (exact, shown), metric in zip(values, ("nDCG@10", "MRR@10", "Recall@100", "Recall@1000")):
            assert float(exact) == data["metrics"][metric]
            assert shown.strip() == f"{data['metrics'][metric]:.4f}"
    again = CliRunner().invoke(app, ["eval", "--config", str(config)])
    assert again.exit_code == 0
    assert again.output.count("skipped") >= 6
    missing = CliRunner().invoke(app, ["eval", "--split", "test"])
    assert missing.exit_code != 0


def test_committed_config_parses(monkeypatch: pytest.MonkeyPatch, scifact_dir: Path) -> None:
    monkeypatch.setenv("RETK_DATA_DIR", str(scifact_dir.parent))
    config = load_config(REPO / "configs" / "scifact-bench.yaml")
    assert [r.name for r in config.retrievers] == ["bm25", "minilm", "bm25+minilm-rrf"]
    assert config.retrievers[2].fusion == ("bm25", "minilm")
    assert config.retrievers[2].k == 60
    assert config.baseline == "bm25"
    assert config.site_dir is not None
    assert [d.name for d in config.datasets] == ["scifact"]
    assert config.datasets[0].split == "test"


# --------------------------------------------------------------------------- significance


def test_randomization_test_on_a_hand_sized_example() -> None:
    # Four queries, all differences +0.1: of the 16 sign patterns only the two all-equal ones
    # reach |mean| = 0.1, so the exact two-sided p is 2/16 = 0.125.
    p = randomization_p_value(np.array([0.1, 0.1, 0.1, 0.1]), trials=20000, seed=3)
    assert p == pytest.approx(0.125, abs=0.01)
    assert randomization_p_value(np.zeros(5)) == 1.0


def test_paired_tests_win_loss_tie() -> None:
    rng = np.random.default_rng(7)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(200))}
    better = {q: min(1.0, v + 0.15 + rng.normal(0, 0.05)) for q, v in base.items()}
    for method in ("randomization", "t-test"):
        win = paired_test(base, better, method=method, trials=2000)
        assert win.significant
        assert win.outcome == "win"
        assert win.mark == "▲"
        loss = paired_test(better, base, method=method, trials=2000)
        assert loss.outcome == "loss"
        assert loss.mark == "▼"
        tie = paired_test(base, dict(base), method=method)
        assert tie.p_value == 1.0
        assert tie.outcome is None
        assert tie.mark == ""
    from scipy import stats

    expected = stats.ttest_rel(list(better.values()), list(base.values())).pvalue
    assert paired_test(base, better, method="t-test").p_value == pytest.approx(expected)


def test_paired_test_uses_shared_queries_only() -> None:
    comparison = paired_test({"a": 0.0, "b": 1.0, "c": 0.5}, {"b": 1.0, "c": 0.5, "d": 1.0})
    assert comparison.queries == 2
    assert comparison.p_value == 1.0
    with pytest.raises(ValueError, match="share no scored query"):
        paired_test({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="unknown test"):
        paired_test({"a": 1.0}, {"a": 0.0}, method="wilcoxon")
