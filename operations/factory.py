"""Builds encoders and stores from Settings (used by the app, CLI and benches)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from config.settings import Settings
from operations.aliases import AliasBook, ResolvingStore
from operations.context import EncoderRegistry, Services
from operations.encoding.lazy_encoder import LazyClipEncoder
from operations.encoding.model_files import ModelSpec, ModelUnavailable, locate_model
from operations.relevance.calibration_store import CalibrationBook
from operations.stores.job_store import JobStore
from operations.stores.milvus_store import MilvusVectorStore
from operations.stores.sql_alias_store import SqlAliasStore
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_writer_leases import WriterLeases

if TYPE_CHECKING:
    from operations.encoding.base import Encoder


def model_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        name=settings.model_name,
        checkpoint=settings.model_checkpoint,
        arch=settings.model_arch,
        download_root=settings.model_download_root,
        device=settings.device,
        half=settings.half_precision,
        random_init=settings.model_random_init,
        **encoder_options(settings),
    )


def encoder_options(settings: Settings) -> dict:
    """The ModelSpec fields every model of this process shares: int8, backend, cache, threads."""
    return dict(
        text_int8=settings.text_int8,
        backend=settings.encoder_backend,
        onnx_cache_dir=settings.onnx_cache_dir,
        text_threads=settings.encoder_text_threads,
        image_threads=settings.encoder_image_threads,
    )


def _checkpoint_of(spec: ModelSpec) -> Path | None:
    # The file a calibration is tied to; a model whose files are missing fails elsewhere.
    try:
        return locate_model(spec)[0]
    except ModelUnavailable:
        return None


def build_calibrations(settings: Settings) -> CalibrationBook:
    """Where the calibration of the default model and of each extra model lives."""
    checkpoints = {settings.model_name: _checkpoint_of(model_spec(settings))}
    for name, spec in settings.extra_models.items():
        checkpoints[name] = _checkpoint_of(
            ModelSpec(
                name=name,
                checkpoint=spec.get("checkpoint"),
                arch=spec.get("arch"),
                download_root=settings.model_download_root,
                random_init=bool(spec.get("random_init", False)),
            )
        )
    return CalibrationBook(checkpoints, settings.calibration_dir)


def build_encoder(settings: Settings) -> Encoder:
    return _load(model_spec(settings))


def _load(spec: ModelSpec) -> Encoder:
    # Imported here: torch and cn_clip cost hundreds of MB of memory, which
    # command-line work that never encodes (LazyClipEncoder) does not pay.
    from operations.encoding.backends import load_encoder

    return load_encoder(spec)


def build_vector_store(settings: Settings) -> MilvusVectorStore:
    return MilvusVectorStore(
        settings.milvus_uri,
        settings.milvus_token,
        settings.milvus_timeout_s,
        settings.milvus_consistency,
        settings.milvus_shards,
    )


def build_image_store(settings: Settings) -> SqlImageStore:
    return SqlImageStore.from_settings(
        settings.mysql_url, settings.sqlite_path, settings.sql_timeout_s, settings.sql_pool_size
    )


def build_services(settings: Settings, encoder=None, lazy_model: bool = False) -> Services:
    """Everything an operation needs; the stores connect lazily on first use.

    `lazy_model`: read the model's weights on the first encode (command-line
    work that may never encode); the server loads them at start instead, so
    /readyz means ready and the first search is not slow.
    """
    encoder = encoder or (LazyClipEncoder(model_spec(settings)) if lazy_model else build_encoder(settings))
    loaders = {}
    for name, spec in settings.extra_models.items():
        loaders[name] = lambda spec=spec, name=name: _load(
            ModelSpec(
                name=name,
                checkpoint=spec.get("checkpoint"),
                arch=spec.get("arch"),
                download_root=settings.model_download_root,
                device=settings.device,
                half=settings.half_precision,
                random_init=bool(spec.get("random_init", False)),
                # A random-weight model's seed (tests: a second small model that differs).
                seed=int(spec.get("seed", 0)),
                **encoder_options(settings),
            )
        )
    images = build_image_store(settings)
    # Both stores see collection names resolved through the name table (operations.aliases).
    aliases = AliasBook(SqlAliasStore(images.pool), settings.alias_refresh_s)
    return Services(
        settings=settings,
        encoders=EncoderRegistry(encoder, loaders),
        vectors=cast(MilvusVectorStore, ResolvingStore(build_vector_store(settings), aliases)),
        images=cast(SqlImageStore, ResolvingStore(images, aliases)),
        jobs=JobStore(images.pool),
        writers=WriterLeases(images.pool),
        calibrations=build_calibrations(settings),
        aliases=aliases,
    )
