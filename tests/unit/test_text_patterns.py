"""OCR scan patterns (built-ins, validation, the timeout) and reciprocal rank fusion."""

from __future__ import annotations

import time

import pytest

from operations.errors import InvalidInput
from operations.fusion import rrf
from operations.text_patterns import compile_patterns, find_in_line


def matched(spec: dict, line: str) -> list[str]:
    found, timed_out = find_in_line(compile_patterns([spec]), line, 0.5)
    assert timed_out == 0
    return [m.matched for m in found]


@pytest.mark.parametrize(
    "line,want",
    [
        ("电话13812345678", ["13812345678"]),
        ("联系 +86 139-1234-5678 王", ["+86 139-1234-5678"]),
        ("订单号 123138123456789", []),  # inside a longer number
        ("12812345678", []),  # not a mobile prefix
    ],
)
def test_phone_cn(line, want):
    assert matched({"builtin": "phone_cn"}, line) == want


def test_wechat_qq_url():
    assert matched({"builtin": "wechat"}, "微信号：shop_abc123") == ["微信号：shop_abc123"]
    assert matched({"builtin": "wechat"}, "加VX abcdefg") == ["VX abcdefg"]
    assert matched({"builtin": "wechat"}, "微信 12345") == []  # an id starts with a letter
    assert matched({"builtin": "qq"}, "QQ号 123456789") == ["QQ号 123456789"]
    assert matched({"builtin": "qq"}, "qq 0123") == []
    assert matched({"builtin": "url"}, "官网 www.example.com 见") == ["www.example.com"]
    assert matched({"builtin": "url"}, "访问 https://a.b/c?d=1") == ["https://a.b/c?d=1"]
    assert matched({"builtin": "url"}, "shop.taobao.com/item") == ["shop.taobao.com/item"]
    assert matched({"builtin": "url"}, "价格 12.50 元") == []


@pytest.mark.parametrize(
    "spec",
    [
        {"regex": "("},
        {"regex": ""},
        {"regex": "x" * 201},
        {"regex": "a?"},
        {"builtin": "nope"},
        {},
        {"regex": "a", "builtin": "qq"},
    ],
)
def test_bad_patterns_are_refused(spec):
    with pytest.raises(InvalidInput):
        compile_patterns([spec])


def test_too_many_patterns():
    with pytest.raises(InvalidInput):
        compile_patterns([{"builtin": "qq"}] * 21)


def test_catastrophic_backtracking_is_cut_by_the_timeout():
    patterns = compile_patterns([{"regex": "(.*a){20}b"}, {"builtin": "phone_cn"}])
    started = time.perf_counter()
    found, timed_out = find_in_line(patterns, "a" * 900 + " 13812345678", 0.05)
    assert timed_out == 1
    assert [m.matched for m in found] == ["13812345678"]  # the other pattern still ran
    assert time.perf_counter() - started < 2.0


def test_rrf_adds_both_rankings_and_breaks_ties_by_id():
    fused = rrf({"visual": [1, 2, 3], "text": [3, 9]}, {"visual": 1.0, "text": 1.0}, 60)
    assert [f.image_id for f in fused] == [3, 1, 9, 2]
    assert fused[0].signals == ["visual", "text"]
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    heavier = rrf({"visual": [1], "text": [2]}, {"visual": 1.0, "text": 2.0}, 60)
    assert [f.image_id for f in heavier] == [2, 1]
    assert [f.image_id for f in rrf({"visual": [4], "text": [7]}, {}, 60)] == [7, 4]
