"""Request and response models (what /docs shows)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from operations.domain import SearchFilter
from operations.search import MAX_SEARCH_TOP_K


class Filters(BaseModel):
    """Narrow a search. Values are validated, then rendered by one filter builder."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(default_factory=list, max_length=64, examples=[["demo"]])
    tags: list[str] = Field(default_factory=list, max_length=64, description="match any of these tags")
    created_from: int | None = Field(None, ge=0, description="unix seconds, inclusive")
    created_to: int | None = Field(None, ge=0, description="unix seconds, inclusive")

    def to_filter(self) -> SearchFilter:
        return SearchFilter(tuple(self.sources), tuple(self.tags), self.created_from, self.created_to)


class TextSearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"query": "左边有一个红色的圆形", "top_k": 10, "collection": "demo"}]
        },
    )
    query: str = Field(..., min_length=1, max_length=10_000, description="a Chinese sentence")
    top_k: int = Field(10, ge=1, le=MAX_SEARCH_TOP_K)
    collection: str | None = Field(None, description="defaults to the server's DEFAULT_COLLECTION")
    filters: Filters | None = None
    min_score: float | None = Field(None, ge=-1, le=1, description="drop results below this cosine")
    with_image: bool = Field(False, description="include each image inline as base64")


class ResultItem(BaseModel):
    id: int
    rank: int
    score: float = Field(..., description="cosine similarity in -1..1; not a probability")
    url: str
    thumbnail_url: str
    source: str
    tags: list[str]
    created_at: int
    width: int
    height: int
    mime: str
    external_id: str | None = None
    image_b64: str | None = None


class SearchResponse(BaseModel):
    collection: str
    model: str
    results: list[ResultItem]
    timings_ms: dict[str, float]


class ImageMeta(BaseModel):
    id: int
    collection: str
    url: str
    sha256: str
    mime: str
    width: int
    height: int
    source: str
    tags: list[str]
    created_at: int
    added_at: int
    external_id: str | None = None
    indexed: bool


class AddItem(BaseModel):
    index: int
    filename: str
    status: Literal["added", "present", "failed"]
    id: int | None = None
    error: str | None = None
    near_duplicates: list[dict] = Field(default_factory=list)


class AddResponse(BaseModel):
    collection: str
    job_id: str | None = Field(None, description="set when the batch became a background job")
    results: list[AddItem] = Field(default_factory=list)


class FolderAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field(..., description="a folder under the server's DATA_ROOT", examples=["photos/2026"])
    source: str = "folder"
    tags: list[str] = Field(default_factory=list)
    created_at: int | None = Field(None, ge=0)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(default_factory=list, max_length=100_000)
    filters: Filters | None = None


class DeleteResponse(BaseModel):
    collection: str
    deleted: int


class LoadRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset": "demo", "split": "valid", "collection": "demo"}]},
    )
    dataset: str = Field(..., description="dataset directory, relative to DATA_ROOT")
    split: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    collection: str | None = None
    source: str | None = Field(
        None, description="source label stored with each image (default: dataset name)"
    )


class JobView(BaseModel):
    id: str
    job_id: str = Field(description="the same as id: every response that starts a job names it job_id")
    kind: str
    collection: str
    state: str
    processed: int
    failed: int
    total: int | None
    rate_per_s: float | None
    eta_s: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    message: str
    params: dict
    failures: list[dict] = Field(default_factory=list)


class CollectionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "products",
                    "index_type": "HNSW",
                    "index_params": {"M": 16, "efConstruction": 200},
                    "search_params": {"ef": 64},
                    "source_partitions": 16,
                }
            ]
        },
    )
    name: str
    model: str | None = Field(None, description="a model the server has configured (default: its main model)")
    index_type: Literal["FLAT", "IVF_FLAT", "HNSW"] | None = None
    index_params: dict[str, int] = Field(default_factory=dict)
    search_params: dict[str, int] = Field(default_factory=dict)
    source_partitions: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="N > 0: partition by source (Milvus partition key, N partitions), so a "
        "search filtered by source reads only its partitions; 0: none; "
        "default: the server's SOURCE_PARTITIONS",
    )


class CollectionView(BaseModel):
    name: str
    model: str
    dim: int
    index_type: str
    index_params: dict
    search_params: dict
    source_partitions: int
    vectors: int
    images: int


class ScanRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"descriptions": ["红色的三角形", "黑色的星形"], "threshold": 0.3, "collection": "demo"}
            ]
        },
    )
    descriptions: list[str] = Field(..., min_length=1, max_length=50)
    threshold: float = Field(..., ge=-1, le=1, description="cosine similarity threshold")
    collection: str | None = None
    filters: Filters | None = None
    offset: int = Field(0, ge=0)
    limit: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="rows of this page: default 100 as json, 10,000 as csv/jsonl (an export)",
    )
    format: Literal["json", "csv", "jsonl"] = "json"


class ScanItem(BaseModel):
    image_id: int
    score: float
    description_index: int
    description: str
    source: str
    created_at: int
    url: str


class ScanResponse(BaseModel):
    collection: str
    model: str
    threshold: float
    total: int
    offset: int
    limit: int
    truncated: bool
    hits: list[ScanItem]
