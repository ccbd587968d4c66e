"""Loads and background jobs."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.contract import raises
from app.deps import RunnerDep, SvcDep, WriteAccess, collection_name
from app.schemas import CalibrateRequest, JobView, LoadRequest
from operations.context import resolve_under
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound
from operations.stores.job_store import Job

router = APIRouter(prefix="/img", tags=["jobs"])


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        job_id=job.id,
        kind=job.kind,
        collection=job.collection,
        state=job.state,
        processed=job.processed,
        failed=job.failed,
        total=job.total,
        rate_per_s=round(job.rate, 2) if job.rate else None,
        eta_s=round(job.eta_s, 1) if job.eta_s is not None else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        message=job.message,
        params={k: v for k, v in job.params.items() if k != "meta"},
        failures=job.failures,
        owner=job.owner,
    )


@router.post(
    "/load",
    status_code=202,
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Load a dataset split (Chinese-CLIP layout, under DATA_ROOT) as a background job",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput),
)
def load(body: LoadRequest, svc: SvcDep, runner: RunnerDep) -> JobView:
    collection = collection_name(svc, body.collection)
    dataset_dir = resolve_under(svc.settings.data_root, body.dataset)
    if not dataset_dir.is_dir():
        raise BadRequest(f"dataset {body.dataset!r} does not exist under the data root")
    job = runner.submit(
        "load", collection, {"dataset_dir": str(dataset_dir), "split": body.split, "source": body.source}
    )
    return job_view(runner.jobs.get(job.id))


@router.post(
    "/calibrate",
    status_code=202,
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Calibrate a model's relevance on a labelled split (texts with image_ids), as a job",
    responses=raises(BadRequest, NotFound, Conflict),
)
def calibrate(body: CalibrateRequest, svc: SvcDep, runner: RunnerDep) -> JobView:
    dataset_dir = resolve_under(svc.settings.data_root, body.dataset)
    if not dataset_dir.is_dir():
        raise BadRequest(f"dataset {body.dataset!r} does not exist under the data root")
    if body.model is not None:
        svc.encoders.get(body.model)  # 409 now for a model the server does not run
        collection = (
            collection_name(svc, body.collection) if body.collection else svc.settings.default_collection
        )
        target = {"model": body.model}
    else:
        collection = collection_name(svc, body.collection)
        svc.require_collection(collection)
        target = {"collection": collection}
    job = runner.submit(
        "calibrate", collection, {"dataset_dir": str(dataset_dir), "split": body.split, **target}
    )
    return job_view(runner.jobs.get(job.id))


@router.get("/jobs", response_model=list[JobView], summary="Recent jobs")
def list_jobs(runner: RunnerDep, limit: int = Query(50, ge=1, le=500)) -> list[JobView]:
    return [job_view(j) for j in runner.jobs.list(limit)]


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="A job's state, counts, rate, ETA and failed items",
    responses=raises(NotFound),
)
def get_job(job_id: str, runner: RunnerDep, failures: int = Query(100, ge=0, le=10_000)) -> JobView:
    return job_view(runner.jobs.get(job_id, failures))


@router.post(
    "/jobs/{job_id}/resume",
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Resume an interrupted or failed job",
    responses=raises(NotFound, Conflict),
)
def resume(job_id: str, runner: RunnerDep) -> JobView:
    return job_view(runner.resume(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    dependencies=[WriteAccess],
    summary="Ask a queued or running job to stop, on whichever replica runs it",
    responses=raises(NotFound, Conflict),
)
def cancel(job_id: str, runner: RunnerDep, svc: SvcDep) -> dict:
    runner.cancel(job_id)
    return {"job_id": job_id, "cancelling": True}
