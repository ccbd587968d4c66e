"""bench_thp's reading of the host's THP mode and its order of turns (the bench itself needs root
and the real servers; it is run by hand, bench/README.md)."""

from __future__ import annotations

from collections import Counter

from bench._common import thp_mode
from bench.bench_thp import MODES, turn_order


def test_the_selected_mode_is_the_bracketed_one(tmp_path):
    f = tmp_path / "enabled"
    for text, mode in (
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
    ):
        f.write_text(text)
        assert thp_mode(f) == mode


def test_no_thp_reads_as_none(tmp_path):
    assert thp_mode(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("always\n")
    assert thp_mode(tmp_path / "odd") is None


def test_each_mode_is_as_often_first_as_second():
    order = turn_order(4)
    assert Counter(order) == dict.fromkeys(MODES, 4)
    rounds = [tuple(order[i : i + 2]) for i in range(0, len(order), 2)]
    assert Counter(r[0] for r in rounds) == dict.fromkeys(MODES, 2)
    assert all(set(r) == set(MODES) for r in rounds)
