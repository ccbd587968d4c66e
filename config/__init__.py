"""Settings and model configs; also the start-up check that our top-level names are ours.

The project's packages are its top-level folders (`app`, `operations`, `config`, `datasets`,
`scripts`, `bench`). `datasets` is also the name of a popular PyPI package: if that package is
installed, it can win the import (the `imgsearch` console script and any process started
outside the repository look in site-packages before this checkout). Every entry point imports
`config` first, so the check below stops such a process at once with one clear line instead
of a confusing ImportError deep inside a load. Running from the repository root
(`python -m ...`) always finds this checkout first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

OWN_PACKAGES = ("app", "operations", "datasets", "scripts", "bench")
_ROOT = Path(__file__).resolve().parent.parent


class ForeignPackageError(ImportError):
    """One of the project's top-level names resolves to another installed package."""


def check_own_packages(names: tuple[str, ...] = OWN_PACKAGES) -> None:
    """Raise ForeignPackageError when a top-level name of ours resolves outside this checkout."""
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue  # not installed beside us (e.g. bench/ absent): nothing shadows it
        origin = spec.origin or next(iter(spec.submodule_search_locations or []), "")
        location = Path(origin).resolve()
        if _ROOT / name not in (location, *location.parents):
            raise ForeignPackageError(
                f"the name {name!r} resolves to {location}, not to {_ROOT / name}: another package "
                f"called {name!r} is installed (pip uninstall {name}), or run from {_ROOT}"
            )


check_own_packages()
