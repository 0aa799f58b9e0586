"""TREC run files: ``query_id Q0 doc_id rank score tag``, one line per retrieved document."""

from __future__ import annotations

from pathlib import Path

from retk.evaluation.metrics import Run


def write_trec_run(run: Run, path: str | Path, tag: str) -> None:
    """Write ``run`` with queries sorted by id and documents in rank order; scores to 6 decimals.

    The same run always gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n"
        for query_id in sorted(run)
        for rank, (doc_id, score) in enumerate(run[query_id], start=1)
    ]
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(lines), encoding="utf-8")
    temporary.replace(path)


def drop_identical_ids(run: Run) -> Run:
    """Remove hits whose document id equals the query id, as BEIR's evaluation does."""
    return {query_id: [(doc_id, score) for doc_id, score in ranked if doc_id != query_id] for query_id, ranked in run.items()}
