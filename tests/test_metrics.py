"""Metrics against hand computations, tie order, and byte-identical run files."""

from __future__ import annotations

import math

import pytest

from retk.evaluation import per_query_metrics, mean_metrics, write_trec_run
from retk.evaluation.trec import drop_identical_ids

QRELS = {
    "q1": {"d1": 2, "d3": 1, "d9": 1, "d4": 0},
    "q2": {"d2": 1},
    "q3": {"d5": 1},
    "q4": {"d7": 0},  # no relevant document: left out of every mean, as trec_eval does
}
RUN = {
    "q1": [("d4", 9.0), ("d1", 8.0), ("d2", 7.0), ("d3", 6.0)],
    "q2": [(f"x{i}", 20.0 - i) for i in range(12)] + [("d2", 1.0)],
    "q3": [],
    "q4": [("d7", 1.0)],
}


def dcg(gains: list[int]) -> float:
    """DCG with linear gains, trec_eval's definition (and so BEIR's)."""
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def test_metrics_match_hand_computation():
    values = per_query_metrics(QRELS, RUN)

    # q1: gains at ranks 1..4 are 0, 2, 0, 1; the ideal order is 2, 1, 1.
    assert values["nDCG@10"]["q1"] == pytest.approx(dcg([0, 2, 0, 1]) / dcg([2, 1, 1]))
    assert values["MRR@10"]["q1"] == pytest.approx(1 / 2)
    # Relevant documents d1 (rank 2) and d3 (rank 4) of three: AP = (1/2 + 2/4) / 3.
    assert values["MAP@1000"]["q1"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert values["Recall@100"]["q1"] == pytest.approx(2 / 3)

    # q2: the only relevant document is at rank 13, past MRR's cut-off of 10.
    assert values["MRR@10"]["q2"] == 0.0
    assert values["nDCG@10"]["q2"] == 0.0
    assert values["Recall@100"]["q2"] == 1.0
    assert values["MAP@1000"]["q2"] == pytest.approx(1 / 13)

    # q3 retrieved nothing but is still averaged in, as a zero.
    assert all(values[name]["q3"] == 0.0 for name in values)
    assert all("q4" not in values[name] for name in values)

    means = mean_metrics(values)
    assert means["Recall@100"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ties_evaluated_in_returned_order():
    # Both documents score 1.0; retk ranks ties by ascending id, so "a" is first.
    qrels = {"q": {"a": 1}}
    run = {"q": [("a", 1.0), ("b", 1.0)]}
    assert per_query_metrics(qrels, run)["MRR@10"]["q"] == 1.0


def test_drop_identical_ids():
    assert drop_identical_ids({"q1": [("q1", 2.0), ("d1", 1.0)]}) == {"q1": [("d1", 1.0)]}


def test_run_file_format_and_determinism(tmp_path):
    first, second = tmp_path / "a.trec", tmp_path / "b.trec"
    write_trec_run(RUN, first, tag="retk-test")
    write_trec_run(dict(reversed(list(RUN.items()))), second, tag="retk-test")
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text().splitlines()
    assert lines[0] == "q1 Q0 d4 1 9.000000 retk-test"
    assert lines[3] == "q1 Q0 d3 4 6.000000 retk-test"
