"""The OpenAPI document lists every status each route can return, with the shared error schema.

The expected statuses are derived, not listed here: from the error map (app/errors.py
STATUS), from what a route depends on (app/contract.py STRUCTURAL) and from the domain
errors its own code raises (read from the source of the route and the module functions
it calls). A route that starts raising an error its documentation does not list fails
this test. (Statuses raised deeper, in operations and stores, are declared with
`raises(...)` and checked at run time by the schemathesis run in tests/e2e/test_fuzz.py.)
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI

from app.contract import DESCRIPTIONS, ErrorBody, api_routes, document_errors, expected_statuses, raises
from app.errors import STATUS
from app.main import ROUTE_MODULES, create_app
from operations import errors as e
from tests.stack import make_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    return create_app(make_settings(tmp_path_factory.mktemp("openapi"))).openapi()


def _service_error(name: str) -> type[e.ServiceError] | None:
    cls = getattr(e, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, e.ServiceError) else None


def raised_in_code(endpoint) -> set[int]:
    """Statuses of the ServiceErrors `endpoint` raises itself or through the functions it calls:
    those of its module, and one step further, those of a module it imports them from in app/
    or operations/ (a route's work moved below HTTP, e.g. operations.image_files)."""
    trees: dict[str, dict] = {}

    def functions_of(module) -> dict:
        if module.__name__ not in trees:
            tree = ast.parse(inspect.getsource(module))
            trees[module.__name__] = {
                n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
        return trees[module.__name__]

    todo = [(inspect.getmodule(endpoint), endpoint.__name__, 0)]
    seen, statuses = set(), set()
    while todo:
        module, name, hops = todo.pop()
        if (module.__name__, name) in seen:
            continue
        seen.add((module.__name__, name))
        functions = functions_of(module)
        if name not in functions:
            target = getattr(module, name, None)
            home = inspect.getmodule(target) if callable(target) else None
            if hops == 0 and home is not None and home.__name__.startswith(("app.", "operations.")):
                todo.append((home, name, 1))
            continue
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                cls = _service_error(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
                if cls is not None:
                    statuses.add(next(STATUS[c] for c in cls.__mro__ if c in STATUS))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append((module, node.func.id, hops))
    return statuses


def endpoint_is_read(endpoint) -> bool:
    """The reader finds the endpoint's own definition (sync or async)."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(endpoint)))
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == endpoint.__name__
        for n in ast.walk(tree)
    )


def documentation_gaps(route, schema: dict) -> list[str]:
    """What the OpenAPI document of `route` lacks; empty when it is complete."""
    gaps = []
    assert endpoint_is_read(route.endpoint), route.endpoint
    want = expected_statuses(route) | raised_in_code(route.endpoint)
    for method in route.methods:
        op = schema["paths"][route.path_format][method.lower()]
        documented = {int(s) for s in op["responses"] if s.isdigit()}
        for status in sorted(want - documented):
            gaps.append(f"{method} {route.path_format}: {status} not documented")
        for status in sorted(s for s in documented if s >= 400):
            response = op["responses"][str(status)]
            content = response.get("content", {}).get("application/json", {})
            refs = re.findall(r"#/components/schemas/(\w+)", str(content.get("schema")))
            if "ErrorBody" not in refs:
                gaps.append(f"{method} {route.path_format}: {status} lacks the shared error schema")
            if "example" not in content and route.path_format != "/readyz":
                gaps.append(f"{method} {route.path_format}: {status} has no example")
            if status == 503 and "Retry-After" not in response.get("headers", {}):
                gaps.append(f"{method} {route.path_format}: 503 does not document Retry-After")
    return gaps


def test_every_status_of_the_error_map_is_described():
    assert set(STATUS.values()) <= set(DESCRIPTIONS), "add the status to app.contract.DESCRIPTIONS"
    for status, (_, code, message) in DESCRIPTIONS.items():
        ErrorBody.model_validate({"error": {"code": code, "message": message, "details": {}}})
        assert 400 <= status < 600


def test_every_route_documents_every_status_it_can_return(schema):
    routes = list(api_routes(m.router for m in ROUTE_MODULES))
    assert len(routes) >= 20
    gaps = [gap for route in routes for gap in documentation_gaps(route, schema)]
    assert not gaps, "\n".join(gaps)
    pairs = sum(
        1
        for route in routes
        for s in schema["paths"][route.path_format][next(iter(route.methods)).lower()]["responses"]
        if int(s) >= 400
    )
    assert pairs >= 100  # 28 route-status pairs were undocumented before


def test_the_check_fails_for_a_route_whose_documentation_fell_behind():
    router = APIRouter()

    @router.post("/behind/{name}", responses=raises(e.NotFound))
    def behind(name: str) -> dict:
        if name == "x":
            raise e.Conflict("a new failure nobody documented")
        return _helper(name)

    document_errors([router])
    app = FastAPI()
    app.include_router(router)
    route = next(api_routes([router]))
    gaps = documentation_gaps(route, app.openapi())
    assert gaps == ["POST /behind/{name}: 409 not documented", "POST /behind/{name}: 415 not documented"]


def _helper(name: str) -> dict:
    if not name:
        raise e.UnsupportedMedia("reached through a helper of the module")
    return {}


def test_the_readme_error_table_lists_every_status():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("| status |") :]
    table = section[: section.index("\n\n")]
    listed = {int(m) for m in re.findall(r"^\| (\d{3}) ", table, re.M)}
    assert listed >= set(DESCRIPTIONS) | {405}, sorted(set(DESCRIPTIONS) | {405} - listed)
    assert listed <= set(DESCRIPTIONS) | {405, 408, 500}


def test_error_bodies_match_the_documented_schema(tmp_path):
    from fastapi.testclient import TestClient

    from tests.stack import make_services

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, make_services(settings))) as client:
        for response in (
            client.post("/img/search", json={"query": ""}),
            client.get("/img/images/demo/0"),
            client.get("/img/collections/x;y"),
            client.get("/img/collections/nope_nope"),
            client.post("/img/serch", json={}),
        ):
            assert response.status_code >= 400
            ErrorBody.model_validate(response.json())


def test_this_module_reads_route_code(schema):
    """The source reader sees the raises of app/routes (guards against it silently finding nothing)."""
    from app.routes import images, jobs, search

    assert 422 in raised_in_code(images.get_image)  # size not in THUMB_SIZES
    assert 404 in raised_in_code(images.get_meta)  # through operations.image_files.image_row
    assert 400 in raised_in_code(jobs.load)
    assert endpoint_is_read(search.text_search)
    assert textwrap.dedent(inspect.getsource(images.add_folder_job)).count("raise") >= 1


def test_every_route_given_the_services_or_the_runner_documents_503(schema):
    """A route handed the services (however the dependency is spelt) or the job runner can find
    a store down or a collection switching: 503 must be in its documentation. Only the probes
    and the page need neither."""
    without = sorted(
        f"{method.upper()} {path}"
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if "503" not in op["responses"]
    )
    assert without == ["GET /healthz", "GET /metrics"], without
    assert "503" in schema["paths"]["/img/collections"]["post"]["responses"]
