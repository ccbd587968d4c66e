"""Request and response models (what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from operations.bounds import MAX_IMAGE_ID, MAX_SCAN_OFFSET, MAX_TIMESTAMP, MIN_IMAGE_ID
from operations.domain import SearchFilter
from operations.search import MAX_SEARCH_TOP_K


def _no_lone_surrogates(value: str) -> str:
    # JSON's \ud800 escape yields a str no encoder can write (SQL, the response):
    # refuse it here, naming the field, instead of failing later.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate, which is not text") from None
    return value


# Every string and integer of a request goes through one of these types, so the
# rule is in one place: text is valid Unicode, ids and timestamps are in range.
Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
ImageId = Annotated[int, Field(ge=MIN_IMAGE_ID, le=MAX_IMAGE_ID, description="an image id (0..2^63-1)")]
Timestamp = Annotated[int, Field(ge=0, le=MAX_TIMESTAMP, description="unix seconds")]
IndexParam = Annotated[int, Field(ge=1, le=65536)]
# A split is a name: no leading dot ("." and ".." are paths), no slash.
SPLIT_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"


class Filters(BaseModel):
    """Narrow a search. Values are validated, then rendered by one filter builder."""

    model_config = ConfigDict(extra="forbid")
    sources: list[Text] = Field(default_factory=list, max_length=64, examples=[["demo"]])
    tags: list[Text] = Field(default_factory=list, max_length=64, description="match any of these tags")
    created_from: Timestamp | None = Field(None, description="unix seconds, inclusive")
    created_to: Timestamp | None = Field(None, description="unix seconds, inclusive")

    def to_filter(self) -> SearchFilter:
        return SearchFilter(tuple(self.sources), tuple(self.tags), self.created_from, self.created_to)


class TextSearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"query": "左边有一个红色的圆形", "top_k": 10, "collection": "demo"}]
        },
    )
    query: Text = Field(
        "",
        max_length=10_000,
        description="a Chinese sentence or the query language: `海边 日落 -人物` (unwanted term), "
        "`红色:2 汽车` (weights); may be empty when image_id or positive_ids is given",
    )
    top_k: int = Field(10, ge=1, le=MAX_SEARCH_TOP_K)
    collection: Text | None = Field(None, description="defaults to the server's DEFAULT_COLLECTION")
    filters: Filters | None = None
    min_score: float | None = Field(None, ge=-1, le=1, description="drop results below this cosine")
    with_image: bool = Field(False, description="include each image inline as base64")
    mode: Literal["visual", "text", "hybrid"] | None = Field(
        None,
        description="visual: CLIP; text: the text read in the images (OCR) contains the query; "
        "hybrid: both rankings fused (RRF). Default: hybrid on a collection with OCR, else visual",
    )
    min_relevance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="drop results whose calibrated relevance is below this (422 if uncalibrated)",
    )
    cut: Literal["none", "auto"] = Field("none", description="auto: stop at the largest drop in score")
    order_by: Literal["relevance", "created_at"] = "relevance"
    order: Literal["desc", "asc"] = Field("desc", description="created_at desc = newest first")
    image_id: int | None = Field(None, description="a stored image searched together with the query")
    positive_ids: list[int] = Field(
        default_factory=list, max_length=50, description="更像这个: results to move toward"
    )
    negative_ids: list[int] = Field(
        default_factory=list, max_length=50, description="不要这种: results to move away from"
    )


Signal = Literal["visual", "text"]


def _visual_only() -> list[Signal]:
    return ["visual"]


class ResultItem(BaseModel):
    id: int
    rank: int
    score: float = Field(..., description="cosine similarity in -1..1; not a probability")
    relevance: float | None = Field(
        None, description="calibrated probability (0..1) that the image matches; null when uncalibrated"
    )
    tier: Literal["relevant", "maybe", "other"] | None = Field(
        None, description="相关 / 可能相关 / the rest, by relevance; null when uncalibrated"
    )
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
    signals: list[Signal] = Field(default_factory=_visual_only, description="which rankings found this image")
    fused_score: float | None = Field(None, description="the RRF score it was ranked by (text, hybrid)")
    ocr_text: str | None = Field(
        None, description="the line of text read in the image that matched the query"
    )


class CutView(BaseModel):
    candidates: int = Field(description="results before min_relevance and cut")
    kept_by_threshold: int
    auto_cut_at: int | None = Field(None, description="results kept by cut=auto")


class SearchResponse(BaseModel):
    collection: str
    model: str
    results: list[ResultItem]
    timings_ms: dict[str, float]
    calibrated: bool = Field(False, description="false: relevance is null, relevance_note says why")
    relevance_note: str = ""
    cut: CutView | None = None


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset": "demo", "split": "valid", "collection": "demo"}]},
    )
    dataset: Text = Field(..., description="dataset directory, relative to DATA_ROOT")
    split: str = Field(
        ..., pattern=SPLIT_PATTERN, description="split with ${split}_texts.jsonl (a name, not a path)"
    )
    collection: Text | None = Field(
        None, description="calibrate this collection's model (default collection when model is unset)"
    )
    model: Text | None = Field(None, description="or: a model the server runs")


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


class OcrLineView(BaseModel):
    text: str
    box: list[list[float]] = Field(..., description="the line's 4 corners, pixels (x, y)")
    confidence: float


class OcrView(BaseModel):
    id: int
    collection: str
    status: Literal["ok", "failed", "pending"] = Field(..., description="pending: not read yet")
    text: str = Field(..., description="the lines, one per line")
    lines: list[OcrLineView]
    error: str | None = None
    updated_at: int | None = None


class AddItem(BaseModel):
    index: int
    filename: str
    status: Literal["added", "present", "failed"]
    id: int | None = None
    error: str | None = None
    near_duplicates: list[dict] = Field(
        default_factory=list, description='CLIP near-duplicates (near_duplicates=true): [{"id", "score"}]'
    )
    duplicate_tier: Literal["exact", "phash", "clip"] | None = Field(
        None,
        description="the strongest duplicate tier matched: exact (the same bytes), phash (the same picture "
        "re-encoded, resized or lightly cropped), clip (a near-duplicate)",
    )
    same_picture: list[dict] = Field(
        default_factory=list, description='images within PHASH_MAX_DISTANCE pHash bits: [{"id", "distance"}]'
    )
    ocr: dict | None = Field(
        None,
        description='collections with OCR: {"status": "ok"|"failed", "lines", "text", "error"}; '
        "a failed read never loses the image",
    )


class AddResponse(BaseModel):
    collection: str
    job_id: str | None = Field(None, description="set when the batch became a background job")
    results: list[AddItem] = Field(default_factory=list)


class FolderAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: Text = Field(..., description="a folder under the server's DATA_ROOT", examples=["photos/2026"])
    source: Text = "folder"
    tags: list[Text] = Field(default_factory=list, max_length=64)
    created_at: Timestamp | None = None


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[ImageId] = Field(default_factory=list, max_length=100_000)
    filters: Filters | None = None


class RetentionRequest(BaseModel):
    """Delete images by age and/or source (at least one condition; with both, both must match)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"created_before": 1735689600, "sources": []}]}
    )
    created_before: Annotated[int, Field(ge=1, le=MAX_TIMESTAMP)] | None = Field(
        None, description="unix seconds: images with created_at before it"
    )
    sources: list[Text] = Field(default_factory=list, max_length=64, description="images of any of these")


class DeleteResponse(BaseModel):
    collection: str
    deleted: int


class LoadRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset": "demo", "split": "valid", "collection": "demo"}]},
    )
    dataset: Text = Field(..., description="dataset directory, relative to DATA_ROOT")
    split: str = Field(
        ...,
        pattern=SPLIT_PATTERN,
        description="a split name (not a path): its files are <split>_imgs.tsv etc. in the dataset directory",
    )
    collection: Text | None = None
    source: Text | None = Field(
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
    owner: str | None = Field(
        None, description="the replica (host:pid:suffix) running the job, or that ran it last"
    )


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
    name: Text
    model: Text | None = Field(
        None, description="a model the server has configured (default: its main model)"
    )
    ocr: bool | None = Field(
        None, description="read the text in this collection's images (default: the server's OCR_ENABLED)"
    )
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTO"] | None = Field(
        None,
        description="default: the server's INDEX_TYPE; AUTO: FLAT (exact) below the server's "
        "AUTO_INDEX_FLAT_BELOW expected vectors, else HNSW tuned for recall@10 >= 0.99 (no params)",
    )
    index_params: dict[Text, IndexParam] = Field(default_factory=dict, max_length=8)
    search_params: dict[Text, IndexParam] = Field(default_factory=dict, max_length=8)
    expected_vectors: int | None = Field(
        None,
        ge=0,
        le=10_000_000_000,
        description="AUTO: how many images the collection is expected to hold (default 0: it starts small)",
    )
    source_partitions: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="N > 0: partition by source (Milvus partition key, N partitions), so a "
        "search filtered by source reads only its partitions; 0: none; "
        "default: the server's SOURCE_PARTITIONS",
    )
    time_partitions: Literal["none", "day", "month", "year"] | None = Field(
        None,
        description="a Milvus partition per period of created_at (UTC), so retention by age drops "
        "whole partitions; excludes source_partitions; default: the server's TIME_PARTITIONS "
        "(when source_partitions is not given)",
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
    ocr: bool = Field(False, description="the text in this collection's images is read")
    auto_index: dict | None = Field(
        None,
        description="set when AUTO chose the index: flat_below (the size AUTO switches at) and "
        "reindex_due (the collection grew past it while FLAT); while due, reindex_job {id, state, "
        "automatic}: the rebuild under way, or the last one, which failed or was cancelled",
    )
    alias_of: str | None = Field(
        None,
        description="set when this name is an alias (a rebuilt collection's name): the collection "
        "it points at, which answers its searches and takes its writes",
    )
    aliased_by: list[str] = Field(
        default_factory=list, description="the aliases pointing at this collection (it cannot be dropped)"
    )
    physical: str = Field("", description="what Milvus and SQL call the collection holding the data")
    time_partitions: str | None = Field(
        None, description="day, month or year: a Milvus partition per period of created_at; null: none"
    )


class OcrPattern(BaseModel):
    """One pattern for the text read in images: a built-in or a regular expression."""

    model_config = ConfigDict(extra="forbid")
    builtin: Literal["phone_cn", "wechat", "qq", "url"] | None = Field(
        None,
        description="phone_cn: mainland mobile numbers; wechat / qq: ids after a label; url: web addresses",
    )
    regex: str | None = Field(
        None, min_length=1, max_length=200, description="a regular expression (the regex package's syntax)"
    )


class ScanRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"descriptions": ["红色的三角形", "黑色的星形"], "threshold": 0.3, "collection": "demo"}
            ]
        },
    )
    descriptions: list[Text] = Field(default_factory=list, max_length=50)
    threshold: float = Field(..., ge=-1, le=1, description="cosine similarity threshold")
    ocr_patterns: list[OcrPattern] = Field(
        default_factory=list,
        max_length=20,
        description="collections with OCR: patterns for the text read in the images; "
        "give descriptions, patterns or both",
    )
    collection: Text | None = None
    filters: Filters | None = None
    offset: int = Field(0, ge=0, le=MAX_SCAN_OFFSET)
    limit: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="rows of this page: default 100 as json; as csv/jsonl, none = every match, streamed",
    )
    format: Literal["json", "csv", "jsonl"] = "json"


class ScanItem(BaseModel):
    image_id: int
    score: float = Field(..., description="visual: cosine similarity; ocr: confidence of the line read")
    description_index: int = Field(..., description="index into descriptions, then into ocr_patterns")
    description: str = Field(..., description="the description, or the pattern (builtin:NAME / regex:SOURCE)")
    source: str
    created_at: int
    url: str
    signal: Literal["visual", "ocr"] = "visual"
    matched_text: str = Field("", description="ocr: the text the pattern matched")


class ScanResponse(BaseModel):
    collection: str
    model: str
    threshold: float
    total: int
    offset: int
    limit: int
    hits: list[ScanItem]
    ocr_timed_out: int = Field(0, description="(pattern, line) searches stopped at OCR_REGEX_TIMEOUT_MS")


# --- duplicate listings (GET/POST /img/duplicates/{collection}) ----------------------------


class DuplicatesRequest(BaseModel):
    """How to compute a listing; every field defaults to the server's settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"tiers": ["phash", "clip"], "phash_max_distance": 6}]},
    )
    tiers: list[Literal["phash", "clip"]] = Field(
        ["phash", "clip"],
        min_length=1,
        max_length=2,
        description="phash: the same picture re-encoded, resized or lightly cropped; clip: near-duplicates. "
        'No "exact": identical bytes are never stored twice (sha256 is unique)',
    )
    phash_max_distance: int | None = Field(
        None, ge=0, le=7, description="pHash bits a copy may differ in (default PHASH_MAX_DISTANCE)"
    )
    phash_min_cosine: float | None = Field(
        None,
        ge=0,
        le=1,
        description="CLIP cosine a phash link also needs (default PHASH_MIN_COSINE; 0 = none)",
    )
    near_duplicate_threshold: float | None = Field(
        None, ge=0, le=1, description="CLIP cosine of a near-duplicate (default NEAR_DUPLICATE_THRESHOLD)"
    )


class DuplicateMember(BaseModel):
    id: int
    url: str
    distance: int | None = Field(None, description="smallest pHash distance (bits) to another member")
    score: float | None = Field(None, description="largest CLIP cosine to another member")


class DuplicateGroup(BaseModel):
    group: int = Field(description="the group's number in this listing (the cursor: after=group)")
    tier: Literal["phash", "clip"] = Field(description="its strongest link: phash before clip")
    size: int
    members: list[DuplicateMember] = Field(description="by id (the first stored first), at most max_members")
    members_truncated: bool = Field(description="size > len(members): raise max_members to see more")


class DuplicatesResponse(BaseModel):
    collection: str
    job_id: str = Field(description="the listing shown (the job that computed it); pin pages with ?job_id=")
    computed_at: float
    images: int = Field(description="images in the collection when the listing was computed")
    images_now: int = Field(description="images now: compute again (POST) after adds and deletes")
    without_phash: int = Field(description="images that had no pHash when it was computed (undecodable)")
    tiers: list[str]
    phash_max_distance: int
    phash_min_cosine: float
    near_duplicate_threshold: float
    counts: dict[str, int] = Field(description="groups per tier")
    tier: str | None = Field(None, description="the tier this page is filtered to")
    total: int = Field(description="groups of the listing (of `tier` when filtered)")
    after: int
    limit: int
    next_after: int | None = Field(None, description="the `after` of the next page; null on the last page")
    running_job_id: str | None = Field(None, description="a newer listing being computed")
    groups: list[DuplicateGroup]


class RebuildRequest(BaseModel):
    """Rebuild a collection into a new version (another model and/or index) as a job."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "RN50", "dataset": "demo", "split": "valid", "min_recall": 0.5, "switch": True},
                {
                    "index_type": "HNSW",
                    "index_params": {"M": 16, "efConstruction": 200},
                    "search_params": {"ef": 64},
                },
            ]
        },
    )
    model: Text | None = Field(None, description="a model the server runs (default: the collection's own)")
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTO"] | None = Field(
        None,
        description="default: the collection's own index (AUTO re-chosen for its current size)",
    )
    index_params: dict[Text, IndexParam] = Field(default_factory=dict, max_length=8)
    search_params: dict[Text, IndexParam] = Field(default_factory=dict, max_length=8)
    dataset: Text | None = Field(
        None, description="a labelled split for the recall check: dataset directory under DATA_ROOT"
    )
    split: str | None = Field(
        None,
        pattern=SPLIT_PATTERN,
        description="the split with ${split}_texts.jsonl (captions with image_ids, images in the collection)",
    )
    min_recall: float | None = Field(
        None,
        ge=0,
        le=1,
        description="switch only if the new collection's Recall@10 on the split is at least this",
    )
    switch: bool = Field(
        False, description="switch the name to the new collection when it is built (and min_recall is met)"
    )


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"to": "images__v2"}]})
    to: Text = Field(
        ..., description="the version to point the name at (e.g. images__v2, or back to images__v1)"
    )


class SwitchView(BaseModel):
    alias: str
    from_: str = Field(alias="from", description="the collection the name pointed at before")
    to: str
    caught_up: int = Field(
        description="rows copied or removed in the last catch-up, while writes were held off"
    )
