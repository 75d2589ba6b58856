"""Semantic segmentation evaluation: mIoU, per-class IoU and pixel accuracy over image+mask pairs.

The model needs ``model(pixel_values=...).logits`` of shape ``(B, num_labels, h, w)`` at any resolution; logits are
upsampled bilinearly to each reference mask's size before the argmax, so masks are scored at full resolution
(ADE20K-style evaluation). Reference value ``ignore_index`` (255) is left out of every score.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..images import to_rgb
from .data import require_columns
from .metrics import load_metric
from .zero_shot import model_device_dtype

MASK_COLUMN_CANDIDATES = ("mask", "annotation", "segmentation", "semantic_map", "label")


def find_mask_column(dataset, image_column: str = "image") -> str:
    """Guess the mask column: the single other `Image()` column, else a conventional name."""
    from datasets import Image as ImageFeature

    features = getattr(dataset, "features", None) or {}
    image_like = [
        name for name, feature in features.items() if isinstance(feature, ImageFeature) and name != image_column
    ]
    if len(image_like) == 1:
        return image_like[0]
    for name in MASK_COLUMN_CANDIDATES:
        if name in image_like or (not image_like and name in features):
            return name
    raise ValueError(
        f"cannot tell which column holds the masks (columns: {list(features)}); pass mask_column explicitly"
    )


def _mask_array(mask) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim == 3:  # an RGB/RGBA-encoded label map whose channels repeat the label, e.g. saved as RGB
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"masks must be 2-D label maps, got shape {array.shape}")
    return array.astype(np.int64)


def _pixel_values(image_processor, images, device, dtype) -> torch.Tensor:
    images = [to_rgb(image) if hasattr(image, "convert") else image for image in images]
    kwargs = {}
    # A center crop would cut away part of the image and misalign the upsampled logits with the mask: squash the
    # whole image to the crop size instead (CLIP-style processors).
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        crop = image_processor.crop_size
        kwargs = {"do_center_crop": False, "size": {"height": crop["height"], "width": crop["width"]}}
    return image_processor(images=images, return_tensors="pt", **kwargs)["pixel_values"].to(device=device, dtype=dtype)


@torch.no_grad()
def predict_masks(model, image_processor, images, sizes, device=None) -> list[np.ndarray]:
    """Predicted label maps for a batch of images, each upsampled to its ``(height, width)`` in ``sizes``."""
    device, dtype = model_device_dtype(model, device)
    logits = model(pixel_values=_pixel_values(image_processor, images, device, dtype)).logits
    if logits.ndim != 4:
        raise ValueError(f"expected logits (batch, num_labels, h, w), got shape {tuple(logits.shape)}")
    predictions = []
    for index, size in enumerate(sizes):
        upsampled = F.interpolate(
            logits[index : index + 1].float(), size=tuple(size), mode="bilinear", align_corners=False
        )
        predictions.append(upsampled.argmax(dim=1)[0].cpu().numpy().astype(np.uint16))
    return predictions


@torch.no_grad()
def evaluate_segmentation(
    model,
    image_processor,
    dataset,
    image_column: str = "image",
    mask_column: str | None = None,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_examples: int | None = None,
    progress: bool = True,
) -> dict:
    """mIoU of a segmentation model on a dataset of image + mask pairs.

    Args:
        model: returns ``.logits`` of shape ``(B, num_labels, h, w)`` from ``model(pixel_values=...)``.
        image_processor: a transformers image processor (e.g. `SegformerImageProcessor`, `CLIPImageProcessor`).
        dataset: a `datasets.Dataset`/`IterableDataset` with an image column and a mask column (PIL label maps
            or arrays, same size as the image).
        image_column / mask_column: column names (the mask column is guessed when ``None``).
        num_labels: number of classes; defaults to ``model.config.num_labels``.
        id2label: class names for the per-class report; defaults to ``model.config.id2label``.
        ignore_index: reference value that is not scored.
        reduce_labels: ADE20K convention: reference 0 ("other") becomes ``ignore_index``, the rest shift down by 1.
        batch_size: images per forward pass.
        device: where to run; defaults to the model's device.
        max_examples: evaluate only the first N examples.
        progress: show a tqdm progress bar.

    Returns:
        ``{"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou": {name: iou or None},
        "per_category_accuracy": {...}, "num_examples", "num_labels"}`` (``None`` for classes absent from both
        predictions and references).
    """
    if mask_column is None:
        mask_column = find_mask_column(dataset, image_column)
    require_columns(dataset, [image_column, mask_column])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = getattr(model, "config", None)
    if num_labels is None:
        num_labels = getattr(config, "num_labels", None)
        if num_labels is None:
            raise ValueError("num_labels is not given and the model has no config.num_labels")
    if id2label is None:
        id2label = dict(getattr(config, "id2label", None) or {})
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_labels)]

    metric = load_metric("mean_iou", experiment_id=uuid.uuid4().hex)
    data = dataset.select_columns([image_column, mask_column])
    if max_examples is not None:
        data = data.take(max_examples)
    try:
        num_batches = math.ceil(len(data) / batch_size)
    except TypeError:  # IterableDataset
        num_batches = None
    seen = 0
    for batch in tqdm(data.iter(batch_size=batch_size), total=num_batches, disable=not progress, desc="segmentation"):
        references = [_mask_array(mask) for mask in batch[mask_column]]
        predictions = predict_masks(model, image_processor, batch[image_column], [r.shape for r in references], device)
        if max(int(p.max()) for p in predictions) >= num_labels:
            raise ValueError(f"model predicts more than num_labels={num_labels} classes")
        metric.add_batch(predictions=predictions, references=[r.astype(np.uint16) for r in references])
        seen += len(references)
    if seen == 0:
        raise ValueError("the dataset is empty")
    scores = metric.compute(num_labels=num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels)
    return {
        "mean_iou": _json_float(scores["mean_iou"]),
        "mean_accuracy": _json_float(scores["mean_accuracy"]),
        "overall_accuracy": _json_float(scores["overall_accuracy"]),
        "per_category_iou": _per_class(scores["per_category_iou"], names),
        "per_category_accuracy": _per_class(scores["per_category_accuracy"], names),
        "num_examples": seen,
        "num_labels": num_labels,
    }


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _per_class(values: Sequence[float], names: Sequence[str]) -> dict[str, float | None]:
    return {name: _json_float(value) for name, value in zip(names, values, strict=True)}


__all__ = ["evaluate_segmentation", "find_mask_column", "predict_masks"]
