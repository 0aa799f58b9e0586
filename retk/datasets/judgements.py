"""Read queries and relevance judgements (qrels), validating every line."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from retk.datasets.lines import HashingLineReader
from retk.datasets.records import read_jsonl_records
from retk.errors import InputError

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
UNKNOWN_POLICIES = ("error", "skip")


def read_queries(path: str | Path, *, id_field: str = "_id", text_field: str = "text") -> dict[str, str]:
    """Read a BEIR ``queries.jsonl`` into ``{query_id: text}``; empty or duplicate queries raise."""
    reader = HashingLineReader(path)
    queries: dict[str, str] = {}
    for line, record in read_jsonl_records(reader):
        for key in (id_field, text_field):
            if record.get(key) is None:
                raise InputError("missing required field", path=path, line=line, field=key)
        query_id, text = str(record[id_field]), str(record[text_field])
        if query_id in queries:
            raise InputError(f"duplicate query id '{query_id}'", path=path, line=line, field=id_field)
        if not text.strip():
            raise InputError("empty query text", path=path, line=line, field=text_field)
        queries[query_id] = text
    return queries


def read_qrels(path: str | Path) -> Qrels:
    """Read a qrels file into ``{query_id: {doc_id: relevance}}``.

    Accepts BEIR's three tab-separated columns (query, document, relevance),
    with or without a header line (a first line whose relevance column is not
    an integer is taken as the header), and TREC's four (query, iteration,
    document, relevance). Relevance is a graded integer; rows with relevance 0
    are kept as judged non-relevant. A repeated (query, document) pair raises.
    """
    reader = HashingLineReader(path)
    qrels: Qrels = {}
    width: int | None = None
    for line, text in reader:
        if not text.strip():
            continue
        columns = text.split("\t") if "\t" in text else text.split()
        if line == 1 and _is_header(columns):
            width = len(columns)
            continue
        if width is None:
            width = len(columns)
        if len(columns) != width or width not in (3, 4):
            raise InputError(
                f"expected 3 columns (query, document, relevance) or 4 (TREC), found {len(columns)}",
                path=path,
                line=line,
            )
        query_id, doc_id, relevance = columns[0], columns[-2], columns[-1]
        try:
            grade = int(relevance)
        except ValueError:
            raise InputError(f"relevance '{relevance}' is not an integer", path=path, line=line, field="relevance") from None
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise InputError(f"duplicate judgement for query '{query_id}' and document '{doc_id}'", path=path, line=line)
        judged[doc_id] = grade
    return qrels


def _is_header(columns: list[str]) -> bool:
    try:
        int(columns[-1])
    except ValueError:
        return True
    return False


def check_qrels(
    qrels: Qrels,
    *,
    query_ids: Collection[str],
    doc_ids: Collection[str],
    path: str | Path,
    on_unknown: str = "error",
) -> tuple[Qrels, Counter]:
    """Check that qrels name only known queries and documents.

    With ``on_unknown="error"`` the first unknown id raises; with ``"skip"``
    those judgements are dropped and counted under ``unknown_query`` and
    ``unknown_document`` in the returned counter, which callers record.
    """
    if on_unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"on_unknown must be one of {UNKNOWN_POLICIES}, got {on_unknown!r}")
    kept: Qrels = {}
    skipped: Counter = Counter()
    for query_id, judged in qrels.items():
        if query_id not in query_ids:
            if on_unknown == "error":
                raise InputError(f"qrels name unknown query '{query_id}'", path=path, field="query-id")
            skipped["unknown_query"] += len(judged)
            continue
        for doc_id, grade in judged.items():
            if doc_id not in doc_ids:
                if on_unknown == "error":
                    raise InputError(
                        f"qrels for query '{query_id}' name unknown document '{doc_id}'; "
                        "pass on_unknown='skip' (--skip-unknown-qrels) to drop such judgements",
                        path=path,
                        field="corpus-id",
                    )
                skipped["unknown_document"] += 1
                continue
            kept.setdefault(query_id, {})[doc_id] = grade
    for reason, count in skipped.items():
        logger.warning("%s: skipped %d judgements (%s)", path, count, reason)
    return kept, skipped
