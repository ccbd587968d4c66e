"""Duplicate listings: groups of the same picture (pHash) and of near-duplicates (CLIP)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.contract import raises
from app.deps import RunnerDep, SvcDep, WriteAccess
from app.routes.jobs import job_view
from app.routes.views import image_url
from app.schemas import DuplicateGroup, DuplicateMember, DuplicatesRequest, DuplicatesResponse, JobView
from operations.bounds import INT64_MAX, MAX_DUPLICATE_GROUPS_PAGE, MAX_GROUP_MEMBERS
from operations.duplicate_listing import DuplicatesPage, list_duplicates, start_listing
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound
from operations.names import validate_name

router = APIRouter(prefix="/img", tags=["duplicates"])

_PENDING: dict[int | str, dict] = {
    202: {
        "model": JobView,
        "description": "no listing computed yet: the job computing it (started by this request if none "
        "ran); GET again once GET /img/jobs/{job_id} says succeeded",
    }
}


def _view(page: DuplicatesPage) -> DuplicatesResponse:
    run, c = page.run, page.collection
    return DuplicatesResponse(
        collection=c,
        job_id=run.run_id,
        computed_at=run.computed_at,
        images=run.images,
        images_now=page.images_now,
        without_phash=run.without_phash,
        tiers=run.params.get("tiers", []),
        phash_max_distance=run.params.get("phash_max_distance", 0),
        phash_min_cosine=run.params.get("phash_min_cosine", 0.0),
        near_duplicate_threshold=run.params.get("near_duplicate_threshold", 0.0),
        counts=run.counts,
        tier=page.tier,
        total=page.total,
        after=page.after,
        limit=page.limit,
        next_after=page.next_after,
        running_job_id=page.running_job_id,
        groups=[
            DuplicateGroup(
                group=g.group_no,
                tier=g.tier,
                size=g.size,
                members=[
                    DuplicateMember(
                        id=m.image_id, url=image_url(c, m.image_id), distance=m.distance, score=m.score
                    )
                    for m in g.members
                ],
                members_truncated=g.size > len(g.members),
            )
            for g in page.groups
        ],
    )


@router.get(
    "/duplicates/{collection}",
    response_model=DuplicatesResponse,
    summary="Duplicate groups with their tier, a page at a time (202 + job_id while the first is computed)",
    responses={**_PENDING, **raises(BadRequest, NotFound, Conflict, InvalidInput)},
)
def duplicates(
    collection: str,
    svc: SvcDep,
    runner: RunnerDep,
    after: int = Query(0, ge=0, le=INT64_MAX, description="the last group number of the page before"),
    limit: int = Query(20, ge=1, le=MAX_DUPLICATE_GROUPS_PAGE, description="groups per page"),
    tier: Literal["phash", "clip"] | None = Query(None, description="only groups of this tier"),
    max_members: int = Query(50, ge=1, le=MAX_GROUP_MEMBERS, description="members shown per group"),
    job_id: str | None = Query(
        None, pattern=r"^[A-Za-z0-9_-]{1,32}$", description="the listing being paged (409 once replaced)"
    ),
):
    result = list_duplicates(
        svc,
        runner,
        validate_name(collection),
        after=after,
        limit=limit,
        tier=tier,
        max_members=max_members,
        job_id=job_id,
    )
    if isinstance(result, DuplicatesPage):
        return _view(result)
    return JSONResponse(job_view(result).model_dump(), status_code=202)


@router.post(
    "/duplicates/{collection}",
    status_code=202,
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Compute the duplicate listing again (a background job; pHashes missing are computed first)",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput),
)
def compute(
    collection: str, svc: SvcDep, runner: RunnerDep, body: DuplicatesRequest | None = None
) -> JobView:
    params = (body or DuplicatesRequest()).model_dump(exclude_none=True)
    job = start_listing(svc, runner, validate_name(collection), params)
    return job_view(runner.jobs.get(job.id))
