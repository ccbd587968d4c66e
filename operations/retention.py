"""Retention: delete the images of a collection by age and/or source, as a background job.

A rule has `created_before` (unix seconds: images with created_at < it) and/or `sources`
(images of any of them); with both, an image must match both. Every image is removed from
every store in the order of `operations.delete.delete_chunks`: its vector first (no search
returns an id whose row is gone), then its SQL row with its pHash, then its OCR record.
Duplicate listings are not rewritten, as after any delete: a listing names the images it
found when it was computed, deleted ones too, until it is computed again
(POST /img/duplicates/{collection}).

On a collection partitioned by time (IndexSpec.time_partitions) a rule by age alone drops
every time partition whose whole period ends at or before `created_before`, at once, instead
of deleting its vectors one by one; the SQL rows of those periods (created_at before the start
of the period that holds `created_before`) are then deleted in chunks by created_at, without a
vector delete each. The rows of the boundary period (from its start to `created_before`) are
deleted one by one. With a `sources` condition nothing is dropped whole: a time partition holds
every source, so each matching row is deleted one by one.

Interrupting is safe, at any point, and the job is resumed (or taken over by another replica)
from the top: each run deletes what still matches, so a second run after a kill finishes the
work and deleting again is harmless. A dropped partition whose SQL rows are not all deleted
yet is finished first, even by a run that is asked to cancel, so a cancelled job never leaves
rows without their vectors. The counts survive a restart: the job records how many images
matched when it was created, and a later run counts those already gone as processed.

A write while retention runs of an image dated in a period being dropped (a load of old data)
re-creates that period's partition; the rows' vectors are then deleted by id too. An image
written after its SQL row was deleted but before the partition check can be left with its
vector alone; do not load data older than the cutoff while retention runs on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from operations.bounds import MAX_TIMESTAMP
from operations.context import Services
from operations.delete import delete_chunks, matching_chunks
from operations.domain import MAX_FILTER_VALUES, SearchFilter, check_int64, partition_period, period_start
from operations.errors import Conflict, InvalidInput
from operations.names import validate_name
from operations.progress import Progress

if TYPE_CHECKING:
    from operations.jobs import JobRunner
    from operations.stores.job_store import Job

KIND = "retention"
_start_lock = threading.Lock()


@dataclass(frozen=True)
class RetentionRule:
    """What to delete: images created before `created_before` and/or of one of `sources`."""

    created_before: int | None = None
    sources: tuple[str, ...] = ()

    def check(self) -> RetentionRule:
        """Raise InvalidInput unless the rule has a condition and every value is valid."""
        if self.created_before is None and not self.sources:
            raise InvalidInput(
                "retention needs created_before and/or sources; drop the collection to empty it"
            )
        if self.created_before is not None:
            check_int64(self.created_before, "created_before")
            if not 1 <= self.created_before <= MAX_TIMESTAMP:
                raise InvalidInput(f"created_before must be unix seconds in 1..{MAX_TIMESTAMP}")
        if len(self.sources) > MAX_FILTER_VALUES:
            raise InvalidInput(f"at most {MAX_FILTER_VALUES} sources in one retention rule")
        self.filter().check()
        return self

    def filter(self) -> SearchFilter:
        """The images the rule deletes, as a filter (created_at is whole seconds)."""
        before = self.created_before
        return SearchFilter(sources=tuple(self.sources), created_to=None if before is None else before - 1)

    def params(self) -> dict:
        return {"created_before": self.created_before, "sources": list(self.sources)}

    @classmethod
    def from_params(cls, params: dict) -> RetentionRule:
        return cls(params.get("created_before"), tuple(params.get("sources") or ()))


@dataclass
class RetentionReport:
    deleted: int  # images deleted by this run
    earlier: int  # images of the job's rule deleted before this run (by an interrupted run)
    dropped_partitions: list[str] = field(default_factory=list)
    cancelled: bool = False

    def message(self) -> str:
        parts = [f"deleted {self.deleted + self.earlier} images"]
        if self.earlier:
            parts[0] += f" ({self.earlier} of them by an interrupted run)"
        if self.dropped_partitions:
            parts.append(
                f"dropped {len(self.dropped_partitions)} time partitions whole "
                f"({', '.join(self.dropped_partitions)})"
            )
        text = "; ".join(parts)
        return f"cancelled: {text} before it stopped" if self.cancelled else text


def whole_periods_end(svc: Services, collection: str, rule: RetentionRule) -> int | None:
    """The time before which every image lies in a time partition that the rule drops whole
    (the start of the period holding `created_before`), or None when nothing is dropped whole:
    the collection has no time partitions, or the rule names sources."""
    granularity = svc.vectors.describe_meta(collection).index.time_partitions
    if not granularity or rule.sources or rule.created_before is None:
        return None
    return period_start(rule.created_before, granularity)


def apply_retention(
    svc: Services, collection: str, rule: RetentionRule, progress: Progress, matched: int | None = None
) -> RetentionReport:
    """Delete what `rule` matches in `collection` (see the module docstring).

    matched: how many images matched when the job was created; the images of those gone
    before this run (an interrupted run deleted them) are counted as processed at once.
    """
    rule.check()
    validate_name(collection)
    svc.require_collection(collection)
    flt = rule.filter()
    remaining = svc.images.count_matching(collection, flt)
    earlier = max(0, matched - remaining) if matched is not None else 0
    progress.set_total(earlier + remaining)
    if earlier:
        progress.advance(earlier)
    report = RetentionReport(0, earlier)
    whole = whole_periods_end(svc, collection, rule)
    if whole is not None and not progress.cancelled():

        def dropped_here() -> list[str]:
            return [
                p
                for p in svc.vectors.time_partitions(collection)
                if (period := partition_period(p)) is not None and period[1] <= whole
            ]

        report.dropped_partitions = dropped_here()
        svc.vectors.drop_partitions(collection, report.dropped_partitions)
        # The SQL rows of the dropped periods go now, cancel or not (their vectors are gone).
        # A partition of those periods that exists again was re-created by a write since.
        report.deleted += delete_chunks(
            svc,
            collection,
            matching_chunks(svc, collection, SearchFilter(created_to=whole - 1)),
            progress,
            vectors_left=lambda: bool(dropped_here()),
            cancellable=False,
        )
    if not progress.cancelled():
        report.deleted += delete_chunks(svc, collection, matching_chunks(svc, collection, flt), progress)
    report.cancelled = progress.cancelled()
    progress.flush()  # the job row shows the final counts
    return report


def start_retention(svc: Services, runner: JobRunner, collection: str, rule: RetentionRule) -> Job:
    """Start a retention job (409 while one runs on `collection`); it records how many images
    match now, so its counts stay right across an interruption."""
    rule.check()
    validate_name(collection)
    svc.require_collection(collection)
    with _start_lock:
        running = runner.active(KIND, collection)
        if running is not None:
            raise Conflict(
                f"a retention job runs on {collection!r} (job {running}): wait for it, or cancel it "
                "(POST /img/jobs/{id}/cancel)",
                job=running,
            )
        matched = svc.images.count_matching(collection, rule.filter())
        return runner.submit(KIND, collection, {**rule.params(), "matched": matched})
