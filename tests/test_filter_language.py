"""The filter language: parsing, every operator against a brute-force evaluation, errors, object form."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from retk.ann.filter_language import Filter, FilterError, from_object, parse, to_text, tokenize

ROWS = [
    {"year": 2019, "score": 0.5, "lang": "en", "tags": ["ir", "nlp"], "published": dt.date(2019, 3, 1), "open": True},
    {"year": 2020, "score": 1.5, "lang": "de", "tags": ["ir"], "published": dt.date(2020, 1, 31), "open": False},
    {"year": 2021, "score": None, "lang": "en", "tags": [], "published": dt.date(2021, 7, 4), "open": True},
    {"year": None, "score": 2.5, "lang": None, "tags": None, "published": None, "open": None},
    {"year": 2022, "score": 3.0, "lang": "fr", "tags": ["cv", "it's"], "published": dt.date(2022, 12, 31), "open": False},
    {"year": 2020, "score": -1.0, "lang": "en", "tags": ["nlp"], "published": dt.date(2020, 6, 15), "open": True},
]


@pytest.fixture(scope="module")
def table() -> pa.Table:
    columns = {"id": pa.array([str(i) for i in range(len(ROWS))]), "title": pa.array([""] * len(ROWS)), "text": pa.array(["x"] * len(ROWS))}
    for name, arrow_type in [
        ("year", pa.int64()),
        ("score", pa.float64()),
        ("lang", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("published", pa.date32()),
        ("open", pa.bool_()),
    ]:
        columns[name] = pa.array([row[name] for row in ROWS], arrow_type)
    return pa.table(columns)


def brute(predicate) -> np.ndarray:
    """Apply a Python predicate per row; a missing attribute fails every predicate (the language's rule)."""
    return np.array([bool(predicate(row)) for row in ROWS])


def has(row, name):
    return row[name] is not None


CASES = [
    ("year = 2020", lambda r: has(r, "year") and r["year"] == 2020),
    ("year == 2020", lambda r: has(r, "year") and r["year"] == 2020),
    ("year != 2020", lambda r: has(r, "year") and r["year"] != 2020),
    ("year <> 2020", lambda r: has(r, "year") and r["year"] != 2020),
    ("year < 2021", lambda r: has(r, "year") and r["year"] < 2021),
    ("year <= 2021", lambda r: has(r, "year") and r["year"] <= 2021),
    ("year > 2020", lambda r: has(r, "year") and r["year"] > 2020),
    ("year >= 2020", lambda r: has(r, "year") and r["year"] >= 2020),
    ("score > 1", lambda r: has(r, "score") and r["score"] > 1),
    ("score <= -1.0", lambda r: has(r, "score") and r["score"] <= -1.0),
    ("year > 2019.5", lambda r: has(r, "year") and r["year"] > 2019.5),
    ("lang = 'en'", lambda r: r["lang"] == "en"),
    ('lang = "de"', lambda r: r["lang"] == "de"),
    ("lang in ('de', 'fr')", lambda r: r["lang"] in ("de", "fr")),
    ("lang not in ('de', 'fr')", lambda r: has(r, "lang") and r["lang"] not in ("de", "fr")),
    ("year in (2019, 2022)", lambda r: r["year"] in (2019, 2022)),
    ("year between 2020 and 2021", lambda r: has(r, "year") and 2020 <= r["year"] <= 2021),
    ("year not between 2020 and 2021", lambda r: has(r, "year") and not 2020 <= r["year"] <= 2021),
    ("tags contains 'ir'", lambda r: has(r, "tags") and "ir" in r["tags"]),
    ("tags not contains 'ir'", lambda r: has(r, "tags") and "ir" not in r["tags"]),
    ("tags contains 'it''s'", lambda r: has(r, "tags") and "it's" in r["tags"]),
    ("published >= 2020-01-31", lambda r: has(r, "published") and r["published"] >= dt.date(2020, 1, 31)),
    ("published < '2020-06-15'", lambda r: has(r, "published") and r["published"] < dt.date(2020, 6, 15)),
    ("published between 2020-01-01 and 2020-12-31", lambda r: has(r, "published") and r["published"].year == 2020),
    ("published > 2020-06-15T12:00:00", lambda r: has(r, "published") and r["published"] > dt.date(2020, 6, 15)),
    ("open = true", lambda r: r["open"] is True),
    ("open != true", lambda r: r["open"] is False),
    ("year is null", lambda r: r["year"] is None),
    ("tags is not null", lambda r: r["tags"] is not None),
    ("not (lang = 'en')", lambda r: r["lang"] != "en"),
    ("lang = 'en' and year >= 2020", lambda r: r["lang"] == "en" and has(r, "year") and r["year"] >= 2020),
    ("lang = 'de' or tags contains 'cv'", lambda r: r["lang"] == "de" or (has(r, "tags") and "cv" in r["tags"])),
    (
        "NOT (year < 2020 OR lang = 'fr') AND (tags contains 'nlp' or open = false)",
        lambda r: not ((has(r, "year") and r["year"] < 2020) or r["lang"] == "fr")
        and ((has(r, "tags") and "nlp" in r["tags"]) or r["open"] is False),
    ),
    ("lang = 'en' and not lang = 'en'", lambda r: False),
]


@pytest.mark.parametrize("text,predicate", CASES, ids=[case[0] for case in CASES])
def test_every_operator_matches_brute_force(table, text, predicate):
    mask = Filter.parse(text).evaluate(table)
    np.testing.assert_array_equal(mask, brute(predicate))


@pytest.mark.parametrize("text", [case[0] for case in CASES])
def test_canonical_text_parses_to_the_same_tree(text):
    tree = parse(text)
    assert parse(to_text(tree)) == tree


def test_precedence_and_binds_tighter_than_or():
    assert to_text(parse("a = 1 or b = 2 and c = 3")) == "a = 1 or b = 2 and c = 3"
    assert parse("a = 1 or b = 2 and c = 3") == parse("a = 1 or (b = 2 and c = 3)")
    assert parse("(a = 1 or b = 2) and c = 3") != parse("a = 1 or b = 2 and c = 3")


def test_tokens_carry_positions():
    tokens = tokenize("year >= 2020 and lang in ('en')")
    assert [(t.kind, t.position) for t in tokens[:4]] == [("name", 1), ("op", 6), ("number", 9), ("and", 14)]
    assert tokens[-1].kind == "end"


@pytest.mark.parametrize(
    "text,position,token,words",
    [
        ("year >= ", 9, None, "expected a value after '>='"),
        ("year >= 2020 and", 17, None, "expected a field name"),
        ("(year = 1", 10, None, "expected ')'"),
        ("year = 1 2", 10, "'2'", "expected 'and', 'or'"),
        ("year @ 3", 6, "'@'", "unexpected character"),
        ("lang = 'en", 8, "'en", "unclosed string"),
        ("lang in 'en'", 9, "'en'", "expected '(' after 'in'"),
        ("year between 1 2", 16, "'2'", "expected 'and' between"),
        ("year", 5, None, "expected an operator"),
        ("and = 1", 1, "'and'", "keyword"),
        ("", 1, None, "empty filter"),
        ("published = 2020-02-30", 13, "'2020-02-30'", "not a valid ISO date"),
    ],
)
def test_malformed_expressions_name_position_and_token(text, position, token, words):
    with pytest.raises(FilterError) as caught:
        parse(text)
    error = caught.value
    assert error.position == position
    assert words in str(error)
    assert f"at position {position}" in str(error)
    if token is None:
        assert "end of expression" in str(error)
    else:
        assert token in str(error)


def test_unknown_field_lists_the_known_ones(table):
    with pytest.raises(FilterError) as caught:
        Filter.parse("lang = 'en' and yaer >= 2020").evaluate(table)
    message = str(caught.value)
    assert "unknown field 'yaer'" in message and "did you mean 'year'" in message
    assert "at position 17" in message
    for known in ("year (number)", "score (number)", "lang (string)", "tags (list of string)", "published (date)", "open (bool)"):
        assert known in message


@pytest.mark.parametrize(
    "text,expected",
    [
        ("year = 'recent'", "expected a number, got string 'recent'"),
        ("lang = 3", "expected a quoted string, got number 3"),
        ("published > 5", "expected an ISO date"),
        ("published > 'yesterday'", "expected an ISO date"),
        ("open = 'yes'", "expected true or false"),
        ("open < true", "is a boolean; use = or !="),
        ("tags = 'ir'", "is a list"),
        ("lang contains 'e'", "'contains' needs a list attribute"),
        ("tags contains 3", "expected a quoted string, got number 3"),
        ("year in (2020, 'x')", "expected a number, got string 'x'"),
        ("title = 'x'", "not an attribute"),
    ],
)
def test_type_mismatch_says_which_types_were_expected(table, text, expected):
    with pytest.raises(FilterError) as caught:
        Filter.parse(text).evaluate(table)
    assert expected in str(caught.value)
    assert "at position" in str(caught.value)


def test_object_form_equals_text(table):
    text = Filter.parse("year >= 2020 and lang in ('en', 'fr') and not (tags contains 'cv')")
    structured = Filter.of(
        {
            "and": [
                {"field": "year", "op": ">=", "value": 2020},
                ("lang", "in", ["en", "fr"]),
                {"not": {"field": "tags", "op": "contains", "value": "cv"}},
            ]
        }
    )
    assert structured == text
    np.testing.assert_array_equal(structured.evaluate(table), text.evaluate(table))
    assert Filter.of({"lang": "en", "year": [2020, 2021]}) == Filter.parse("lang = 'en' and year in (2020, 2021)")
    between = Filter.of({"field": "published", "op": "between", "value": [dt.date(2020, 1, 1), dt.date(2020, 12, 31)]})
    np.testing.assert_array_equal(between.evaluate(table), brute(lambda r: has(r, "published") and r["published"].year == 2020))
    assert from_object(("year", "=", np.int64(3))) == parse("year = 3")


@pytest.mark.parametrize(
    "obj,words",
    [
        ({"field": "year", "op": "~", "value": 1}, "unknown operator"),
        ({"field": "year", "op": "in", "value": 2020}, "needs a non-empty list"),
        ({"field": "year", "op": "between", "value": [1]}, "needs two bounds"),
        ({"and": []}, "non-empty list"),
        ({"field": "year", "op": "=", "value": object()}, "unsupported value"),
        (42, "cannot read a filter from int"),
    ],
)
def test_bad_objects_are_rejected(obj, words):
    with pytest.raises(FilterError, match=words):
        Filter.of(obj)


def test_no_python_is_evaluated():
    for text in ("__import__('os').system('true')", "year = (1).__class__", "lang = 'a' + 'b'"):
        with pytest.raises(FilterError):
            parse(text)
