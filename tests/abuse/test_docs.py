"""Every abuse knob is documented with its default where the issue asks: the README section and docs/abuse.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from api.abuse.config import AbuseSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = AbuseSettings()
KNOBS = [
    (section.name, knob.name)
    for section in dataclasses.fields(AbuseSettings)
    if dataclasses.is_dataclass(getattr(SETTINGS, section.name))
    for knob in dataclasses.fields(getattr(SETTINGS, section.name))
]


@pytest.mark.parametrize(("section", "knob"), KNOBS)
def test_every_knob_is_named_in_the_readme_and_the_guide(section, knob):
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "abuse.md").read_text()
    assert f"`{knob}" in readme, f"README.md, section Abuse controls, does not name [abuse.{section}] {knob}"
    assert re.search(rf"^\|[^\n]*`[^`\n]*\b{knob}\b[^`\n]*`", guide, re.M), f"docs/abuse.md has no table row for {knob}"


def test_the_readme_states_each_rate_limit_default():
    readme = (ROOT / "README.md").read_text()
    for knob in dataclasses.fields(SETTINGS.rate_limits):
        value = getattr(SETTINGS.rate_limits, knob.name)
        if isinstance(value, str) and "/" in value and "burst" in value:
            assert f"`{value}`" in readme, f"README.md does not give {knob.name}'s default {value!r}"
