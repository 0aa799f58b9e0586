"""The ``retk`` command line: a real subprocess per command, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def retk(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "retk.cli.main", *arguments]
    process = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if check and process.returncode != 0:
        raise AssertionError(f"{command} failed with {process.returncode}:\n{process.stderr}")
    return process


def test_index_search_eval_bm25(scifact_subset: Path, tmp_path: Path):
    index = tmp_path / "bm25"
    retk("index", str(scifact_subset), "--out", str(index), "--encoder", "bm25")
    found = json.loads(retk("search", str(index), "ACE inhibitors reduce mortality", "-k", "3", "--json").stdout)
    assert len(found["hits"]) == 3
    assert [h["rank"] for h in found["hits"]] == [1, 2, 3]
    assert found["hits"][0]["score"] >= found["hits"][1]["score"]

    output, run = tmp_path / "r.json", tmp_path / "run.trec"
    evaluated = retk("eval", "--dataset", str(scifact_subset), "--index", str(index), "--output", str(output), "--run", str(run))
    score = json.loads(output.read_text())["metrics"]["nDCG@10"]
    assert f"nDCG@10 {score:.4f}" in evaluated.stdout
    assert run.stat().st_size > 0


def test_search_json_when_fewer_than_k(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "1", "text": "solar panels"}\n{"_id": "2", "text": "wind farms"}\n', encoding="utf-8")
    retk("index", str(corpus), "--out", str(tmp_path / "i"), "--encoder", "bm25")
    found = json.loads(retk("search", str(tmp_path / "i"), "solar", "-k", "5", "--json").stdout)
    assert [h["doc_id"] for h in found["hits"]] == ["1"]
    assert found["note"] == "only 1 documents matched, fewer than k=5"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["search", "/nonexistent/index", "q"], "error: index folder /nonexistent/index not found"),
        (["index", "/nonexistent/corpus.jsonl", "--out", "/tmp/never"], "error: /nonexistent/corpus.jsonl: corpus file not found"),
        (["info", str(Path(__file__))], f"error: {Path(__file__)} is a file; an index is the folder that 'retk index' writes"),
        # The strategy is checked before the index (and its model) is opened.
        (["search", "/nonexistent/index", "q", "--strategy", "fastest"], "error: unknown strategy 'fastest'; expected auto or one of exact, hnsw, ivf, hnswlib, postfilter"),
    ],
)
def test_errors_are_one_line(arguments, expected):
    process = retk(*arguments, check=False)
    assert process.returncode == 2
    assert process.stderr.strip() == expected


def test_bad_corpus_line_reported(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "txt": "typo"}\n', encoding="utf-8")
    process = retk("index", str(corpus), "--out", str(tmp_path / "i"), "--encoder", "bm25", check=False)
    assert process.returncode == 2
    assert process.stderr.strip().startswith(f"error: {corpus}:2: field 'text': missing required field")
    assert not (tmp_path / "i").exists()


def test_debug_shows_traceback():
    process = retk("--debug", "search", "/nonexistent/index", "q", check=False)
    assert process.returncode != 0
    assert "Traceback" in process.stderr


def test_help_lists_commands():
    process = retk("--help")
    for command in ("index", "search", "eval", "info", "train"):
        assert command in process.stdout


def test_search_json_writes_dates_as_iso(tmp_path: Path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "c.parquet"
    published = [datetime.date(2021, 3, 4), datetime.date(2019, 1, 2)]
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["dogs bark", "cats purr"], "published": published}), corpus)
    retk("index", str(corpus), "--out", str(tmp_path / "i"), "--encoder", "bm25")
    found = json.loads(retk("search", str(tmp_path / "i"), "dogs", "--json").stdout)
    assert found["hits"][0]["attributes"] == {"published": "2021-03-04"}


def test_leaderboard_unknown_test_rejected(tmp_path: Path):
    process = retk("leaderboard", "build", str(tmp_path), "--out", str(tmp_path / "site"), "--test", "bogus", check=False)
    assert process.returncode == 2
    assert process.stderr.strip() == "error: unknown test 'bogus'; expected one of randomization, t-test"


def test_eval_on_other_corpus_names_it(scifact_subset: Path, tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "1", "text": "solar panels"}\n', encoding="utf-8")
    retk("index", str(corpus), "--out", str(tmp_path / "i"), "--encoder", "bm25")
    process = retk("eval", "--dataset", str(scifact_subset), "--index", str(tmp_path / "i"), check=False)
    assert process.returncode == 2
    assert "(their SHA-256 checksums differ); build the index from the dataset's corpus" in process.stderr
