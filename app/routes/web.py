"""The web page for people, served at /."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


@router.get("/")
def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html; charset=utf-8")
