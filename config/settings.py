"""One typed Settings object, read from the environment and `.env`.

Every setting is validated when the process starts; a wrong value stops the
start with one line naming the setting (see `load_settings`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.names import name_problem

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(Exception):
    """A setting is wrong; the message is one line meant for the operator."""


class Settings(BaseSettings):
    """All configuration of the service, the CLI and the benchmarks."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- model -----------------------------------------------------------
    model_name: str = Field("RN50", description="cn_clip model name, or a label for a custom checkpoint")
    model_checkpoint: Path | None = Field(
        None, description="local checkpoint file; unset = <download root>/<cn_clip file name>"
    )
    model_arch: str | None = Field(
        None, description="architecture: JSON config file, 'VISION@TEXT' struct or cn_clip name"
    )
    model_download_root: Path = Field(
        REPO_ROOT / "models" / "downloads",
        description="where cn_clip checkpoints are looked for (never downloaded)",
    )
    model_random_init: bool = Field(False, description="random weights (benchmarks and tests only)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    half_precision: bool = Field(False, description="fp16 inference on GPU")
    text_int8: bool = Field(
        False,
        description="int8 text tower on CPU (ONNX or torch, whichever backend runs): queries faster, "
        "vectors a little off fp32 (README)",
    )
    encoder_backend: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="auto: ONNX Runtime on CPU when its export verifies against torch, else torch; "
        "onnx: ONNX or the start fails; torch: torch only",
    )
    onnx_cache_dir: Path = Field(
        REPO_ROOT / "models" / "onnx",
        description="exported ONNX towers, one folder per checkpoint hash, architecture and exporter version",
    )
    encoder_text_threads: int = Field(
        1, ge=0, le=256, description="intra-op threads for a batch of up to 8 texts; 0 = all available cores"
    )
    encoder_image_threads: int = Field(
        0, ge=0, le=256, description="intra-op threads for images and text batches over 8; 0 = all cores"
    )
    encoder_spread_lone_query: bool = Field(
        True,
        description="ONNX: a query that is the only search in progress encodes on ENCODER_IMAGE_THREADS",
    )
    extra_models: dict = Field(
        default_factory=dict,
        description='JSON {"name": {"checkpoint": path, "arch": arch}} served beside the default model',
    )

    calibration_dir: Path | None = Field(
        None,
        description="where model calibrations are read and written; unset = beside each checkpoint "
        "(<checkpoint>.calibration.json)",
    )

    # --- relevance (query language, feedback; README "Relevance") ------------
    negative_term_weight: float = Field(
        0.0, ge=0, le=2, description="how much of a -term's vector is subtracted from the query"
    )
    negative_term_weight_no_text: float = Field(
        2.0,
        ge=0,
        le=8,
        description="the same for a query without wanted text (an image or feedback with -terms)",
    )
    feedback_positive_weight: float = Field(
        3.0, ge=0, le=4, description="Rocchio beta: weight of the mean of positive_ids' vectors"
    )
    feedback_negative_weight: float = Field(
        0.25, ge=0, le=4, description="Rocchio gamma: weight of the mean of negative_ids' vectors"
    )
    query_image_weight: float = Field(
        1.0, ge=0, le=4, description="weight of the image beside the text in a text-plus-image query"
    )

    # --- Milvus ----------------------------------------------------------
    milvus_uri: str = Field(
        str(REPO_ROOT / "data" / "milvus.db"), description="Milvus Lite file, or http://host:port of a server"
    )
    milvus_token: str = Field("", description="user:password or token for a secured Milvus")
    milvus_timeout_s: float = Field(
        10.0, gt=0, le=600, description="one deadline per Milvus call, its retries included (then 503)"
    )
    milvus_import_dir: str = Field(
        "",
        description="`load --bulk-import` writes its import files here; the Milvus server reads them "
        "at the same absolute path (empty: a folder in the system temp dir, for a server on this machine)",
    )
    milvus_consistency: Literal["Adaptive", "Strong", "Session", "Bounded", "Eventually"] = Field(
        "Adaptive",
        description="Adaptive: reads Bounded, every write waits until searches see it; "
        "or a fixed level for every read (Strong: always fresh, ~200 ms a search)",
    )
    milvus_shards: int = Field(
        1,
        ge=1,
        le=16,
        description="shards of a new collection on a Milvus server (Milvus Lite has one); a search "
        "reads the shards' segments in parallel, so 2 on a 2-core node shortens a lone search",
    )
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTO"] = Field(
        "FLAT",
        description="index of new collections; AUTO: FLAT below AUTO_INDEX_FLAT_BELOW expected vectors, "
        "else HNSW tuned for recall@10 >= 0.99 (README)",
    )
    auto_index_flat_below: int = Field(
        50_000,
        ge=0,
        le=1_000_000_000,
        description="AUTO: a new collection expected to hold fewer vectors than this is exact (FLAT); "
        "0 = always HNSW",
    )
    auto_reindex: bool = Field(
        True,
        description="a collection AUTO made FLAT that an add or load grows to AUTO_INDEX_FLAT_BELOW "
        "vectors is rebuilt as HNSW and switched to by a background job (searches never pause); "
        "false: describe only says reindex_due",
    )
    index_params: dict = Field(
        default_factory=dict, description='JSON, e.g. {"nlist":1024} or {"M":16,"efConstruction":200}'
    )
    search_params: dict = Field(default_factory=dict, description='JSON, e.g. {"nprobe":16} or {"ef":64}')
    source_partitions: int = Field(
        0,
        ge=0,
        le=1024,
        description="new collections: 0 = no partitions; N = Milvus "
        "partition key on source, N partitions (source filters read only theirs)",
    )
    time_partitions: Literal["none", "day", "month", "year"] = Field(
        "none",
        description="new collections: a Milvus partition per period of created_at (UTC), so "
        "retention by age drops whole partitions; excludes SOURCE_PARTITIONS",
    )

    # --- SQL image store ---------------------------------------------------
    mysql_url: str = Field("", description="mysql://user:pass@host:port/db; empty = SQLite")
    sqlite_path: Path = Field(REPO_ROOT / "data" / "images.sqlite3")
    sql_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="one deadline per SQL call: pool wait, pre-ping, reconnect and statements (then 503)",
    )
    sql_pool_size: int = Field(4, ge=1, le=64)

    # --- service ---------------------------------------------------------
    default_collection: str = "demo"
    data_root: Path = Field(
        REPO_ROOT / "datasets" / "data", description="the only tree the server reads datasets from"
    )
    api_key: str = Field("", description="when set, load/add/delete/drop need header X-API-Key")
    metrics_enabled: bool = Field(True, description="serve GET /metrics (Prometheus text format)")
    metrics_require_api_key: bool = Field(
        False, description="/metrics needs X-API-Key too when API_KEY is set (default: open, like /healthz)"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text lines, or json: one object a line with time, level, logger, message, request_id",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the server's log level (access lines of /healthz, /readyz, /metrics are DEBUG)"
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="bytes of one uploaded image")
    max_request_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="bytes of one multi-image add request"
    )
    max_image_pixels: int = Field(40_000_000, ge=1024)
    body_read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request body that sends nothing for this long is cut (408)"
    )
    max_query_chars: int = Field(200, ge=1, le=10_000)
    max_batch_upload: int = Field(256, ge=1, le=10_000)
    inline_add_limit: int = Field(16, ge=0, description="uploads above this count become a background job")
    worker_threads: int = Field(
        16,
        ge=1,
        le=256,
        description="worker threads for blocking request work (SQL, Milvus, decode); searches "
        "waiting for a batch hold none",
    )
    batch_window_ms: float = Field(
        3.0,
        ge=0,
        le=1000,
        description="longest wait to fill an encoder batch while other queries arrive; 0 = no batching",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="queries encoded (or searched) in one batch")
    queue_limit: int = Field(
        128, ge=1, le=100_000, description="queries waiting for one encoder; one more is a 503 at once"
    )
    queue_timeout_ms: float = Field(
        1000.0, gt=0, le=600_000, description="a query that cannot start encoding within this is a 503"
    )
    search_threads: int = Field(4, ge=1, le=64, description="concurrent (grouped) Milvus searches")
    query_cache_size: int = Field(
        1024, ge=0, le=10_000_000, description="query-text embeddings kept (LRU); 0 = off"
    )
    result_cache_size: int = Field(
        1024, ge=0, le=10_000_000, description="vector-search results kept (LRU); 0 = off"
    )
    result_cache_ttl_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="seconds a cached search result is reused; writes made by other processes show "
        "within this (this process's own writes show at once); 0 = off",
    )
    max_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description="searches in progress at once (from arrival to answer); one more is a 503 with "
        "Retry-After at once",
    )
    load_batch_size: int = Field(256, ge=1, le=10_000)
    load_sql_writers: int = Field(
        2, ge=1, le=16, description="MySQL connections inserting load batches at once (SQLite: always 1)"
    )
    near_duplicate_threshold: float = Field(0.95, ge=0, le=1)
    phash_max_distance: int = Field(
        6,
        ge=0,
        le=7,
        description="pHash bits two images may differ in and still be the same picture (0..7: the band index "
        "finds every match up to 7)",
    )
    phash_min_cosine: float = Field(
        0.8,
        ge=0,
        le=1,
        description="a duplicate listing's phash link also needs this CLIP cosine between the two images "
        "(drops pHash collisions of different pictures); 0 = pHash alone",
    )
    scan_page_size: int = Field(
        16384,
        ge=1,
        le=16384,
        description="hits of one range search while a scan pages through its matches "
        "(Milvus caps it at 16384)",
    )
    thumbnail_cache_items: int = Field(512, ge=0)
    job_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="a job's lease: its replica renews it every second; when a replica dies, "
        "another takes its jobs over once this has passed (database clock)",
    )
    repair_interval_s: float = Field(
        600.0,
        ge=0,
        le=86400,
        description="every this many seconds (the first round within 30 s of the start) the server "
        "indexes rows a dead add or load left without their vector (added over 300 s ago); "
        "collections a job works on are skipped; 0 = off",
    )
    alias_refresh_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="searches of another replica follow a collection switch (rebuild) within this; "
        "writes always read the switch afresh",
    )
    rebuild_switch_grace_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="a switch holds writes to the name off, waits this long for writes already "
        "under way, copies the last ones over, then switches",
    )
    rebuild_fence_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="the longest a switch holds writes off (503 Retry-After); a switch that cannot "
        "finish within it gives up without switching",
    )

    # --- text in images (OCR) -------------------------------------------------
    ocr_enabled: bool = Field(
        False, description='new collections read the text in their images ("ocr" on create wins)'
    )
    ocr_threads: int = Field(1, ge=1, le=64, description="images read at once (the OCR pool's workers)")
    ocr_queue: int = Field(
        64, ge=1, le=100_000, description="images waiting for the OCR pool; more blocks the adder"
    )
    ocr_onnx_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime threads of each OCR worker")
    ocr_min_confidence: float = Field(
        0.5, ge=0, le=1, description="lines read below this are kept but not searched"
    )
    ocr_text_candidates: int = Field(
        1000, ge=1, le=100_000, description="images holding a query's characters checked per text search"
    )
    ocr_regex_timeout_ms: float = Field(
        50.0, gt=0, le=10_000, description="time one OCR pattern may take on one image's text in a scan"
    )
    search_rrf_k: int = Field(
        60, ge=1, le=10_000, description="reciprocal rank fusion constant of hybrid search"
    )
    search_weight_visual: float = Field(
        1.0, ge=0, le=100, description="weight of the CLIP ranking in hybrid search"
    )
    search_weight_text: float = Field(
        1.0, ge=0, le=100, description="weight of the OCR text ranking in hybrid search"
    )

    @field_validator("default_collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_partitioning(self) -> Settings:
        if self.time_partitions != "none" and self.source_partitions:
            raise ValueError(
                "TIME_PARTITIONS and SOURCE_PARTITIONS exclude each other (a collection partitioned "
                "by a source key cannot have partitions of its own)"
            )
        return self

    @field_validator("index_params", "search_params", "extra_models", mode="before")
    @classmethod
    def _json_dict(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        return value


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning a validation error into one readable line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper() or "settings"
        raise SettingsError(f"setting {name}: {first['msg']} (got {first.get('input')!r})") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
