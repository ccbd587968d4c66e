"""以文搜图 and 以图搜图.

The routes are async: they await the encoder and vector-search batchers
(operations.serving), so a request waiting for its batch holds no worker
thread; the blocking stages (store reads, decoding an upload) run on the
worker pool, never on the event loop.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile

from app.deps import SvcDep, collection_name
from app.routes.uploads import read_upload, split_list
from app.routes.views import search_response
from app.schemas import SearchResponse, TextSearchRequest
from operations.domain import SearchFilter
from operations.search import MAX_SEARCH_TOP_K, search_image_async, search_text_async

router = APIRouter(prefix="/img", tags=["search"])


@router.post("/search", response_model=SearchResponse, summary="Search images by a Chinese sentence")
async def text_search(body: TextSearchRequest, svc: SvcDep) -> SearchResponse:
    flt = body.filters.to_filter() if body.filters else None
    outcome = await search_text_async(
        svc,
        collection_name(svc, body.collection),
        body.query,
        body.top_k,
        flt,
        body.min_score,
        body.with_image,
    )
    return search_response(outcome)


@router.post(
    "/search/image",
    response_model=SearchResponse,
    summary="Search images similar to an uploaded image, or to a stored image by id",
)
async def image_search(
    svc: SvcDep,
    file: Annotated[UploadFile | None, File(description="the query photo")] = None,
    image_id: Annotated[
        int | None, Form(description="or: the id of a stored image (left out of results)")
    ] = None,
    collection: Annotated[str | None, Form()] = None,
    top_k: Annotated[int, Form(ge=1, le=MAX_SEARCH_TOP_K)] = 10,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    sources: Annotated[str | None, Form(description="comma-separated")] = None,
    tags: Annotated[str | None, Form(description="comma-separated; any of them")] = None,
    created_from: Annotated[int | None, Form(ge=0)] = None,
    created_to: Annotated[int | None, Form(ge=0)] = None,
    with_image: Annotated[bool, Form()] = False,
) -> SearchResponse:
    flt = SearchFilter(split_list(sources), split_list(tags), created_from, created_to)
    data = (
        await anyio.to_thread.run_sync(read_upload, file, svc.settings.max_upload_bytes)
        if file is not None
        else None
    )
    outcome = await search_image_async(
        svc,
        collection_name(svc, collection),
        data=data,
        image_id=image_id,
        top_k=top_k,
        flt=None if flt.is_empty() else flt,
        min_score=min_score,
        with_image=with_image,
    )
    return search_response(outcome)


@router.get("/stats", summary="Query cache hits and misses, encoder batches, queues and shed requests")
def serving_stats(svc: SvcDep) -> dict:
    return svc.serving.stats()
