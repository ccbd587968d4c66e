"""Images: fetch (original or thumbnail), add, delete."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile, status

from app.contract import raises
from app.deps import RunnerDep, SvcDep, WriteAccess
from app.routes.uploads import read_upload, split_list
from app.routes.views import image_meta
from app.schemas import (
    AddItem,
    AddResponse,
    DeleteRequest,
    DeleteResponse,
    FolderAddRequest,
    ImageMeta,
    OcrLineView,
    OcrView,
)
from operations.bounds import MAX_IMAGE_ID, MAX_TIMESTAMP, MIN_IMAGE_ID
from operations.context import Services, resolve_under
from operations.delete import delete_ids, delete_matching
from operations.errors import BadRequest, Conflict, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMedia
from operations.image_files import (
    THUMB_SIZES,
    ThumbnailCache,
    image_row,
    original_image,
    spool_uploads,
    thumbnail,
)
from operations.ingest import Upload, add_images, check_metadata
from operations.names import validate_name
from operations.ocr import ocr_text

router = APIRouter(prefix="/img/images", tags=["images"])
ImageIdPath = Annotated[int, Path(ge=MIN_IMAGE_ID, le=MAX_IMAGE_ID, description="an image id (0..2^63-1)")]
MAX_EXTERNAL_ID_CHARS = 256


def _cache(request: Request, svc: Services) -> ThumbnailCache:
    if not hasattr(request.app.state, "thumbnails"):
        request.app.state.thumbnails = ThumbnailCache(svc.settings.thumbnail_cache_items)
    return request.app.state.thumbnails


@router.get(
    "/{collection}/{image_id}",
    summary="The image's bytes, or a JPEG thumbnail with ?size=",
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}},
        **raises(BadRequest, NotFound, InvalidInput, PayloadTooLarge, UnsupportedMedia),
    },
)
def get_image(
    collection: str,
    image_id: ImageIdPath,
    svc: SvcDep,
    request: Request,
    size: Annotated[int | None, Query(description=f"thumbnail edge, one of {THUMB_SIZES}")] = None,
) -> Response:
    if size is None:
        image = original_image(svc, collection, image_id)
    else:
        image = thumbnail(svc, _cache(request, svc), collection, image_id, size)
    headers = {"Cache-Control": "private, max-age=3600", "ETag": f'"{image.etag}"'}
    return Response(image.data, media_type=image.media_type, headers=headers)


@router.get(
    "/{collection}/{image_id}/meta",
    response_model=ImageMeta,
    summary="An image's metadata",
    responses=raises(BadRequest, NotFound),
)
def get_meta(collection: str, image_id: ImageIdPath, svc: SvcDep) -> ImageMeta:
    return image_meta(collection, image_row(svc, collection, image_id))


@router.get(
    "/{collection}/{image_id}/ocr",
    response_model=OcrView,
    summary="The text read in an image (OCR): lines with boxes and confidences",
    responses=raises(BadRequest, NotFound, Conflict),
)
def get_ocr(collection: str, image_id: ImageIdPath, svc: SvcDep) -> OcrView:
    image_row(svc, collection, image_id)  # 404 unless the image is there
    record = ocr_text(svc, collection, image_id)
    if record is None:
        return OcrView(id=image_id, collection=collection, status="pending", text="", lines=[])
    return OcrView(
        id=image_id,
        collection=collection,
        status="failed" if record.status == "failed" else "ok",
        text=record.text,
        lines=[OcrLineView(**line.as_dict()) for line in record.lines],
        error=record.error,
        updated_at=record.updated_at,
    )


@router.post(
    "/{collection}",
    response_model=AddResponse,
    dependencies=[WriteAccess],
    summary="Add uploaded images (a large batch becomes a background job)",
    responses={
        202: {"model": AddResponse},
        **raises(BadRequest, NotFound, Conflict, InvalidInput, PayloadTooLarge),
    },
)
def add(
    collection: str,
    svc: SvcDep,
    runner: RunnerDep,
    response: Response,
    files: Annotated[list[UploadFile], File(description="one or many images")],
    source: Annotated[str, Form()] = "upload",
    tags: Annotated[str | None, Form(description="comma-separated")] = None,
    created_at: Annotated[
        int | None, Form(ge=0, le=MAX_TIMESTAMP, description="unix seconds (default: now)")
    ] = None,
    external_ids: Annotated[str | None, Form(description="JSON list, one per file")] = None,
    near_duplicates: Annotated[
        bool, Form(description="report stored images above the near-duplicate threshold")
    ] = False,
) -> AddResponse:
    validate_name(collection)
    svc.require_collection(collection)
    if not files or len(files) > svc.settings.max_batch_upload:
        raise InvalidInput(f"send 1..{svc.settings.max_batch_upload} files")
    tag_list = split_list(tags)
    ext = _external_ids(external_ids, len(files))
    check_metadata(source, tag_list, created_at, None)
    uploads = [
        Upload(
            f.filename or f"file{i}",
            read_upload(f, svc.settings.max_upload_bytes),
            source,
            tag_list,
            created_at,
            ext[i],
        )
        for i, f in enumerate(files)
    ]
    if len(uploads) <= svc.settings.inline_add_limit:
        results = add_images(svc, collection, uploads, near_duplicates=near_duplicates)
        if any(r.status == "added" for r in results):
            runner.reindex.after_write(collection)  # queued only: no I/O, never raises
        return AddResponse(collection=collection, results=[AddItem(**r.__dict__) for r in results])
    job_id, params = spool_uploads(svc.settings.data_root, uploads, source, tag_list, created_at)
    runner.submit("add", collection, params, job_id=job_id)
    response.status_code = status.HTTP_202_ACCEPTED
    return AddResponse(collection=collection, job_id=job_id)


def _external_ids(raw: str | None, n: int) -> list[str | None]:
    """The `external_ids` form field: a flat JSON list, one string (or int, or null) per file."""
    if not raw:
        return [None] * n
    try:
        values = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise InvalidInput("external_ids must be a JSON list", field="external_ids") from None
    if not isinstance(values, list) or len(values) != n:
        raise InvalidInput("external_ids must be a JSON list with one entry per file", field="external_ids")
    out: list[str | None] = []
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int))):
            raise InvalidInput(
                f"external_ids[{i}] must be a string, an integer or null", field="external_ids"
            )
        text = None if v is None else str(v)
        if text is not None and (len(text) > MAX_EXTERNAL_ID_CHARS or not _is_text(text)):
            raise InvalidInput(
                f"external_ids[{i}] must be text of at most {MAX_EXTERNAL_ID_CHARS} characters",
                field="external_ids",
            )
        out.append(text)
    return out


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        return False
    return True


@router.post(
    "/{collection}/folder",
    status_code=202,
    dependencies=[WriteAccess],
    summary="Add every image of a folder under DATA_ROOT (background job)",
    responses=raises(BadRequest, NotFound, InvalidInput),
)
def add_folder_job(collection: str, body: FolderAddRequest, svc: SvcDep, runner: RunnerDep) -> dict:
    validate_name(collection)
    svc.require_collection(collection)
    folder = resolve_under(svc.settings.data_root, body.folder)
    if not folder.is_dir():
        raise BadRequest(f"folder {body.folder!r} does not exist under the data root")
    check_metadata(body.source, body.tags, body.created_at, None)
    job = runner.submit(
        "add",
        collection,
        {"folder": str(folder), "source": body.source, "tags": body.tags, "created_at": body.created_at},
    )
    return {"job_id": job.id}


@router.delete(
    "/{collection}/{image_id}",
    response_model=DeleteResponse,
    dependencies=[WriteAccess],
    summary="Delete one image from both stores",
    responses=raises(BadRequest, NotFound, InvalidInput),
)
def delete_one(collection: str, image_id: ImageIdPath, svc: SvcDep) -> DeleteResponse:
    validate_name(collection)
    if delete_ids(svc, collection, [image_id]) == 0:
        raise NotFound(f"image {image_id} is not in collection {collection!r}", image_id=image_id)
    return DeleteResponse(collection=collection, deleted=1)


@router.post(
    "/{collection}/delete",
    response_model=DeleteResponse,
    dependencies=[WriteAccess],
    summary="Delete many images, by ids or by filter",
    responses=raises(BadRequest, NotFound, InvalidInput),
)
def delete_many(collection: str, body: DeleteRequest, svc: SvcDep) -> DeleteResponse:
    validate_name(collection)
    if bool(body.ids) == bool(body.filters):
        raise InvalidInput("give either ids or filters")
    if body.ids:
        deleted = delete_ids(svc, collection, body.ids)
    else:
        deleted = delete_matching(svc, collection, body.filters.to_filter())  # type: ignore[union-attr]  # one of ids/filters, checked above
    return DeleteResponse(collection=collection, deleted=deleted)
