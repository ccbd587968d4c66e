"""The FastAPI application: lifespan, middleware, routers, static page."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from app import errors
from app.contract import document_errors
from app.limits import BodyLimitMiddleware
from app.observability import RequestObservability
from app.routes import collections, duplicates, health, images, jobs, metrics, scan, search, web
from config.settings import Settings, get_settings
from operations.context import Services
from operations.domain import check_model
from operations.errors import DependencyUnavailable, ServiceError
from operations.factory import build_services
from operations.jobs import JobRunner
from operations.ocr import close_ocr
from operations.tracing import configure_logging
from operations.tracing import install as install_log_ids
from operations.unindexed_repair import UnindexedRepair

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"
ROUTE_MODULES = (health, metrics, search, images, collections, jobs, scan, duplicates, web)


class ImageSearchApp(FastAPI):
    """FastAPI with `RequestObservability` around everything, Starlette's error middleware
    included (app.add_middleware goes inside it, and would miss the 500s it answers)."""

    # The routes with their templates (FastAPI wraps an included router's in an object without one).
    label_routes: list[BaseRoute] = []

    def build_middleware_stack(self):
        return RequestObservability(super().build_middleware_stack(), self.label_routes)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the app. Tests may pass ready-made `services` (e.g. in-memory stores)."""
    settings = settings or (services.settings if services else get_settings())
    install_log_ids()  # every log record carries the request id (operations/tracing.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Blocking work (decode, SQL, Milvus) runs on anyio's thread pool,
        # bounded by WORKER_THREADS. Encoding is not bounded by it: searches
        # await the encoder batchers (their own threads, a bounded queue), so
        # the pool can be sized for I/O waits: a blocking store call should
        # not queue behind other requests' store calls.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        svc: Services = (
            services if services is not None else await anyio.to_thread.run_sync(build_services, settings)
        )
        app.state.services = svc
        runner = None
        if svc.jobs is not None:
            try:
                await anyio.to_thread.run_sync(svc.jobs.ensure_tables)
            except Exception as exc:  # SQL down at start: serve, report via /readyz, retry on use
                log.error("job table not ready: %s", exc)
            # Jobs left by a replica that died (this one before a restart, or another) are taken
            # over by the runner's watcher once their lease lapses: other replicas may be
            # running theirs right now, so nothing is marked at start.
            runner = JobRunner(svc)
        app.state.runner = runner
        # Rows a dead add or load left without their vector are indexed by this replica too
        # (REPAIR_INTERVAL_S; operations/unindexed_repair.py).
        repair = UnindexedRepair(svc, runner)
        repair.start()
        app.state.unindexed_repair = repair
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(repair.stop)
            if runner is not None:
                await anyio.to_thread.run_sync(runner.shutdown)
            svc.close_serving()
            await anyio.to_thread.run_sync(close_ocr, svc)
            svc.vectors.close()
            svc.images.close()

    app = ImageSearchApp(
        title="以文搜图 / 以图搜图 — Chinese-CLIP image search",
        version="1.0.0",
        description="Search images by Chinese text or by image, over Milvus (vectors) and MySQL/SQLite "
        "(images). Scores are cosine similarities, not probabilities. Every error answers "
        '{"error": {"code", "message", "details"}}; each route lists the statuses it can return.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    single_image_limit = settings.max_upload_bytes + 1024 * 1024
    batch_limit = settings.max_request_bytes

    def body_limit(path: str) -> int:
        if path.startswith("/img/search/image"):
            return single_image_limit
        if path.startswith("/img/images/"):
            return batch_limit
        return 8 * 1024 * 1024

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, read_timeout_s=settings.body_read_timeout_s)
    routers = [module.router for module in ROUTE_MODULES if module is not metrics or settings.metrics_enabled]
    document_errors(routers)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.label_routes = [
        *(r for router in routers for r in router.routes),
        *(r for r in app.routes if hasattr(r, "path_format")),
    ]
    return app


def main() -> None:
    """`python -m app.main`: serve with uvicorn (one worker: Milvus Lite is single-process)."""
    import argparse

    import uvicorn

    from config.settings import SettingsError, load_settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    configure_logging()
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        services = preflight(settings)
    except (SettingsError, ServiceError) as exc:
        raise SystemExit(f"error: {getattr(exc, 'message', exc)}") from None
    # log_config=None: uvicorn's lines go through our handler (LOG_FORMAT); its access log is
    # replaced by app.access, whose lines carry the request id (app/observability.py).
    uvicorn.run(
        create_app(settings, services),
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
    )


def preflight(settings: Settings) -> Services:
    """Load the model and check the default collection's against the models served.

    A mismatch (another model or dim) stops the start with one line, instead
    of failing every request later.
    """
    svc = build_services(settings)
    try:
        if svc.vectors.has_collection(settings.default_collection):
            info = svc.vectors.describe_meta(settings.default_collection)
            # A rebuild may have switched the default collection's name to another model the
            # server also runs (EXTRA_MODELS): its searches use that model.
            served = info.model_name in svc.encoders.names()
            encoder = svc.encoders.get(info.model_name) if served else svc.encoder
            check_model(info, encoder.model_name, encoder.dim)
    except DependencyUnavailable as exc:
        log.warning("could not check the default collection now: %s", exc.message)
    return svc


if __name__ == "__main__":
    main()
