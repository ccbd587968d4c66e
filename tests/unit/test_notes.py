"""Notes that stay true: nothing points outside the repository, and every silenced type error
says why."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".env", ".example", ".js", ".html", ".css", ""}
FOLDERS = ("app", "bench", "config", "datasets", "models", "operations", "scripts", "tests", ".ci")
TOP_FILES = (
    "README.md",
    "CONTRIBUTING.md",
    "pyproject.toml",
    "requirements.txt",
    ".env.example",
    "Dockerfile",
    ".dockerignore",
    "compose.yaml",
    "compose.gpu.yaml",
)
# A pointer to a document that is not in the repository.
OUTSIDE = re.compile(r"\bGUIDE\b|\bguide\b|\.\./shared|/work/shared", re.IGNORECASE)


def _text_files() -> list[Path]:
    files = [REPO / name for name in TOP_FILES if (REPO / name).is_file()]
    files += sorted((REPO / "deploy").rglob("*.yaml"))  # deployment files (tests/data holds upstream copies)
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                if "data" in path.relative_to(REPO).parts[:2] and folder == "datasets":
                    continue  # generated datasets
                files.append(path)
    return files


def test_nothing_refers_to_documents_outside_the_repository():
    here = Path(__file__).resolve()
    found = []
    for path in _text_files():
        if path.resolve() == here:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert found == []


def test_every_type_ignore_names_its_code_and_reason():
    bare = []
    for folder in ("app", "operations", "config", "datasets"):
        for path in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "type: ignore" in line and not re.search(r"# type: ignore\[[\w,-]+\]  # \S", line):
                    bare.append(f"{path.relative_to(REPO)}:{n}")
    assert bare == []
