"""Offline demo: image–caption–mask datasets (the shipped digits, procedural shapes; see `cgspn.demo.data`) and the
end-to-end run (`cgspn.demo.pipeline`)."""

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
