"""Zero-shot prompt templates (defined once here) and the class names / templates saved next to a dataset."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METADATA_FILE = "cgspn_demo.json"  # class names and templates saved next to a dataset (first written by the demo)
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a rendering of a {}.",
    "art of the {}.",
    "a close-up photo of a {}.",
)


def save_dataset_metadata(path: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``metadata`` (e.g. ``class_names``, ``templates``) as JSON next to a saved dataset."""
    file = Path(path) / METADATA_FILE
    file.write_text(json.dumps(metadata, indent=2))
    return file


def read_dataset_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata `save_dataset_metadata` wrote next to a dataset, or ``None``."""
    file = Path(path) / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def check_templates(templates: Sequence[str]) -> list[str]:
    """Validate prompt templates: non-empty, each with exactly one ``{}`` placeholder."""
    templates = list(templates)
    if not templates:
        raise ValueError("at least one prompt template (with one '{}' placeholder for the class name) is needed")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template needs exactly one '{{}}' placeholder; got {bad}")
    return templates


__all__ = ["DEFAULT_TEMPLATES", "METADATA_FILE", "check_templates", "read_dataset_metadata", "save_dataset_metadata"]
