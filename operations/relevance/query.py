"""The search query language, parsed into a typed query (never spliced into any other text).

    海边 日落 -人物        terms separated by spaces (ASCII or the full-width U+3000);
                           a term starting with - or － is unwanted
    红色:2 汽车            a term ending in :W or ：W has weight W (0 < W <= 10; default 1)
    -人物:0.5              an unwanted term may carry a weight too

Rules (documented in the README, "Relevance"):
- Without any weight the wanted terms are read as one phrase, in the order written (a plain
  sentence or "海边 日落" means what it meant before the language existed).
- With a weight anywhere, each wanted term is its own vector, summed with its weight.
- A - or : elsewhere in a term is part of the text ("T-shirt", "12:30" stays as written when
  what follows the last colon is not a number).
Malformed input (an empty term such as a lone "-", a weight out of range, too many terms, a
term both wanted and unwanted, no wanted term and nothing else to search by) is InvalidInput,
a 422 naming the term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from operations.errors import InvalidInput

MAX_TERMS = 16
MAX_WEIGHT = 10.0
_SPACE = re.compile(r"[ \t\u3000]+")
_WEIGHT = re.compile(r"^(?P<text>.*?)[:：](?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))$")
_MINUS = ("-", "－", "−")


@dataclass(frozen=True)
class Term:
    """One term: its text, its weight, and whether the user wants it or not."""

    text: str
    weight: float = 1.0
    negative: bool = False


@dataclass(frozen=True)
class ParsedQuery:
    """A query as typed terms. `weighted`: some term carried an explicit weight."""

    terms: tuple[Term, ...]
    weighted: bool = False

    @property
    def positives(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if not t.negative)

    @property
    def negatives(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.negative)

    def positive_texts(self) -> list[tuple[str, float]]:
        """(text to encode, weight) of the wanted side: one phrase when no weight was given."""
        pos = self.positives
        if not pos:
            return []
        if not self.weighted:
            return [(" ".join(t.text for t in pos), 1.0)]
        return [(t.text, t.weight) for t in pos]

    @property
    def is_plain(self) -> bool:
        """Only wanted words, no weights: the query is one sentence for the encoder."""
        return not self.weighted and not self.negatives


def _parse_term(raw: str) -> tuple[Term, bool]:
    negative = raw.startswith(_MINUS)
    body = raw[1:] if negative else raw
    weight, weighted = 1.0, False
    m = _WEIGHT.match(body)
    if m is not None:
        weighted = True
        weight = float(m.group("weight"))
        body = m.group("text")
        if not 0.0 < weight <= MAX_WEIGHT:
            raise InvalidInput(f"weight of term {raw!r} must be in (0, {MAX_WEIGHT:g}]", term=raw)
    if not body or body.startswith(_MINUS) or body in (":", "："):
        raise InvalidInput(f"term {raw!r} has no text", term=raw)
    return Term(body, weight, negative), weighted


def parse_query(text: str, *, allow_no_positive: bool = False) -> ParsedQuery:
    """The typed query of `text`. `allow_no_positive`: the caller has an image or positive
    feedback to search by, so a query of unwanted terms only is fine."""
    if not isinstance(text, str):
        raise InvalidInput("query must be a string")
    raws = [r for r in _SPACE.split(text.strip()) if r]
    if not raws and not allow_no_positive:
        raise InvalidInput("query must be a non-empty string")
    if len(raws) > MAX_TERMS:
        raise InvalidInput(f"a query holds at most {MAX_TERMS} terms; this one has {len(raws)}")
    terms: list[Term] = []
    weighted = False
    for raw in raws:
        term, w = _parse_term(raw)
        terms.append(term)
        weighted = weighted or w
    wanted = {t.text for t in terms if not t.negative}
    for t in terms:
        if t.negative and t.text in wanted:
            raise InvalidInput(f"term {t.text!r} is both wanted and unwanted", term=t.text)
    parsed = ParsedQuery(tuple(terms), weighted)
    if not parsed.positives and not allow_no_positive:
        raise InvalidInput(
            "the query needs a wanted term (unwanted -terms alone need an image or positive_ids)"
        )
    return parsed
