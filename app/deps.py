"""Dependency wiring: services built in the lifespan, injected per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from operations.context import Services
from operations.errors import DependencyUnavailable, Unauthorized
from operations.jobs import JobRunner
from operations.names import validate_name


def get_services(request: Request) -> Services:
    svc = getattr(request.app.state, "services", None)
    if svc is None:
        raise DependencyUnavailable("model", "the service is still starting")
    return svc


async def _services_dependency(request: Request) -> Services:
    # Async: an attribute read needs no worker thread (a sync dependency takes
    # one from the pool for every request).
    return get_services(request)


def get_runner(request: Request) -> JobRunner:
    runner = getattr(request.app.state, "runner", None)
    if runner is None:
        raise DependencyUnavailable("jobs", "the job runner is not running")
    return runner


# Every dependency that hands a route the services or the job runner: such a route can answer
# 503 (a store down, the service starting, a collection switching); app.contract documents it.
SERVICE_DEPENDENCIES = (get_services, _services_dependency, get_runner)


def _check_key(expected: str, given: str | None) -> None:
    if expected and not hmac.compare_digest((given or "").encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-API-Key")


def require_api_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Writes (load, add, delete, drop) need X-API-Key when API_KEY is set."""
    _check_key(get_services(request).settings.api_key, x_api_key)


async def require_metrics_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """/metrics needs X-API-Key when API_KEY is set and METRICS_REQUIRE_API_KEY is true.

    Async, and from the app's settings rather than the services: a scrape is answered while
    the service starts and while every worker thread waits on a hung store.
    """
    settings = request.app.state.settings
    if settings.metrics_require_api_key:
        _check_key(settings.api_key, x_api_key)


SvcDep = Annotated[Services, Depends(_services_dependency)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
WriteAccess = Depends(require_api_key)
MetricsAccess = Depends(require_metrics_key)


def collection_name(svc: Services, name: str | None) -> str:
    return validate_name(name or svc.settings.default_collection)
