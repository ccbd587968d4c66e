"""Fixtures that build the service on each real backend pair.

"lite" = Milvus Lite file + SQLite (the embedded default);
"server" = the Milvus 2.3 server + MariaDB (what production looks like).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.stack import make_services, make_settings

BACKENDS = ["lite", "server"]


def backend_settings(request, tmp_path, kind: str, **overrides):
    if kind == "lite":
        return make_settings(tmp_path, **overrides)
    milvus = request.getfixturevalue("milvus_server")
    db = request.getfixturevalue("mariadb")
    return make_settings(tmp_path, milvus.uri, db.create_database(), **overrides)


@pytest.fixture(params=BACKENDS)
def stack_settings(request, tmp_path):
    return backend_settings(request, tmp_path, request.param)


@pytest.fixture(scope="module", params=BACKENDS)
def module_client(request, tmp_path_factory):
    """One app per backend for a whole module (creating Milvus collections takes seconds)."""
    settings = backend_settings(request, tmp_path_factory.mktemp("stack"), request.param)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        c.services = svc
        yield c


@pytest.fixture
def lite_services(tmp_path):
    """Services on Milvus Lite + SQLite alone (a path only the embedded default has)."""
    svc = make_services(make_settings(tmp_path))
    yield svc
    svc.vectors.close()
    svc.images.close()


@pytest.fixture
def services(stack_settings):
    svc = make_services(stack_settings)
    yield svc
    svc.vectors.close()
    svc.images.close()


@pytest.fixture
def client(stack_settings):
    svc = make_services(stack_settings)
    with TestClient(create_app(stack_settings, svc)) as c:
        c.services = svc
        yield c
