"""The one rule every config dataclass reads its JSON by."""

from __future__ import annotations

import dataclasses


def known_fields(cls, d: dict) -> dict:
    """The entries of `d` that are fields of dataclass `cls`, dropping nulls (so the
    field's default applies) and unknown keys (checkpoints carry many)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names and v is not None}
