"""Turning operation results into response models (URLs are HTTP's business)."""

from __future__ import annotations

from app.schemas import CutView, ImageMeta, ResultItem, SearchResponse
from operations.domain import ImageRow
from operations.relevance.cutoff import RelevanceReport
from operations.search import SearchOutcome


def image_url(collection: str, image_id: int, size: int | None = None) -> str:
    return f"/img/images/{collection}/{image_id}" + (f"?size={size}" if size else "")


THUMBNAIL_SIZE = 256


def search_response(outcome: SearchOutcome, report: RelevanceReport | None = None) -> SearchResponse:
    return SearchResponse(
        collection=outcome.collection,
        model=outcome.model,
        timings_ms=outcome.timings_ms,
        calibrated=bool(report and report.calibrated),
        relevance_note=report.note if report else "",
        cut=CutView(
            candidates=report.candidates,
            kept_by_threshold=report.kept_by_threshold,
            auto_cut_at=report.auto_cut_at,
        )
        if report
        else None,
        results=[
            ResultItem(
                id=m.row.id,
                rank=m.rank,
                score=round(m.score, 6),
                relevance=report.relevance.get(m.row.id) if report else None,
                tier=report.tier(m.row.id) if report else None,  # type: ignore[arg-type]
                url=image_url(outcome.collection, m.row.id),
                thumbnail_url=image_url(outcome.collection, m.row.id, THUMBNAIL_SIZE),
                source=m.row.source,
                tags=list(m.row.tags),
                created_at=m.row.created_at,
                width=m.row.width,
                height=m.row.height,
                mime=m.row.mime,
                external_id=m.row.external_id,
                image_b64=m.row.image_b64,
                signals=[s for s in ("visual", "text") if s in m.signals],
                fused_score=m.fused,
                ocr_text=m.ocr_text,
            )
            for m in outcome.matches
        ],
    )


def image_meta(collection: str, row: ImageRow) -> ImageMeta:
    return ImageMeta(
        id=row.id,
        collection=collection,
        url=image_url(collection, row.id),
        sha256=row.sha256,
        mime=row.mime,
        width=row.width,
        height=row.height,
        source=row.source,
        tags=list(row.tags),
        created_at=row.created_at,
        added_at=row.added_at,
        external_id=row.external_id,
        indexed=row.indexed,
    )
