"""The layers, read from the source with `ast`: a module that imports upward fails here.

    config/      settings: imports nothing of ours outside config/
    datasets/    Chinese-CLIP formats: nothing of ours outside datasets/
    operations/  use cases, domain, encoders, stores: never app/, scripts/, bench/, tests/ or HTTP
      domain, errors, names, bounds, deadline, metrics: only each other and config/ (the bottom)
      stores/    only the domain, the store bases and their own family (no store imports another)
    app/         HTTP: never scripts/, bench/ or tests/
    scripts/     never tests/ (dev_services is shared by tests and bench)
    bench/       never tests/ (servers come from scripts.dev_services)
and no import cycle among our modules, counting imports inside functions too (a deferred import
still ties two modules together; only `if TYPE_CHECKING:` imports are left out).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = ("app", "bench", "config", "datasets", "operations", "scripts", "tests")
HTTP = ("fastapi", "starlette", "uvicorn", "httpx")
# Store modules that belong together: a family may import its own members and the bases only.
STORE_BASES = {"operations.stores.vector_base", "operations.stores.image_base", "operations.stores.outage"}
STORE_FAMILIES = {
    "milvus": {
        "operations.stores.milvus_store",
        "operations.stores.milvus_filter",
        "operations.stores.pymilvus_guard",
    },
    "sql": {
        "operations.stores.sql_image_store",
        "operations.stores.sql_pool",
        "operations.stores.mysql_prepared",
        "operations.stores.job_store",
        "operations.stores.sql_ocr_store",
        "operations.stores.sql_duplicate_store",
        "operations.stores.sql_alias_store",
        "operations.stores.sql_writer_leases",
    },
    "memory": {"operations.stores.memory_vector_store"},
}
DOMAIN = {
    "operations.domain",
    "operations.errors",
    "operations.names",
    "operations.bounds",
    "operations.deadline",
    # The metric definitions import nothing of ours: every layer (the stores too) counts into them.
    "operations.metrics",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for top in OURS
        for p in sorted((REPO / top).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


@functools.cache
def parsed(path: Path) -> ast.Module:
    """The syntax tree of `path`, parsed once for this module's tests (each reads every module)."""
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@pytest.fixture(scope="module", autouse=True)
def _forget_trees() -> Iterator[None]:
    """The trees are hundreds of thousands of objects: kept past this module, every later
    garbage collection of the run would walk them."""
    yield
    parsed.cache_clear()


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, module: str, runtime_only: bool = False) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in `path`, relative imports resolved.

    `from pkg import name` yields `pkg.name` when that is one of our modules, else `pkg`.
    runtime_only: leave out imports under `if TYPE_CHECKING:` (never executed)."""
    tree = parsed(path)
    known = our_modules_cache()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        # Statements only: an import is a statement, and no expression holds one.
        stack = [node]
        while stack:
            for child in ast.iter_child_nodes(stack.pop()):
                if isinstance(child, ast.expr) or (runtime_only and _type_checking_block(child)):
                    continue
                yield child
                stack.append(child)

    for node in walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno


_CACHE: dict[str, Path] = {}


def our_modules_cache() -> dict[str, Path]:
    if not _CACHE:
        _CACHE.update(our_modules())
    return _CACHE


def top(name: str) -> str:
    return name.split(".")[0]


def violations(modules: dict[str, Path] | None = None) -> list[str]:
    """Every import that breaks a rule, in `modules` (default: all of ours)."""
    found = []
    for module, path in (modules or our_modules_cache()).items():
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        for imported, line in imports(path, module):
            where = f"{shown}:{line}: {module} imports {imported}"
            layer, target = top(module), top(imported)
            if target not in OURS and target not in HTTP:
                continue
            if layer in ("config", "datasets") and target != layer:
                found.append(f"{where} ({layer}/ imports nothing of ours outside {layer}/)")
            elif layer == "operations":
                if target in ("app", "scripts", "bench", "tests") or target in HTTP:
                    found.append(f"{where} (operations never import app, scripts, bench, tests or HTTP)")
                elif module in DOMAIN and target == "operations" and imported not in DOMAIN:
                    found.append(f"{where} (domain, errors and names import only each other and config)")
                elif module.startswith("operations.stores.") and imported.startswith("operations."):
                    family = next((f for f in STORE_FAMILIES.values() if module in f), set())
                    allowed = DOMAIN | STORE_BASES | family | {"operations.stores"}
                    if imported not in allowed:
                        found.append(
                            f"{where} (a store imports the domain, the bases and its own family only)"
                        )
            elif layer == "app" and target in ("scripts", "bench", "tests"):
                found.append(f"{where} (app never imports scripts, bench or tests)")
            elif layer == "scripts" and target == "tests":
                found.append(f"{where} (scripts never import tests)")
            elif layer == "bench" and target == "tests":
                found.append(f"{where} (bench never imports tests: use scripts.dev_services)")
    return sorted(set(found))


def test_no_layer_imports_upward() -> None:
    assert violations() == []


def test_no_import_cycle() -> None:
    modules = our_modules_cache()
    graph = {
        m: {i for i, _ in imports(p, m, runtime_only=True) if i in modules and i != m}
        for m, p in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("config.settings", "from operations.errors import BadRequest\n", "config/"),
        ("datasets.formats", "import operations.load\n", "datasets/"),
        ("operations.search", "from fastapi import HTTPException\n", "operations never"),
        ("operations.load", "from scripts.dev_services import free_port\n", "operations never"),
        (
            "operations.stores.sql_image_store",
            "from operations.stores.milvus_filter import build_filter\n",
            "store",
        ),
        ("operations.domain", "from operations.search import search_text\n", "domain"),
        ("bench.bench_load", "from tests.stack import jpeg\n", "bench never"),
        ("app.main", "from scripts.cli import main\n", "app never"),
        ("scripts.cli", "from tests.stack import jpeg\n", "scripts never"),
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, module, source, rule) -> None:
    """Each rule fires on a planted violation (so the test above can fail)."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    found = violations({module: planted})
    assert any(rule in v for v in found), (module, source, found)


def test_every_store_module_has_a_family() -> None:
    """A new store module must be placed in a family (or be a base) to be checked at all."""
    stores = {m for m in our_modules_cache() if m.startswith("operations.stores.")}
    placed = STORE_BASES.union(*STORE_FAMILIES.values())
    assert stores - placed == set()


def test_domain_types_come_from_the_domain_module() -> None:
    """The store interfaces use the domain types; importing them from there is a detour that
    hides where a type lives."""
    import operations.domain as domain

    names = {n for n in vars(domain) if not n.startswith("_")}
    detours = []
    for module, path in our_modules_cache().items():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.module in STORE_BASES:
                for alias in node.names:
                    if alias.name in names:
                        detours.append(f"{module}: {alias.name} from {node.module}")
    assert detours == []
