"""Offline demo: a procedural image–caption–mask dataset (see `cgspn.demo.data`)."""

from ..data import DEFAULT_TEMPLATES
from .data import (
    DEFAULT_COLOURS,
    DEFAULT_SHAPES,
    IGNORE_INDEX,
    DemoData,
    class_names_for,
    load_demo_data,
    make_digits_dataset,
    make_shapes_dataset,
    render_example,
)

__all__ = [
    "DEFAULT_COLOURS",
    "DEFAULT_SHAPES",
    "DEFAULT_TEMPLATES",
    "IGNORE_INDEX",
    "DemoData",
    "class_names_for",
    "load_demo_data",
    "make_digits_dataset",
    "make_shapes_dataset",
    "render_example",
]
