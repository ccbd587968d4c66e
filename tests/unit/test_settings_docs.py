"""Every setting is documented where the README says it is: .env.example and
the README's Settings table (a user reads those, not config/settings.py)."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _names() -> list[str]:
    return [name.upper() for name in Settings.model_fields]


def test_every_setting_is_in_env_example():
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert sorted(set(_names()) - documented) == []


def test_every_setting_is_in_the_readme_settings_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert sorted(set(_names()) - documented) == []
