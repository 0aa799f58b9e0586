"""Corpus, query and qrels readers: valid layouts and every kind of bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retk.datasets import BeirDataset, CorpusReader, check_qrels, read_qrels, read_queries
from retk.errors import InputError


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_all(path: Path, **options) -> tuple[list, CorpusReader]:
    reader = CorpusReader(path, **options)
    return list(reader), reader


def test_jsonl_corpus_with_metadata(tmp_path):
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "T1", "text": "one", "metadata": {"year": 2020, "tags": ["a", "b"]}},
            {"_id": "d2", "text": "two"},
        ],
    )
    documents, reader = read_all(path)
    assert [d.id for d in documents] == ["d1", "d2"]
    assert documents[0].attributes == {"year": 2020, "tags": ["a", "b"]}
    assert documents[1].title == ""
    assert documents[0].content == "T1 one"
    assert len(reader.checksum) == 64


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"_id": "d2", "text": "two"', "malformed JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
    ],
)
def test_jsonl_malformed_line(tmp_path, line, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "one"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        read_all(path)
    assert error.value.line == 2
    assert str(path) in str(error.value)


def test_missing_id_names_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "text": "x"}, {"text": "no id"}])
    with pytest.raises(InputError) as error:
        read_all(path, id_field="_id")
    assert (error.value.line, error.value.field) == (2, "_id")


def test_missing_text_names_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "title": "only a title"}])
    with pytest.raises(InputError, match="missing required field") as error:
        read_all(path)
    assert (error.value.line, error.value.field) == (1, "text")


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}, {"_id": "d1", "text": "c"}])
    with pytest.raises(InputError, match="first seen at line 1") as error:
        read_all(path)
    assert error.value.line == 3


def test_empty_text_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"_id": "d1", "text": "a"}, {"_id": "d2", "title": "", "text": "  "}, {"_id": "d3", "title": "Title only", "text": ""}],
    )
    with caplog.at_level(logging.WARNING):
        documents, reader = read_all(path)
    assert [d.id for d in documents] == ["d1", "d3"]
    assert reader.skipped.to_dict() == {"empty_text": {"count": 1, "ids": ["d2"]}}
    assert "skipped 1 documents (empty_text)" in caplog.text


def test_non_utf8_byte_names_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match="invalid UTF-8 byte 0xe9") as error:
        read_all(path)
    assert error.value.line == 2


def test_bom_and_crlf_are_read_transparently(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "d1", "text": "one"}\r\n{"_id": "d2", "text": "two"}\r\n')
    documents, _ = read_all(path)
    assert [(d.id, d.text) for d in documents] == [("d1", "one"), ("d2", "two")]


def test_whitespace_in_id_rejected(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d 1", "text": "a"}])
    with pytest.raises(InputError, match="white space"):
        read_all(path)


def test_tsv_corpus_columns_and_attributes(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("doc\theadline\tbody\tlang\r\n1\tH1\tB1\ten\r\n2\tH2\tB2\tde\r\n", encoding="utf-8")
    documents, _ = read_all(path, id_field="doc", title_field="headline", text_field="body")
    assert [(d.id, d.title, d.text, d.attributes) for d in documents] == [
        ("1", "H1", "B1", {"lang": "en"}),
        ("2", "H2", "B2", {"lang": "de"}),
    ]


def test_csv_wrong_column_count(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"a, quoted"\n2,b,extra\n', encoding="utf-8")
    with pytest.raises(InputError, match="expected 2 columns as in the header, found 3") as error:
        read_all(path)
    assert error.value.line == 3


def test_csv_unclosed_quote_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,title,text\n1,a,first\n2,"b,second\n3,c,third\n', encoding="utf-8")
    with pytest.raises(InputError, match="not closed properly") as error:
        read_all(path)
    assert error.value.line == 3


def test_csv_quoted_newline_kept(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"two\nlines"\n2,b\n', encoding="utf-8")
    documents, _ = read_all(path)
    assert [d.text for d in documents] == ["two\nlines", "b"]


def test_parquet_corpus_rows(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "year": [2001, 2002]}), path)
    documents, reader = read_all(path)
    assert [(d.id, d.attributes["year"]) for d in documents] == [("a", 2001), ("b", 2002)]
    assert reader.count() == 2


def test_parquet_missing_text_names_row(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", None]}), path)
    with pytest.raises(InputError) as error:
        read_all(path)
    assert (error.value.line, error.value.field) == (2, "text")


def test_unknown_suffix_rejected(tmp_path):
    path = tmp_path / "c.xml"
    path.write_text("<doc/>", encoding="utf-8")
    with pytest.raises(InputError, match="unknown corpus format"):
        CorpusReader(path)


def test_qrels_with_and_without_header(tmp_path):
    with_header = tmp_path / "a.tsv"
    with_header.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n", encoding="utf-8")
    without = tmp_path / "b.tsv"
    without.write_text("q1\td1\t2\nq1\td2\t0\n", encoding="utf-8")
    trec = tmp_path / "c.txt"
    trec.write_text("q1 0 d1 2\nq1 0 d2 0\n", encoding="utf-8")
    expected = {"q1": {"d1": 2, "d2": 0}}
    assert read_qrels(with_header) == expected
    assert read_qrels(without) == expected
    assert read_qrels(trec) == expected


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("q1\td1\t1\nq1\td2\n", 2, "expected 3 columns"),
        ("q1\td1\t1\nq1\td2\tyes\n", 2, "not an integer"),
        ("q1\td1\t1\nq1\td1\t2\n", 2, "duplicate judgement"),
    ],
)
def test_qrels_bad_rows(tmp_path, content, line, message):
    path = tmp_path / "q.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        read_qrels(path)
    assert error.value.line == line


def test_qrels_unknown_ids_error_or_skip(tmp_path):
    qrels = {"q1": {"d1": 1, "ghost": 1}, "q9": {"d1": 1}}
    with pytest.raises(InputError, match="unknown"):
        check_qrels(qrels, query_ids={"q1"}, doc_ids={"d1"}, path=tmp_path / "q.tsv")
    kept, skipped = check_qrels(qrels, query_ids={"q1"}, doc_ids={"d1"}, path=tmp_path / "q.tsv", on_unknown="skip")
    assert kept == {"q1": {"d1": 1}}
    assert skipped == {"unknown_document": 1, "unknown_query": 1}


def test_queries_duplicate_and_empty(tmp_path):
    duplicate = write_jsonl(tmp_path / "q1.jsonl", [{"_id": "1", "text": "a"}, {"_id": "1", "text": "b"}])
    with pytest.raises(InputError, match="duplicate query id") as error:
        read_queries(duplicate)
    assert error.value.line == 2
    empty = write_jsonl(tmp_path / "q2.jsonl", [{"_id": "1", "text": " "}])
    with pytest.raises(InputError, match="empty query text"):
        read_queries(empty)


def test_scifact_counts(scifact_dir):
    dataset = BeirDataset.open(scifact_dir)
    documents = list(dataset.corpus())
    assert len(documents) == 5183
    assert len(dataset.queries()) == 1109
    test = dataset.qrels("test")
    assert (len(test), sum(len(j) for j in test.values())) == (300, 339)
    assert sum(len(j) for j in dataset.qrels("train").values()) == 919
    with pytest.raises(InputError, match="available splits: test, train"):
        dataset.qrels("dev")


def test_missing_id_uses_first_records_key(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "text": "x"}, {"text": "no id"}])
    with pytest.raises(InputError) as error:
        read_all(path)
    assert (error.value.line, error.value.field) == (2, "_id")
