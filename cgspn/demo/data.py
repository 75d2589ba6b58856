"""The offline demo's image–caption–mask datasets: real handwritten digits (the demo's default) and procedural shapes.

`make_digits_dataset`: the package's shipped digits scans (`cgspn.data.digits`), upsampled, with a mask of the ink
(``1 + digit``; 0 = background) and a caption from `cgspn.data.digits.DIGIT_TEMPLATES`.

`make_shapes_dataset`: procedural, seeded shapes. Every example shows one coloured shape (the class is
``"<colour> <shape>"``, e.g. ``"red circle"``) at a random position, size and rotation on a random low-saturation
texture, with pixel noise. Each example carries:

* ``image``: an RGB ``datasets.Image`` (PNG bytes, embedded by ``save_to_disk``),
* ``mask``: a single-channel ``datasets.Image`` with 0 = background and ``1..S`` = the shape category
  (255 is never produced, so it stays free as the ignore index),
* ``label``: a ``ClassLabel`` over the colour × shape classes,
* ``caption``: a prompt template (`cgspn.data.DEFAULT_TEMPLATES`, the zero-shot prompts) filled with the class name,
* ``shape`` and ``colour``: ``ClassLabel`` factors of the class.

The generator is deterministic: example ``i`` of a split depends only on ``(seed, split, i)`` and the options.

Example:

```python
>>> from cgspn.demo.data import make_shapes_dataset
>>> demo = make_shapes_dataset(num_train=64, num_validation=16, num_test=16, image_size=64, seed=0)
>>> demo.dataset["train"][0]["caption"], demo.class_names[:2]
```
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ..data import DEFAULT_TEMPLATES, METADATA_FILE, check_templates, read_dataset_metadata, save_dataset_metadata
from ..data.digits import DIGIT_NAMES, DIGIT_TEMPLATES, digit_image, digits_split, load_digits

if TYPE_CHECKING:
    from datasets import DatasetDict

# RGB anchors of the object colours; chosen far apart from each other and from the grey-ish backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 185, 55),
    "blue": (35, 75, 225),
    "yellow": (235, 215, 30),
    "purple": (150, 45, 205),
    "orange": (250, 135, 15),
    "cyan": (30, 210, 220),
    "pink": (245, 110, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
IGNORE_INDEX = 255


@dataclass
class DemoData:
    """A generated demo dataset and the vocabulary needed to use it.

    Attributes:
        dataset: `datasets.DatasetDict` with ``train``/``validation``/``test`` splits.
        class_names: class names in label order (``"zero"``, ... or ``"red circle"``, ...).
        templates: prompt templates with one ``{}`` placeholder for the class name.
        segmentation_labels: mask value -> name, ``0`` is ``"background"``.
    """

    dataset: DatasetDict
    class_names: list[str]
    templates: list[str]
    segmentation_labels: dict[int, str] = field(default_factory=dict)

    def save_to_disk(self, path: str | os.PathLike) -> Path:
        """Save the splits with `datasets.DatasetDict.save_to_disk` plus the metadata (`cgspn.data`) next to them."""
        path = Path(path)
        self.dataset.save_to_disk(str(path))
        save_dataset_metadata(
            path,
            class_names=self.class_names,
            templates=self.templates,
            segmentation_labels={str(k): v for k, v in self.segmentation_labels.items()},
            ignore_index=IGNORE_INDEX,
        )
        return path


def load_demo_data(path: str | os.PathLike) -> DemoData:
    """Load a dataset written by `DemoData.save_to_disk` (offline, from local files only)."""
    from datasets import load_from_disk

    meta = read_dataset_metadata(path)
    if meta is None:
        raise FileNotFoundError(f"{path} has no {METADATA_FILE}: it was not written by DemoData.save_to_disk")
    return DemoData(
        dataset=load_from_disk(str(path)),
        class_names=list(meta["class_names"]),
        templates=list(meta["templates"]),
        segmentation_labels={int(k): v for k, v in meta["segmentation_labels"].items()},
    )


def class_names_for(shapes: Sequence[str], colours: Sequence[str]) -> list[str]:
    """Class names in label order: colour-major, e.g. ``["red circle", "red square", ..., "blue circle", ...]``."""
    return [f"{colour} {shape}" for colour in colours for shape in shapes]


def _unit_polygon(shape: str) -> list[tuple[list[tuple[float, float]], int]]:
    """Polygons of a shape in unit coordinates (radius ~1), each with fill 1 (draw) or 0 (cut a hole)."""

    def regular(n: int, radius: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
        return [
            (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "circle":
        return [(regular(48), 1)]
    if shape == "ring":
        return [(regular(48), 1), (regular(48, 0.55), 0)]
    if shape == "square":
        return [(regular(4, math.sqrt(2) * 0.8, math.pi / 4), 1)]
    if shape == "diamond":
        return [([(0.0, -1.0), (0.65, 0.0), (0.0, 1.0), (-0.65, 0.0)], 1)]
    if shape == "triangle":
        return [(regular(3, 1.0, -math.pi / 2), 1)]
    if shape == "hexagon":
        return [(regular(6), 1)]
    if shape == "star":
        outer, inner = regular(5, 1.0, -math.pi / 2), regular(5, 0.45, -math.pi / 2 + math.pi / 5)
        return [([p for pair in zip(outer, inner, strict=True) for p in pair], 1)]
    if shape == "cross":
        a, b = 0.32, 0.95
        pts = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
        return [(pts, 1)]
    raise ValueError(f"unknown shape {shape!r}; available: {', '.join(SHAPES)}")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random low-saturation background texture (flat, stripes, checkerboard or blotches), float (H, W, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(70, 170)
    tint = rng.uniform(-12, 12, size=3)
    kind = rng.integers(4)
    contrast = rng.uniform(10, 30)
    if kind == 0:  # flat
        pattern = np.zeros_like(xx)
    elif kind == 1:  # stripes at a random angle and frequency
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 8)
        pattern = np.sign(np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle))))
    elif kind == 2:  # checkerboard
        cells = rng.integers(3, 9)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    else:  # smooth blotches: a sum of a few random cosines
        pattern = np.zeros_like(xx)
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * math.pi)
            pattern += np.cos(2 * math.pi * (fx * xx + fy * yy) + ph) / 3
    grey = base + contrast * pattern
    return grey[..., None] + tint[None, None, :]


def render_example(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    image_size: int = 64,
    mask_value: int = 1,
    noise_std: float = 8.0,
    scale_range: tuple[float, float] = (0.2, 0.38),
) -> tuple[Image.Image, Image.Image]:
    """Render one image and its mask.

    Args:
        rng: source of all randomness for this example.
        shape: one of `SHAPES`.
        colour: one of `COLOURS`.
        image_size: side length in pixels (square images).
        mask_value: value written into the mask where the shape is (background is 0).
        noise_std: standard deviation of the Gaussian pixel noise (0-255 scale).
        scale_range: shape radius as a fraction of ``image_size``.

    Returns:
        ``(image, mask)``: an RGB image and an ``"L"`` mask of the same size.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; available: {', '.join(COLOURS)}")
    if not 0 < mask_value < IGNORE_INDEX:
        raise ValueError(f"mask_value must be in 1..254, got {mask_value}")
    polygons = _unit_polygon(shape)
    radius = rng.uniform(*scale_range) * image_size
    cx, cy = (rng.uniform(radius, image_size - radius) for _ in range(2))
    theta = rng.uniform(0, 2 * math.pi)
    cos_t, sin_t = math.cos(theta), math.sin(theta)

    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    for points, fill in polygons:
        xy = [(cx + radius * (x * cos_t - y * sin_t), cy + radius * (x * sin_t + y * cos_t)) for x, y in points]
        draw.polygon(xy, fill=mask_value if fill else 0)

    inside = np.asarray(mask, dtype=np.uint8)[..., None] > 0
    rgb = np.asarray(COLOURS[colour], dtype=np.float32) + rng.uniform(-18, 18, size=3)
    pixels = np.where(inside, rgb[None, None, :], _texture(rng, image_size))
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    return image, mask


def _features(class_names: list[str], shapes: Sequence[str], colours: Sequence[str]):
    from datasets import ClassLabel, Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "mask": ImageFeature(),
            "label": ClassLabel(names=class_names),
            "caption": Value("string"),
            "shape": ClassLabel(names=list(shapes)),
            "colour": ClassLabel(names=list(colours)),
        }
    )


def _generate_split(
    split_id: int,
    num_examples: int,
    seed: int,
    shapes: Sequence[str],
    colours: Sequence[str],
    templates: Sequence[str],
    image_size: int,
    noise_std: float,
) -> dict[str, list]:
    class_names = class_names_for(shapes, colours)
    # Balanced labels in a seeded random order.
    labels = np.random.default_rng([seed, split_id]).permutation(np.arange(num_examples) % len(class_names))
    columns: dict[str, list] = {k: [] for k in ("image", "mask", "label", "caption", "shape", "colour")}
    for index, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, split_id, index])
        colour_id, shape_id = divmod(label, len(shapes))
        image, mask = render_example(
            rng, shapes[shape_id], colours[colour_id], image_size, mask_value=shape_id + 1, noise_std=noise_std
        )
        template = templates[int(rng.integers(len(templates)))]
        columns["image"].append(image)
        columns["mask"].append(mask)
        columns["label"].append(label)
        columns["caption"].append(template.format(class_names[label]))
        columns["shape"].append(shape_id)
        columns["colour"].append(colour_id)
    return columns


def make_shapes_dataset(
    num_train: int = 2048,
    num_validation: int = 256,
    num_test: int = 512,
    image_size: int = 64,
    seed: int = 0,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colours: Sequence[str] = DEFAULT_COLOURS,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    noise_std: float = 8.0,
) -> DemoData:
    """Generate the demo dataset.

    Args:
        num_train / num_validation / num_test: examples per split (labels are balanced within each split).
        image_size: side length of the square images and masks.
        seed: the only source of randomness; same arguments give identical datasets.
        shapes: shape names (subset of `SHAPES`); mask value ``i + 1`` is ``shapes[i]``.
        colours: colour names (subset of `COLOURS`); ``len(shapes) * len(colours)`` classes.
        templates: caption templates, each with exactly one ``{}`` placeholder for the class name.
        noise_std: Gaussian pixel noise standard deviation.

    Returns:
        `DemoData` with the `datasets.DatasetDict`, class names, templates and segmentation label names.
    """
    from datasets import Dataset, DatasetDict

    shapes, colours, templates = list(shapes), list(colours), list(templates)
    if not shapes or not colours:
        raise ValueError("shapes and colours must both be non-empty")
    for name, values in (("shapes", shapes), ("colours", colours)):
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate entries in {name}: {values}")
    for shape in shapes:
        _unit_polygon(shape)  # raises on unknown shapes
    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colours {unknown}; available: {', '.join(COLOURS)}")
    check_templates(templates)
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")

    class_names = class_names_for(shapes, colours)
    features = _features(class_names, shapes, colours)
    splits = {}
    for split_id, split in enumerate(SPLITS):
        columns = _generate_split(split_id, counts[split], seed, shapes, colours, templates, image_size, noise_std)
        splits[split] = Dataset.from_dict(columns, features=features)
    segmentation_labels = {0: "background", **{i + 1: s for i, s in enumerate(shapes)}}
    return DemoData(DatasetDict(splits), class_names, templates, segmentation_labels)


def make_digits_dataset(
    image_size: int = 32, num_validation: int = 100, num_test: int = 500, seed: int = 0, ink_threshold: int = 96
) -> DemoData:
    """The shipped digits as a demo dataset: ``train`` / ``validation`` / ``test`` (class-stratified).

    Args:
        image_size: side of the upsampled RGB images and masks.
        num_validation / num_test: held-out images, each split stratified by class; ``train`` is the rest.
        seed: the split's only source of randomness; captions use ``(seed, index)``.
        ink_threshold: upsampled grey level (0..255) from which a pixel counts as ink in the mask.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    ink, labels = load_digits()
    indices = digits_split({"test": num_test, "validation": num_validation}, seed)
    features = Features(
        {
            "image": ImageFeature(),
            "mask": ImageFeature(),
            "label": ClassLabel(names=list(DIGIT_NAMES)),
            "caption": Value("string"),
        }
    )
    splits = {}
    for name, rows in indices.items():
        columns: dict[str, list] = {"image": [], "mask": [], "label": [], "caption": []}
        for index in rows.tolist():
            image = digit_image(ink[index], image_size)
            label = int(labels[index])
            stroke = np.asarray(image.convert("L")) >= ink_threshold
            template = DIGIT_TEMPLATES[int(np.random.default_rng([seed, index]).integers(len(DIGIT_TEMPLATES)))]
            columns["image"].append(image)
            columns["mask"].append(Image.fromarray((stroke * (label + 1)).astype(np.uint8), mode="L"))
            columns["label"].append(label)
            columns["caption"].append(template.format(DIGIT_NAMES[label]))
        splits[name] = Dataset.from_dict(columns, features=features)
    segmentation_labels = {0: "background", **{i + 1: n for i, n in enumerate(DIGIT_NAMES)}}
    return DemoData(DatasetDict(splits), list(DIGIT_NAMES), list(DIGIT_TEMPLATES), segmentation_labels)


__all__ = [
    "COLOURS",
    "DEFAULT_COLOURS",
    "DEFAULT_SHAPES",
    "IGNORE_INDEX",
    "SHAPES",
    "DemoData",
    "class_names_for",
    "load_demo_data",
    "make_digits_dataset",
    "make_shapes_dataset",
    "render_example",
]
