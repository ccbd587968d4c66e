"""The project installs as a package: dependencies agree with the lock, `imgsearch` runs, no
module edits sys.path, and a foreign `datasets` package is refused at start-up."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import imgsearch

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt pins exact versions: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_and_pyproject_name_the_same_packages_and_agree():
    project = PYPROJECT["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    lock = _lock()
    assert {canonicalize_name(r.name) for r in declared} == set(lock)
    for req in declared:
        assert req.specifier.contains(lock[canonicalize_name(req.name)], prereleases=True), (
            f"requirements.txt pins {req.name}=={lock[canonicalize_name(req.name)]}, outside {req}"
        )


def test_every_imgsearch_command_names_a_module():
    for module in [*imgsearch.COMMANDS.values(), *imgsearch.BENCHES.values(), "scripts.cli"]:
        assert importlib.util.find_spec(module) is not None, module


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO, **kwargs)


def test_imgsearch_help_as_module_and_console_script():
    out = _run([sys.executable, "-m", "scripts.imgsearch", "--help"])
    assert out.returncode == 0, out.stderr
    for command in ("serve", "load", "search", "eval", "bench"):
        assert command in out.stdout
    # A subcommand's --help is the module's own (the same flags as `python -m`).
    out = _run([sys.executable, "-m", "scripts.imgsearch", "eval", "--help"])
    assert out.returncode == 0 and "build-lmdb" in out.stdout, out.stderr
    out = _run([sys.executable, "-m", "scripts.imgsearch", "nonsense"])
    assert out.returncode == 2 and "unknown command" in out.stderr
    exe = shutil.which("imgsearch") or str(Path(sys.executable).parent / "imgsearch")
    if not Path(exe).exists():
        pytest.fail("the imgsearch console script is not installed: run scripts/setup.sh (pip install -e .)")
    out = _run([exe, "--help"])
    assert out.returncode == 0 and "imgsearch serve" in out.stdout, out.stderr


def test_no_module_edits_sys_path_or_exports_pythonpath():
    offenders = []
    folders = ("app", "bench", "config", "datasets", "operations", "scripts", "tests", ".ci")
    for path in [p for folder in folders for p in (REPO / folder).rglob("*")]:
        if path.suffix not in (".py", ".sh", "") or not path.is_file() or path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"sys\.path\.(insert|append)|PYTHONPATH", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_a_foreign_datasets_package_stops_the_start(tmp_path):
    """With a PyPI-like `datasets` ahead of ours on sys.path, importing our config (every entry
    point's first import) fails with one line that names both places."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}
    out = subprocess.run(
        [sys.executable, "-c", "import config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 1
    assert (
        "ForeignPackageError" in out.stderr
        and str(fake) in out.stderr
        and "pip uninstall datasets" in out.stderr
    )
    # Without the foreign package the same import works from that directory.
    env["PYTHONPATH"] = str(REPO)
    ok = subprocess.run(
        [sys.executable, "-c", "import config, datasets; print(datasets.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == str(REPO / "datasets" / "__init__.py"), ok.stderr
