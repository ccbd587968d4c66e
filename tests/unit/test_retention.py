"""Retention (operations/retention.py) on the in-memory vector store and SQLite: rules, whole
time partitions dropped, the boundary period row by row, sources, an interrupted run finished
by a second one with exact counts. The same runs on Milvus Lite and on the servers at 100,000
rows: tests/api/test_retention.py."""

from __future__ import annotations

import calendar
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from operations.context import EncoderRegistry, Services
from operations.domain import (
    IndexSpec,
    SearchFilter,
    VectorAttrs,
    partition_period,
    period_partition,
    period_start,
)
from operations.errors import InvalidInput
from operations.progress import Counter
from operations.retention import RetentionRule, apply_retention
from operations.stores.memory_vector_store import InMemoryVectorStore
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_pool import SqlPool
from tests.stack import fill_images, make_settings, unit_rows

DIM = 8
SOURCES = ("shop", "news", "risk", "ugc")


def month(year: int, m: int, day: int = 1) -> int:
    return calendar.timegm((year, m, day, 0, 0, 0))


def spread(n: int, first: int = 1) -> list[tuple[int, str, int]]:
    """n rows over six months of 2026 (Jan..Jun), sources in turn, hours apart."""
    start, end = month(2026, 1), month(2026, 7)
    step = (end - start) // n
    return [(first + k, SOURCES[k % len(SOURCES)], start + k * step + 7) for k in range(n)]


class SpyStore(InMemoryVectorStore):
    """The in-memory store, counting ids deleted one by one and partitions dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted_by_id = 0
        self.dropped: list[str] = []

    def delete(self, name, ids, *, visible: bool = True) -> None:
        self.deleted_by_id += len(ids)
        super().delete(name, ids, visible=visible)

    def drop_partitions(self, name, partitions) -> None:
        self.dropped += list(partitions)
        c = self._get(name)
        for i in [i for i, p in c["partitions"].items() if p in set(partitions)]:
            super().delete(name, [i])  # not counted as a row-by-row delete


def _services(tmp_path: Path, vectors) -> Services:
    settings = make_settings(tmp_path)
    images = SqlImageStore(SqlPool("", tmp_path / "images.sqlite3", timeout_s=10, size=2))
    encoder = SimpleNamespace(model_name="m", dim=DIM)
    return Services(settings, EncoderRegistry(encoder), vectors, images)  # type: ignore[arg-type]  # retention encodes nothing


@pytest.fixture
def svc(tmp_path):
    s = _services(tmp_path, SpyStore())
    yield s
    s.images.close()


def _collection(svc: Services, rows, time_partitions: str | None = "month", name: str = "c") -> str:
    svc.vectors.create_collection(name, DIM, "m", IndexSpec(time_partitions=time_partitions))
    svc.images.ensure_collection(name)
    fill_images(svc, name, rows, DIM)
    return name


def _left(svc: Services, name: str) -> tuple[int, int]:
    return svc.vectors.count(name), svc.images.count(name)


def test_periods_name_and_bound_every_second() -> None:
    for g in ("day", "month", "year"):
        for ts in (0, month(2026, 1) - 1, month(2026, 1), month(2024, 2, 29) + 5, 253_402_300_799):
            start, end = partition_period(period_partition(ts, g))  # type: ignore[misc]  # a period name
            assert start == period_start(ts, g) <= ts < end
    assert period_partition(month(2026, 3, 15), "month") == "t2026_03"
    assert partition_period("t2026_03") == (month(2026, 3), month(2026, 4))
    assert partition_period("t2024_02_29") == (month(2024, 2, 29), month(2024, 3, 1))
    assert partition_period("t2024") == (month(2024, 1), month(2025, 1))
    for other in ("_default", "t2026_13", "t", "x2026", "t2026_02_30"):
        assert partition_period(other) is None


def test_a_rule_needs_a_condition_and_valid_values() -> None:
    for bad in (
        RetentionRule(),
        RetentionRule(created_before=0),
        RetentionRule(created_before=253_402_300_800),
        RetentionRule(sources=("a b;drop",)),
        RetentionRule(created_before=True),  # type: ignore[arg-type]  # a bool is not a time
    ):
        with pytest.raises(InvalidInput):
            bad.check()
    assert RetentionRule(100).filter() == SearchFilter(created_to=99)
    with pytest.raises(InvalidInput, match="exclude each other"):
        IndexSpec(source_partitions=4, time_partitions="month").check()
    with pytest.raises(InvalidInput, match="time_partitions"):
        IndexSpec(time_partitions="week").check()


def test_by_age_drops_whole_months_and_deletes_the_boundary_month_row_by_row(svc) -> None:
    rows = spread(3000)
    name = _collection(svc, rows)
    cutoff = month(2026, 3, 16)  # Jan and Feb whole, half of March
    expected_left = [r for r in rows if r[2] >= cutoff]
    boundary = [r for r in rows if month(2026, 3) <= r[2] < cutoff]
    progress = Counter()
    report = apply_retention(svc, name, RetentionRule(cutoff), progress)
    assert report.dropped_partitions == svc.vectors.dropped == ["t2026_01", "t2026_02"]
    # Only the boundary month went one by one; the whole months went with their partitions.
    assert svc.vectors.deleted_by_id == len(boundary) > 0
    assert _left(svc, name) == (len(expected_left), len(expected_left))
    assert progress.total == progress.processed == len(rows) - len(expected_left) == report.deleted
    assert svc.vectors.time_partitions(name) == ["t2026_03", "t2026_04", "t2026_05", "t2026_06"]
    assert svc.images.count_matching(name, SearchFilter(created_to=cutoff - 1)) == 0
    # What is left is exactly the rows from the cutoff on, in both stores.
    left_ids = [r[0] for r in expected_left]
    assert svc.vectors.existing_ids(name, left_ids) == set(left_ids)
    assert set(svc.images.get_rows(name, left_ids)) == set(left_ids)
    # Again: nothing more to do.
    again = apply_retention(svc, name, RetentionRule(cutoff), Counter())
    assert (again.deleted, again.dropped_partitions) == (0, [])


def test_with_sources_nothing_is_dropped_whole(svc) -> None:
    rows = spread(2000)
    name = _collection(svc, rows)
    cutoff = month(2026, 4)
    rule = RetentionRule(cutoff, ("news", "ugc"))
    gone = [r for r in rows if r[2] < cutoff and r[1] in ("news", "ugc")]
    report = apply_retention(svc, name, rule, Counter())
    assert svc.vectors.dropped == [] and report.dropped_partitions == []
    assert svc.vectors.deleted_by_id == len(gone) == report.deleted
    assert _left(svc, name) == (len(rows) - len(gone),) * 2
    # By source alone.
    report = apply_retention(svc, name, RetentionRule(sources=("shop",)), Counter())
    assert report.deleted == sum(1 for r in rows if r[1] == "shop")
    left = len(rows) - len(gone) - report.deleted
    assert _left(svc, name) == (left, left)


def test_without_time_partitions_every_row_goes_one_by_one(svc) -> None:
    rows = spread(1500)
    name = _collection(svc, rows, time_partitions=None)
    cutoff = month(2026, 3, 16)
    gone = sum(1 for r in rows if r[2] < cutoff)
    report = apply_retention(svc, name, RetentionRule(cutoff), Counter())
    assert svc.vectors.dropped == [] and svc.vectors.deleted_by_id == gone == report.deleted
    assert _left(svc, name) == (len(rows) - gone,) * 2


class CancelAfter(Counter):
    """Asks to stop once `n` images were counted (what a cancel or a stopping replica does)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def advance(self, processed: int = 0) -> None:
        super().advance(processed)
        if self.processed >= self.n:
            self.cancel()


@pytest.mark.parametrize(
    ("rule", "stop_after"),
    [
        (RetentionRule(month(2026, 3, 16)), 500),  # asked to stop inside the dropped months
        (RetentionRule(month(2026, 3, 16)), 1400),  # ... inside the boundary month
        (RetentionRule(sources=("shop", "news")), 500),  # ... half way through a source
    ],
    ids=["in-dropped-months", "in-boundary-month", "by-source"],
)
def test_an_interrupted_run_is_finished_by_the_next_with_exact_counts(svc, monkeypatch, rule, stop_after):
    monkeypatch.setattr("operations.delete.CHUNK", 100)  # many chunks from a few thousand rows
    rows = spread(4000)
    name = _collection(svc, rows)
    matched = svc.images.count_matching(name, rule.filter())
    first = apply_retention(svc, name, rule, CancelAfter(stop_after), matched)
    assert first.cancelled and 0 < first.deleted < matched
    vectors, images = _left(svc, name)
    assert vectors == images > len(rows) - matched  # stopped half way, both stores alike
    if rule.created_before:
        # A cancel never leaves SQL rows whose partitions are dropped: every Jan/Feb row is gone.
        assert svc.images.count_matching(name, SearchFilter(created_to=month(2026, 3) - 1)) == 0
    second = Counter()
    report = apply_retention(svc, name, rule, second, matched)
    assert not report.cancelled
    assert report.earlier == first.deleted and report.deleted + report.earlier == matched
    assert second.total == second.processed == matched
    assert f"deleted {matched} images ({first.deleted} of them by an interrupted run)" in report.message()
    left = len(rows) - matched
    assert _left(svc, name) == (left, left)
    assert svc.images.count_matching(name, rule.filter()) == 0


def test_a_row_moved_to_another_period_keeps_one_copy() -> None:
    store = InMemoryVectorStore()
    store.create_collection("c", DIM, "m", IndexSpec(time_partitions="day"))
    vec = unit_rows(1, DIM, 0)
    store.upsert("c", [1], vec, [VectorAttrs("a", (), month(2026, 1))])
    store.upsert("c", [1], vec, [VectorAttrs("a", (), month(2026, 2))])
    assert store.time_partitions("c") == ["t2026_02_01"] and store.count("c") == 1
    store.drop_partitions("c", ["t2026_01_01"])
    assert store.count("c") == 1


def test_the_command_line_runs_retention_and_a_second_run_finds_nothing(tmp_path, monkeypatch, capsys):
    from scripts import cli

    repo = Path(__file__).resolve().parents[2]
    env = {
        "MODEL_NAME": "demo-tiny",
        "MODEL_CHECKPOINT": str(repo / "models" / "demo" / "demo-tiny.pt"),
        "MODEL_ARCH": str(repo / "config" / "model_configs" / "demo-tiny.json"),
        "MILVUS_URI": str(tmp_path / "milvus.db"),
        "SQLITE_PATH": str(tmp_path / "images.sqlite3"),
        "TIME_PARTITIONS": "month",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the repository is read
    from config.settings import load_settings
    from operations.factory import build_services

    rows = spread(600)
    svc = build_services(load_settings(), lazy_model=True)
    svc.vectors.create_collection("c", DIM, "demo-tiny", svc.default_index())
    svc.images.ensure_collection("c")
    fill_images(svc, "c", rows, DIM)
    svc.vectors.close()
    svc.images.close()
    assert cli.main(["retention", "c", "--created-before", "2026-03-01", "--source", "shop"]) == 0
    gone = sum(1 for r in rows if r[2] < month(2026, 3) and r[1] == "shop")
    assert f"deleted {gone} images" in capsys.readouterr().out
    assert cli.main(["retention", "c"]) == 2  # no condition: the error, not a traceback
    assert "needs created_before and/or sources" in capsys.readouterr().err
    assert cli.main(["retention", "c", "--created-before", "2026-03-01"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {sum(1 for r in rows if r[2] < month(2026, 3)) - gone} images" in out
    assert "dropped 2 time partitions whole (t2026_01, t2026_02)" in out
    assert cli.main(["count", "c"]) == 0
    left = sum(1 for r in rows if r[2] >= month(2026, 3))
    assert json.loads(capsys.readouterr().out) == {"vectors": left, "images": left}
