"""Every domain error has its HTTP status: none of them reaches a caller as a 500."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from fastapi.testclient import TestClient

import app
import operations
from app.errors import STATUS, status_of
from app.main import create_app
from operations.errors import DependencyUnavailable, ServiceError
from tests.stack import TINY_ARCH, make_services, make_settings


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def _service_errors() -> list[type]:
    """Every ServiceError class defined anywhere in app/ or operations/ (all modules imported)."""
    for package in (operations, app):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    return sorted(_all_subclasses(ServiceError), key=lambda c: c.__qualname__)


@pytest.mark.parametrize("error", _service_errors(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_domain_error_has_a_status(error):
    status = status_of(error.__new__(error))
    assert status != 500, f"{error.__qualname__} has no entry in app.errors.STATUS"
    assert 400 <= status < 600


def test_the_map_names_only_service_errors():
    assert all(issubclass(cls, ServiceError) for cls in STATUS)
    assert status_of(DependencyUnavailable.__new__(DependencyUnavailable)) == 503


def test_a_missing_model_is_a_503_naming_it(tmp_path):
    """An extra model whose checkpoint is not there: creating a collection with it says so
    (503, code model_unavailable), instead of an internal error."""
    missing = tmp_path / "nowhere.pt"
    settings = make_settings(
        tmp_path, extra_models={"ghost": {"arch": str(TINY_ARCH), "checkpoint": str(missing)}}
    )
    with TestClient(create_app(settings, make_services(settings))) as client:
        r = client.post("/img/collections", json={"name": "ghosts", "model": "ghost"})
    assert r.status_code == 503, r.text
    body = r.json()["error"]
    assert body["code"] == "model_unavailable" and str(missing) in body["message"]
