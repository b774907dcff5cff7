"""Moderation rules: the data file ``data/rules.json``, read once at import.

The rules are data, not code, so an operator changes them without touching the
capabilities (a changed file is a new revision: ``thaw deploy`` rolls it out). The
file is read through ``importlib.resources``, so it works from source and from a
snapshot alike. ``verdict`` is a pure function of the rules, the image's name and
what ``imaging.measure`` found: the same image always gets the same verdict.
"""

from __future__ import annotations

import fnmatch
from importlib import resources

import msgspec

from .imaging import Measured

__all__ = ["RULES", "Rules", "Verdict", "verdict"]


class Brightness(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min: float = 0.0
    max: float = 255.0


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema_version: int
    max_upload_bytes: int
    max_pixels: int
    resize_to: int
    thumbnail: int
    min_side: int = 1
    max_aspect: float = 10.0
    brightness: Brightness = Brightness()
    blocked_names: list[str] = []

    def __post_init__(self) -> None:
        if self.schema_version != 1:
            raise ValueError(f"rules schema_version {self.schema_version} is not 1")
        for name in ("max_upload_bytes", "max_pixels", "resize_to", "thumbnail", "min_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"rules {name} must be at least 1")


class Verdict(msgspec.Struct, frozen=True):
    approved: bool
    reasons: list[str]


def load_rules() -> Rules:
    text = resources.files(__package__).joinpath("data/rules.json").read_bytes()
    return msgspec.json.decode(text, type=Rules)


RULES = load_rules()


def verdict(name: str, measured: Measured, rules: Rules = RULES) -> Verdict:
    reasons = []
    lowered = name.lower()
    blocked = [p for p in rules.blocked_names if fnmatch.fnmatchcase(lowered, p)]
    if blocked:
        reasons.append(f"the name matches the blocked pattern {blocked[0]!r}")
    if min(measured.width, measured.height) < rules.min_side:
        reasons.append(f"a side is shorter than {rules.min_side} pixels")
    aspect = max(measured.width, measured.height) / max(min(measured.width, measured.height), 1)
    if aspect > rules.max_aspect:
        reasons.append(f"the aspect ratio {aspect:.1f} is above {rules.max_aspect:g}")
    if not rules.brightness.min <= measured.brightness <= rules.brightness.max:
        reasons.append(
            f"the mean brightness {measured.brightness:g} is outside "
            f"{rules.brightness.min:g}..{rules.brightness.max:g}"
        )
    return Verdict(approved=not reasons, reasons=reasons)
