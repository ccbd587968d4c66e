"""The query language parser: typed terms, weights, unwanted terms, and clear refusals."""

from __future__ import annotations

import pytest

from operations.errors import InvalidInput
from operations.relevance.query import MAX_TERMS, Term, parse_query


def test_plain_words_are_one_phrase_in_order():
    q = parse_query("海边 日落")
    assert q.is_plain and q.positive_texts() == [("海边 日落", 1.0)]
    assert parse_query("左边有一个红色的圆形").positive_texts() == [("左边有一个红色的圆形", 1.0)]


def test_unwanted_terms_with_ascii_and_full_width_minus_and_space():
    q = parse_query("海边\u3000日落 -人物 －汽车")
    assert [t.text for t in q.positives] == ["海边", "日落"]
    assert q.negatives == (Term("人物", 1.0, True), Term("汽车", 1.0, True))
    assert not q.is_plain
    assert q.positive_texts() == [("海边 日落", 1.0)]


def test_weights_split_the_wanted_terms():
    q = parse_query("红色:2 汽车 -人物：0.5")
    assert q.weighted
    assert q.positive_texts() == [("红色", 2.0), ("汽车", 1.0)]
    assert q.negatives == (Term("人物", 0.5, True),)


def test_hyphen_and_colon_inside_a_term_are_text():
    q = parse_query("T-shirt 12:30am")
    assert q.is_plain and q.positive_texts() == [("T-shirt 12:30am", 1.0)]


@pytest.mark.parametrize(
    "text",
    ["-", "红色 -", ":2", "红色:0", "红色:11", "红色:-1", "--人物", "-人物", "人物 -人物", " ", ""],
)
def test_malformed_queries_are_refused(text):
    with pytest.raises(InvalidInput):
        parse_query(text)


def test_too_many_terms_are_refused():
    with pytest.raises(InvalidInput, match="at most"):
        parse_query(" ".join(f"词{i}" for i in range(MAX_TERMS + 1)))


def test_unwanted_only_is_allowed_with_an_image_or_feedback():
    q = parse_query("-人物", allow_no_positive=True)
    assert q.positives == () and q.negatives == (Term("人物", 1.0, True),)
