"""以文搜图 and 以图搜图, with the query language, feedback, relevance, cut and order.

The routes are async: a plain query awaits the encoder and vector-search batchers
(operations.serving), so a request waiting for its batch holds no worker thread; the blocking
stages (store reads, decoding an upload, a composed query) run on the worker pool, never on the
event loop.
"""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, File, Form, UploadFile

from app.contract import raises
from app.deps import SvcDep, collection_name
from app.routes.uploads import read_upload, split_list
from app.routes.views import search_response
from app.schemas import SearchResponse, TextSearchRequest
from operations.bounds import MAX_IMAGE_ID, MAX_TIMESTAMP, MIN_IMAGE_ID
from operations.domain import SearchFilter
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMedia
from operations.relevance.cutoff import CutOptions
from operations.relevance.search import RelevanceQuery, relevance_search_async
from operations.search import MAX_SEARCH_TOP_K

router = APIRouter(prefix="/img", tags=["search"])


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search images by a Chinese sentence or query (`-term`, `term:2`), an image_id, feedback",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput),
)
async def text_search(body: TextSearchRequest, svc: SvcDep) -> SearchResponse:
    """The query is a small language: words separated by spaces (`海边 日落` is one phrase);
    `-词` (or `－词`) is unwanted: results closer to it than to the wanted text are removed;
    `词:2` (0 < weight <= 10) makes each wanted word its own weighted vector. `image_id` adds a
    stored image to the query; `positive_ids` / `negative_ids` are Rocchio feedback (更像这个 /
    不要这种) and never appear in the results.

    Each result carries `relevance`, the model's calibrated probability of a match (null, with
    `calibrated: false` and `relevance_note`, when the model is uncalibrated or the query has no
    wanted text). `min_relevance` drops results below it, `cut: "auto"` stops at the largest
    drop in score, `order_by` / `order` sort what is left. Malformed queries are 422s naming
    the term.
    """
    flt = body.filters.to_filter() if body.filters else None
    rq = RelevanceQuery(
        query=body.query,
        top_k=body.top_k,
        flt=flt,
        min_score=body.min_score,
        with_image=body.with_image,
        image_id=body.image_id,
        positive_ids=tuple(body.positive_ids),
        negative_ids=tuple(body.negative_ids),
        cut=CutOptions(body.min_relevance, body.cut, body.order_by, body.order),
        mode=body.mode,
    )
    outcome, report = await relevance_search_async(svc, collection_name(svc, body.collection), rq)
    return search_response(outcome, report)


def _ids(value: str | None, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in split_list(value))
    except ValueError:
        raise InvalidInput(f"{what} must be comma-separated integers") from None


@router.post(
    "/search/image",
    response_model=SearchResponse,
    summary="Search images similar to an uploaded image, or to a stored image by id, optionally with a query",
    responses=raises(BadRequest, NotFound, Conflict, InvalidInput, PayloadTooLarge, UnsupportedMedia),
)
async def image_search(
    svc: SvcDep,
    file: Annotated[UploadFile | None, File(description="the query photo")] = None,
    image_id: Annotated[
        int | None,
        Form(
            ge=MIN_IMAGE_ID,
            le=MAX_IMAGE_ID,
            description="or: the id of a stored image (left out of results)",
        ),
    ] = None,
    query: Annotated[
        str, Form(max_length=10_000, description="text with the image: 像这张，但是红色的")
    ] = "",
    collection: Annotated[str | None, Form()] = None,
    top_k: Annotated[int, Form(ge=1, le=MAX_SEARCH_TOP_K)] = 10,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    sources: Annotated[str | None, Form(description="comma-separated")] = None,
    tags: Annotated[str | None, Form(description="comma-separated; any of them")] = None,
    created_from: Annotated[int | None, Form(ge=0, le=MAX_TIMESTAMP, description="unix seconds")] = None,
    created_to: Annotated[int | None, Form(ge=0, le=MAX_TIMESTAMP, description="unix seconds")] = None,
    with_image: Annotated[bool, Form()] = False,
    min_relevance: Annotated[float | None, Form(ge=0, le=1)] = None,
    cut: Annotated[Literal["none", "auto"], Form()] = "none",
    order_by: Annotated[Literal["relevance", "created_at"], Form()] = "relevance",
    order: Annotated[Literal["desc", "asc"], Form()] = "desc",
    positive_ids: Annotated[str | None, Form(description="comma-separated ids: 更像这个")] = None,
    negative_ids: Annotated[str | None, Form(description="comma-separated ids: 不要这种")] = None,
) -> SearchResponse:
    flt = SearchFilter(split_list(sources), split_list(tags), created_from, created_to)
    data = (
        await anyio.to_thread.run_sync(read_upload, file, svc.settings.max_upload_bytes)
        if file is not None
        else None
    )
    if data is None and image_id is None:
        raise InvalidInput("give either an image upload or an image_id, not both")
    rq = RelevanceQuery(
        query=query,
        top_k=top_k,
        flt=None if flt.is_empty() else flt,
        min_score=min_score,
        with_image=with_image,
        image=data,
        image_id=image_id,
        positive_ids=_ids(positive_ids, "positive_ids"),
        negative_ids=_ids(negative_ids, "negative_ids"),
        cut=CutOptions(min_relevance, cut, order_by, order),
    )
    outcome, report = await relevance_search_async(svc, collection_name(svc, collection), rq)
    return search_response(outcome, report)


@router.get(
    "/stats",
    summary="Query cache hits and misses, encoder batches, queues, shed requests and pending cleanups",
)
def serving_stats(svc: SvcDep) -> dict:
    # The cleanups hold what failed adds could not remove yet (rows by id or sha256, vectors by id).
    return {
        **svc.serving.stats(),
        "vector_cleanup": {"pending": svc.vector_cleanup.pending()},
        "row_cleanup": {"pending": svc.row_cleanup.pending()},
    }
