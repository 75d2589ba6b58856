"""The one data and preprocessing layer of training, evaluation and the demo.

* `images`: `load_image_dataset` (folders, saved datasets, data files, webdataset shards, hub ids; streaming),
  `build_image_processor`, `prepare_dataset` (distillation pixel values), `pixel_values`.
* `processors`: `load_processor` reads a model folder's processor however transformers saved it
  (``processor_config.json``, or ``preprocessor_config.json`` + tokenizer files); `resized_processor` fits one to a
  training resolution (what an exported student ships).
* `prompts`: `DEFAULT_TEMPLATES` (the zero-shot prompt templates), `check_templates`, and the class names /
  templates saved next to a dataset (`save_dataset_metadata` / `read_dataset_metadata`).
"""

from .images import (
    FILE_BUILDERS,
    ImageTransform,
    build_image_processor,
    collate_pixel_values,
    find_image_column,
    load_image_dataset,
    pixel_values,
    prepare_dataset,
    processor_size_kwargs,
    require_columns,
)
from .processors import image_processor_of, load_processor, resized_processor
from .prompts import DEFAULT_TEMPLATES, METADATA_FILE, check_templates, read_dataset_metadata, save_dataset_metadata

__all__ = [
    "DEFAULT_TEMPLATES",
    "FILE_BUILDERS",
    "METADATA_FILE",
    "ImageTransform",
    "build_image_processor",
    "check_templates",
    "collate_pixel_values",
    "find_image_column",
    "image_processor_of",
    "load_image_dataset",
    "load_processor",
    "pixel_values",
    "prepare_dataset",
    "processor_size_kwargs",
    "read_dataset_metadata",
    "require_columns",
    "resized_processor",
    "save_dataset_metadata",
]
