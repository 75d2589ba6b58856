"""Image datasets through `datasets`: local folders, saved datasets, parquet/arrow/csv/json files, webdataset tar
shards and hub ids, optionally streamed; and their pixel values through an image processor.

`load_image_dataset` serves training, evaluation and the demo. For distillation only images are needed
(`prepare_dataset` drops captions and other columns and decodes images into ``pixel_values`` on the fly), with the
teacher's image processor (`build_image_processor`) or one built from a size/mean/std.

Example:

```python
>>> from cgspn.data import build_image_processor, load_image_dataset, prepare_dataset
>>> raw = load_image_dataset("path/to/images", split="train")
>>> processor = build_image_processor(image_size=378, mean=[0.5] * 3, std=[0.5] * 3)
>>> dataset = prepare_dataset(raw, processor, image_size=378)
>>> dataset[0]["pixel_values"].shape
torch.Size([3, 378, 378])
```
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .decoding import decode_image, to_rgb

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from transformers import ProcessorMixin
    from transformers.image_processing_utils import BaseImageProcessor

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".tar": "webdataset",
}
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def _load_saved(path: Path, split: str, streaming: bool) -> Dataset | IterableDataset:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"Split {split!r} not in the saved dataset at {path}; available: {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset.to_iterable_dataset(num_shards=max(1, min(64, len(dataset) // 1000))) if streaming else dataset


def _files_by_builder(files: Sequence[Path]) -> tuple[str, list[str]]:
    builders = {FILE_BUILDERS[f.suffix] for f in files if f.suffix in FILE_BUILDERS}
    if len(builders) > 1:
        raise ValueError(f"Mixed data file types {sorted(builders)}; point --data at one kind of file")
    builder = builders.pop()
    return builder, sorted(str(f) for f in files if FILE_BUILDERS.get(f.suffix) == builder)


def load_image_dataset(
    source: str | os.PathLike,
    split: str = "train",
    streaming: bool = False,
    name: str | None = None,
) -> Dataset | IterableDataset:
    """Load one split of a dataset from wherever it lives.

    Args:
        source: A folder saved with ``save_to_disk`` (a `DatasetDict`, or a single `Dataset` whose split is not
            checked); any other local folder, handed to ``datasets.load_dataset`` (image folders with optional
            ``metadata.jsonl``, ImageNet-style ``split/class/*.jpg`` trees, folders of parquet/arrow/csv/json files or
            ``.tar`` webdataset shards, split by file or folder names); one such file; a glob pattern of files; or a
            hub dataset id (``HF_HUB_OFFLINE=1``: cached copies only).
        split: Split to load (``train`` for single-split sources).
        streaming: Return an ``IterableDataset`` reading lazily (for sets larger than the disk cache).
        name: Configuration name of a hub dataset.
    """
    from datasets import load_dataset

    path = Path(source)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _load_saved(path, split, streaming)
        return _checked_split(lambda: load_dataset(str(path), name, split=split, streaming=streaming), source, split)
    matches = [path] if path.is_file() else sorted(Path(p) for p in _glob(str(source)))
    if matches:
        unknown = [str(f) for f in matches if f.suffix not in FILE_BUILDERS]
        if unknown:
            raise ValueError(f"Unsupported data files {unknown[:3]}: expected {sorted(FILE_BUILDERS)}")
        builder, data_files = _files_by_builder(matches)
        return load_dataset(builder, data_files={split: data_files}, split=split, streaming=streaming)
    if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1 or path.suffix in FILE_BUILDERS:
        raise FileNotFoundError(f"No data found at {source}: the path does not exist")
    try:
        return _checked_split(lambda: load_dataset(str(source), name, split=split, streaming=streaming), source, split)
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot load hub dataset {source!r}: {error}. Offline (HF_HUB_OFFLINE=1) only datasets already in the "
            "local cache load; otherwise pass a local folder or file."
        ) from error


def _checked_split(load, source, split: str):
    try:
        return load()
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"cannot load split {split!r} of {source}: {error}") from error
        raise


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True) if any(c in pattern for c in "*?[") else []


def find_image_column(dataset: Dataset | IterableDataset, image_column: str | None = None) -> str:
    """The column holding images: ``image_column`` if given, else the first ``Image`` feature or a usual name."""
    from datasets import Image

    features = dataset.features
    columns = list(features) if features is not None else list(getattr(dataset, "column_names", None) or [])
    if image_column is not None:
        if columns and image_column not in columns:
            raise ValueError(f"Image column {image_column!r} not in the dataset's columns {columns}")
        return image_column
    if features is not None:
        for column, feature in features.items():
            if isinstance(feature, Image):
                return column
    for candidate in IMAGE_COLUMN_NAMES:
        if candidate in columns:
            return candidate
    raise ValueError(f"No image column among {columns}; pass image_column (--image-column)")


def require_columns(dataset: Dataset | IterableDataset, columns: Sequence[str]) -> None:
    """Raise a clear error when a column is missing (no-op when a streamed dataset does not know its columns)."""
    available = getattr(dataset, "column_names", None)
    if available is None:
        return
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"column(s) {missing} not found in the dataset; available columns: {available}")


def build_image_processor(
    teacher: str | os.PathLike | BaseImageProcessor | ProcessorMixin | None = None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BaseImageProcessor:
    """A copy of the image processor of ``teacher`` (a processor, or a model folder read by `load_processor`), or a
    square resize + normalize processor of ``image_size``.

    ``mean``/``std`` override the teacher's values; without a teacher processor they default to SigLIP's 0.5.
    """
    from transformers import SiglipImageProcessor

    from .processors import image_processor_of, load_processor

    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_processor(teacher)
    image_processor = image_processor_of(teacher)
    if image_processor is not None:
        processor = copy.deepcopy(image_processor)
        if mean is not None:
            processor.image_mean = list(mean)
        if std is not None:
            processor.image_std = list(std)
        return processor
    if image_size is None:
        raise ValueError("Without a teacher image processor, an image size (--image-size) is needed")
    return SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(mean or SIGLIP_MEAN),
        image_std=list(std or SIGLIP_STD),
    )


def processor_size_kwargs(processor: BaseImageProcessor, image_size: int | None) -> dict[str, Any]:
    """Call arguments making ``processor`` output square ``image_size`` images (resize, then centre crop if any)."""
    if image_size is None:
        return {}
    square = {"height": image_size, "width": image_size}
    if getattr(processor, "do_center_crop", False):
        return {"size": {"shortest_edge": image_size}, "crop_size": square}
    return {"size": square}


def _as_rgb(image: Any) -> Any:
    """Decode stored images (``{"bytes", "path"}``, paths) and convert PIL images to RGB; arrays pass through."""
    if isinstance(image, (dict, str, os.PathLike)):
        image = decode_image(image)
    return to_rgb(image) if hasattr(image, "convert") else image


def pixel_values(image_processor: BaseImageProcessor, images: Sequence, **kwargs: Any) -> torch.Tensor:
    """``(B, 3, H, W)`` pixel values of images (PIL images, or stored bytes/paths decoded with the file named in any
    error; high-bit-depth grayscale rescaled, then RGB) through ``image_processor``."""
    images = [_as_rgb(image) for image in images]
    return image_processor(images=images, return_tensors="pt", **kwargs)["pixel_values"]


class ImageTransform:
    """Batched ``datasets`` transform: images of ``image_column`` -> ``pixel_values`` tensors."""

    def __init__(self, processor: BaseImageProcessor, image_column: str, image_size: int | None = None):
        self.processor = processor
        self.image_column = image_column
        self.kwargs = processor_size_kwargs(processor, image_size)

    def __call__(self, batch: dict[str, list]) -> dict[str, list[torch.Tensor]]:
        return {"pixel_values": list(pixel_values(self.processor, batch[self.image_column], **self.kwargs))}


def prepare_dataset(
    dataset: Dataset | IterableDataset,
    processor: BaseImageProcessor,
    image_size: int | None = None,
    image_column: str | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
) -> Dataset | IterableDataset:
    """Keep only images and turn them into ``pixel_values`` on the fly.

    Map-style datasets are shuffled by the trainer's seeded sampler; streamed ones here, with a seeded buffer
    (``set_epoch`` reshuffles each epoch deterministically).
    """
    from datasets import Image, IterableDataset

    column = find_image_column(dataset, image_column)
    dataset = dataset.select_columns([column])
    if (dataset.features or {}).get(column) is not None:
        # paths, {"bytes", "path"} structs or images, decoded by the transform (errors name the file)
        dataset = dataset.cast_column(column, Image(decode=False))
    transform = ImageTransform(processor, column, image_size)
    if isinstance(dataset, IterableDataset):
        if shuffle_buffer > 1:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        return dataset.map(transform, batched=True, batch_size=16, remove_columns=[column])
    return dataset.with_transform(transform)


def collate_pixel_values(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` of a list of examples into a (B, 3, H, W) batch."""
    return {"pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples])}


__all__ = [
    "FILE_BUILDERS",
    "ImageTransform",
    "build_image_processor",
    "collate_pixel_values",
    "find_image_column",
    "load_image_dataset",
    "pixel_values",
    "prepare_dataset",
    "processor_size_kwargs",
    "require_columns",
]
