"""Reading a collection's duplicate listing, and starting the job that computes it.

A listing is computed by a background job (operations.duplicate_groups; kind "duplicates")
and stored; reading it is then a page of stored groups by group number (a cursor that stays
valid while other pages are read, unlike an offset over a listing that could change).

What a reader gets (GET /img/duplicates/{collection}, `list_duplicates`):
- the newest finished listing: a page of it, and the id of a newer job computing the next
  listing if one runs;
- no finished listing yet: the job computing it, started now if none runs (a first read
  starts the work; later reads find it and, once it succeeded, its groups);
- `job_id` names the listing being paged through: if a newer one has replaced it, the pages
  would not fit together, so that is a conflict (start again from after=0).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from operations.bounds import check_duplicates_page
from operations.context import Services
from operations.duplicate_groups import LISTING_TIERS, check_tiers, duplicate_store
from operations.errors import Conflict, InvalidInput
from operations.jobs import JobRunner
from operations.stores.job_store import Job
from operations.stores.sql_duplicate_store import DuplicateRun, StoredGroup

KIND = "duplicates"
_start_lock = threading.Lock()  # two first reads at once start one job


@dataclass
class DuplicatesPage:
    collection: str
    run: DuplicateRun
    images_now: int
    tier: str | None
    after: int
    limit: int
    total: int  # groups of the listing (of `tier` when given)
    groups: list[StoredGroup] = field(default_factory=list)
    next_after: int | None = None  # the cursor of the next page; None on the last
    running_job_id: str | None = None  # a newer listing being computed


def read_page(
    svc: Services,
    collection: str,
    run: DuplicateRun,
    *,
    after: int = 0,
    limit: int = 20,
    tier: str | None = None,
    max_members: int = 50,
) -> DuplicatesPage:
    """One page of the listing `run`: groups numbered above `after`, at most `limit`."""
    check_duplicates_page(after, limit, max_members)
    if tier is not None and tier not in LISTING_TIERS:
        raise InvalidInput(f"tier is one of {', '.join(LISTING_TIERS)}")
    store = duplicate_store(svc)
    groups = store.groups_after(collection, run.run_id, after, limit + 1, tier, max_members)
    more = len(groups) > limit
    groups = groups[:limit]
    return DuplicatesPage(
        collection,
        run,
        svc.images.count(collection),
        tier,
        after,
        limit,
        store.count_groups(collection, run.run_id, tier),
        groups,
        groups[-1].group_no if more else None,
    )


def latest_listing(svc: Services, collection: str) -> DuplicateRun | None:
    """The newest finished listing of `collection`, None if there is none yet."""
    svc.require_collection(collection)
    return duplicate_store(svc).latest_run(collection)


def start_listing(svc: Services, runner: JobRunner, collection: str, params: dict) -> Job:
    """Start computing a listing (409 while one is computed for this collection)."""
    svc.require_collection(collection)
    check_tiers(params.get("tiers", LISTING_TIERS))
    with _start_lock:
        running = runner.active(KIND, collection)
        if running is not None:
            raise Conflict(
                f"a duplicate listing of {collection!r} is being computed (job {running}): "
                "wait for it, or cancel it (POST /img/jobs/{id}/cancel)",
                job=running,
            )
        return runner.submit(KIND, collection, params)


def list_duplicates(
    svc: Services,
    runner: JobRunner,
    collection: str,
    *,
    after: int = 0,
    limit: int = 20,
    tier: str | None = None,
    max_members: int = 50,
    job_id: str | None = None,
) -> DuplicatesPage | Job:
    """A page of the newest listing, or the job computing the first one (started if needed)."""
    check_duplicates_page(after, limit, max_members)
    run = latest_listing(svc, collection)
    active = runner.active(KIND, collection)
    if job_id is not None and (run is None or run.run_id != job_id):
        if job_id == active:
            return runner.jobs.get(job_id)
        current = run.run_id if run else None
        raise Conflict(
            f"listing {job_id} is not the current listing of {collection!r} (current: {current}); "
            "read again from after=0 without job_id",
            current=current,
        )
    if run is None:
        with _start_lock:
            active = runner.active(KIND, collection)
            if active is None:
                active = runner.submit(KIND, collection, {}).id
        return runner.jobs.get(active)
    page = read_page(svc, collection, run, after=after, limit=limit, tier=tier, max_members=max_members)
    page.running_job_id = active
    return page
