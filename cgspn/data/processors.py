"""Processors of model folders: load them however transformers saved them, and fit them to a training resolution."""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING

from .images import processor_size_kwargs

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from transformers.image_processing_utils import BaseImageProcessor

logger = logging.getLogger(__name__)


def load_processor(
    folder: str | os.PathLike, trust_remote_code: bool = False
) -> ProcessorMixin | BaseImageProcessor | None:
    """A model folder's processor as transformers saved it: ``AutoProcessor`` (image processor + tokenizer, from
    ``processor_config.json`` or the separate files), else ``AutoImageProcessor`` alone, else ``None``."""
    from transformers import AutoImageProcessor, AutoProcessor

    for loader in (AutoProcessor, AutoImageProcessor):
        try:
            processor = loader.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as error:  # no (such) processor in the folder
            logger.info("%s.from_pretrained(%s): %s", loader.__name__, folder, error)
            continue
        if image_processor_of(processor) is not None:
            return processor
    return None


def image_processor_of(processor: ProcessorMixin | BaseImageProcessor | None) -> BaseImageProcessor | None:
    """The image processor of a processor (``processor.image_processor``), or the processor itself if it is one."""
    if processor is None:
        return None
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        return image_processor
    return processor if hasattr(processor, "preprocess") else None


def resized_processor(
    processor: ProcessorMixin | BaseImageProcessor | None,
    image_size: int | None,
    image_processor: BaseImageProcessor | None = None,
) -> ProcessorMixin | BaseImageProcessor | None:
    """A copy of ``processor`` (a full processor or an image processor) whose image processor outputs square
    ``image_size`` images: what a model trained on those pixels ships. ``image_processor`` (e.g. the training one,
    with its normalization) replaces the processor's own; ``None`` in, ``None`` out."""
    image_processor = copy.deepcopy(image_processor or image_processor_of(processor))
    if image_processor is None:
        return None
    for name, value in processor_size_kwargs(image_processor, image_size).items():
        setattr(image_processor, name, value)
    if getattr(processor, "image_processor", None) is None:
        return image_processor
    processor = copy.copy(processor)
    processor.image_processor = image_processor
    return processor


__all__ = ["image_processor_of", "load_processor", "resized_processor"]
