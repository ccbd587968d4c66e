"""Patterns a risk scan looks for in the text read from images: built-ins and user regexes.

A user's regular expression is untrusted input, so it is bounded three ways:
- its length (MAX_PATTERN_CHARS) and a compile check (a bad one is a 422 naming it);
- the `regex` package's matcher, run with a timeout on every search
  (OCR_REGEX_TIMEOUT_MS): a pattern that backtracks catastrophically on some
  text gives up on that text, is counted as timed out, and the scan goes on;
- the text it runs on: one line of OCR text, cut to MAX_TEXT_CHARS.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

from operations.errors import InvalidInput

MAX_PATTERNS = 20
MAX_PATTERN_CHARS = 200
MAX_TEXT_CHARS = 1000
# Matches reported per pattern and line (a line full of numbers stays a few rows).
MAX_MATCHES_PER_LINE = 5

# Built-ins: what risk control hunts in listing photos. Written for OCR output,
# where separators may be spaces or dashes and labels full- or half-width.
BUILTINS: dict[str, str] = {
    # mainland China mobile numbers: 1[3-9]x xxxx xxxx, optional +86, optional - or space groups
    "phone_cn": r"(?<![0-9])(?:\+?86[- ]?)?1[3-9][0-9](?:[- ]?[0-9]{4}){2}(?![0-9])",
    # WeChat ids after a label: 6-20 characters, a letter first (WeChat's own rule)
    "wechat": r"(?i)(?:微信号?|威信|薇信|v信|vx|wx|wechat|weixin)\s*[:：]?\s*([a-z][-_a-z0-9]{5,19})",
    # QQ numbers after a label: 5-12 digits, no leading zero
    "qq": r"(?i)(?:qq|扣扣|企鹅)\s*号?\s*[:：]?\s*([1-9][0-9]{4,11})(?![0-9])",
    # web addresses: a scheme or www., or a bare domain on a common suffix
    "url": r"(?i)(?:https?://|www\.)[^\s，。、；]+|(?<![a-z0-9.@-])(?:[a-z0-9-]+\.)+"
    r"(?:com|cn|net|org|top|xyz|cc|vip|shop|info|io|me)(?:/[^\s，。、；]*)?(?![a-z0-9])",
}


@dataclass(frozen=True)
class TextPattern:
    """A checked pattern: its label (builtin:NAME or regex:SOURCE) and compiled form."""

    label: str
    compiled: regex.Pattern


def compile_patterns(specs: list[dict]) -> list[TextPattern]:
    """Check and compile `[{"builtin": name} | {"regex": source}]`; InvalidInput names the bad one."""
    if len(specs) > MAX_PATTERNS:
        raise InvalidInput(f"at most {MAX_PATTERNS} OCR patterns")
    out: list[TextPattern] = []
    for i, spec in enumerate(specs):
        builtin, source = spec.get("builtin"), spec.get("regex")
        if (builtin is None) == (source is None):
            raise InvalidInput(f"ocr_patterns[{i}]: give either builtin or regex")
        if builtin is not None:
            if builtin not in BUILTINS:
                raise InvalidInput(
                    f"ocr_patterns[{i}]: unknown builtin {builtin!r} (one of {sorted(BUILTINS)})"
                )
            out.append(TextPattern(f"builtin:{builtin}", regex.compile(BUILTINS[builtin])))
            continue
        if not isinstance(source, str) or not source or len(source) > MAX_PATTERN_CHARS:
            raise InvalidInput(f"ocr_patterns[{i}]: a regex is 1..{MAX_PATTERN_CHARS} characters")
        try:
            compiled = regex.compile(source)
        except (regex.error, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidInput(f"ocr_patterns[{i}]: not a valid regular expression ({exc})") from None
        if compiled.search("", timeout=0.05) is not None:
            raise InvalidInput(f"ocr_patterns[{i}]: the regex matches empty text; it would match every image")
        out.append(TextPattern(f"regex:{source}", compiled))
    return out


@dataclass(frozen=True)
class PatternMatch:
    """One match: the pattern's index and the matched text."""

    pattern_index: int
    matched: str


def find_in_line(patterns: list[TextPattern], line: str, timeout_s: float) -> tuple[list[PatternMatch], int]:
    """The matches of every pattern in one line, and how many patterns timed out on it."""
    text = line[:MAX_TEXT_CHARS]
    found: list[PatternMatch] = []
    timed_out = 0
    for i, p in enumerate(patterns):
        try:
            for n, m in enumerate(p.compiled.finditer(text, timeout=timeout_s)):
                if n >= MAX_MATCHES_PER_LINE:
                    break
                if m.group(0):
                    found.append(PatternMatch(i, m.group(0)))
        except TimeoutError:
            timed_out += 1
    return found, timed_out
