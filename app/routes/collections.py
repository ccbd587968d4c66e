"""Collections: list, create, describe, count, drop."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import raises
from app.deps import RunnerDep, SvcDep, WriteAccess
from app.routes.jobs import job_view
from app.schemas import (
    CollectionCreate,
    CollectionView,
    JobView,
    RebuildRequest,
    RetentionRequest,
    SwitchRequest,
    SwitchView,
)
from operations.collections import create_collection, describe_collection, drop_collection, list_collections
from operations.context import resolve_under
from operations.domain import IndexSpec
from operations.errors import BadRequest, Conflict, DependencyUnavailable, InvalidInput, NotFound
from operations.names import validate_name
from operations.ocr import enable_ocr
from operations.rebuild import rebuild_params, switch_to
from operations.retention import RetentionRule, start_retention

router = APIRouter(prefix="/img", tags=["collections"])


def _view(summary) -> CollectionView:
    return CollectionView(**summary.__dict__)


@router.get(
    "/collections", response_model=list[CollectionView], summary="Collections with model, index and counts"
)
def list_all(svc: SvcDep) -> list[CollectionView]:
    return [_view(c) for c in list_collections(svc)]


@router.post(
    "/collections",
    response_model=CollectionView,
    status_code=201,
    dependencies=[WriteAccess],
    summary="Create a collection for a model with a chosen index",
    responses=raises(BadRequest, Conflict, InvalidInput),
)
def create(body: CollectionCreate, svc: SvcDep) -> CollectionView:
    default = svc.default_index()
    # One partitioning per collection: the request's choice of one turns the server's default
    # of the other off; naming both is a 422 (IndexSpec.check).
    time_partitions = (
        (None if body.source_partitions else default.time_partitions)
        if body.time_partitions is None
        else None
        if body.time_partitions == "none"
        else body.time_partitions
    )
    source_partitions = (
        (0 if body.time_partitions not in (None, "none") else default.source_partitions)
        if body.source_partitions is None
        else body.source_partitions
    )
    index = IndexSpec(
        body.index_type or default.type,
        dict(body.index_params) if body.index_type else default.build_params,
        dict(body.search_params) if body.index_type else default.search_params,
        source_partitions,
        time_partitions=time_partitions,
    )
    return _view(create_collection(svc, body.name, body.model, index, body.ocr, body.expected_vectors or 0))


@router.get(
    "/collections/{name}",
    response_model=CollectionView,
    summary="One collection",
    responses=raises(BadRequest, NotFound),
)
def describe(name: str, svc: SvcDep) -> CollectionView:
    return _view(describe_collection(svc, name))


@router.get(
    "/collections/{name}/count",
    summary="How many images a collection holds",
    responses=raises(BadRequest, NotFound),
)
def count(name: str, svc: SvcDep) -> dict:
    summary = describe_collection(svc, name)
    return {"collection": name, "vectors": summary.vectors, "images": summary.images}


@router.delete(
    "/collections/{name}",
    dependencies=[WriteAccess],
    summary="Drop a collection and its images (409 while a job of any replica works on it, or while "
    "an alias points at it); dropping an alias drops it and the collection it points at",
    responses=raises(BadRequest, NotFound, Conflict),
)
def drop(name: str, svc: SvcDep, runner: RunnerDep) -> dict:
    # A job writing to a collection that is dropped under it broke the stores'
    # files (Milvus Lite: "WAL already closed", a 503) and could leave half a
    # collection behind: the job is cancelled first, or finishes.
    if running := runner.running_on(validate_name(name)):
        raise Conflict(
            f"collection {name!r} has running jobs ({', '.join(running)}): "
            "cancel them (POST /img/jobs/{id}/cancel) or wait, then drop it",
            jobs=running,
        )
    # A version a rebuild is writing (its job runs on the name clients use).
    if "__v" in name and (active := runner.active("rebuild", name.rsplit("__v", 1)[0])):
        if runner.jobs.get(active, 0).params.get("target") == name:
            raise Conflict(f"a rebuild (job {active}) is writing {name!r}: cancel it first", jobs=[active])
    drop_collection(svc, name)
    return {"dropped": name}


@router.get("/models", summary="Models this server can encode with")
def models(svc: SvcDep) -> dict:
    return {"default": svc.encoder.model_name, "dim": svc.encoder.dim, "available": svc.encoders.names()}


@router.post(
    "/collections/{name}/ocr",
    status_code=202,
    dependencies=[WriteAccess],
    summary="Turn OCR on for a collection and read its stored images (background job with progress)",
    responses=raises(BadRequest, NotFound, Conflict),
)
def ocr_job(name: str, svc: SvcDep, runner: RunnerDep) -> dict:
    validate_name(name)
    enable_ocr(svc, name)
    job = runner.submit("ocr", name, {})
    return {"collection": name, "ocr": True, "job_id": job.id}


@router.post(
    "/collections/{name}/phash",
    status_code=202,
    dependencies=[WriteAccess],
    summary="Compute the pHash of stored images that have none (a dataset load's), as a background job",
    responses=raises(BadRequest, NotFound, Conflict),
)
def phash_job(name: str, svc: SvcDep, runner: RunnerDep) -> dict:
    validate_name(name)
    svc.require_collection(name)
    job = runner.submit("phash", name, {})
    return {"collection": name, "job_id": job.id}


@router.post(
    "/collections/{name}/rebuild",
    status_code=202,
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Rebuild a collection into a new version with another model or index (background job); "
    "searches and writes go on meanwhile",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput),
)
def rebuild(name: str, body: RebuildRequest, svc: SvcDep, runner: RunnerDep) -> JobView:
    validate_name(name)
    if active := runner.active("rebuild", name):
        raise Conflict(f"a rebuild of {name!r} is already running (job {active})", job_id=active)
    index = None
    if body.index_type:
        index = IndexSpec(body.index_type, dict(body.index_params), dict(body.search_params))
    elif body.index_params or body.search_params:
        raise InvalidInput("index_params and search_params need index_type")
    dataset = None
    if body.dataset is not None:
        path = resolve_under(svc.settings.data_root, body.dataset)
        if not path.is_dir():
            raise BadRequest(f"dataset {body.dataset!r} does not exist under the data root")
        dataset = str(path)
    params = rebuild_params(svc, name, body.model, index, dataset, body.split, body.min_recall, body.switch)
    job = runner.submit("rebuild", name, params)
    return job_view(runner.jobs.get(job.id))


@router.post(
    "/collections/{name}/switch",
    response_model=SwitchView,
    dependencies=[WriteAccess],
    summary="Point a name at another version of it (a rebuild's): searches move at once; writes are "
    "held off (503 Retry-After) for the few seconds the last ones take to copy",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput, DependencyUnavailable),
)
def switch(name: str, body: SwitchRequest, svc: SvcDep, runner: RunnerDep) -> SwitchView:
    validate_name(name)
    validate_name(body.to)
    if active := runner.active("rebuild", name):
        raise Conflict(f"a rebuild of {name!r} is running (job {active}): switch once it ends", job_id=active)
    return SwitchView.model_validate(switch_to(svc, name, body.to))


@router.post(
    "/collections/{name}/retention",
    status_code=202,
    response_model=JobView,
    dependencies=[WriteAccess],
    summary="Delete images by age (created_before) and/or source, as a background job with progress "
    "(409 while one runs on the collection)",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput),
)
def retention(name: str, body: RetentionRequest, svc: SvcDep, runner: RunnerDep) -> JobView:
    rule = RetentionRule(body.created_before, tuple(body.sources))
    job = start_retention(svc, runner, validate_name(name), rule)
    return job_view(runner.jobs.get(job.id))
