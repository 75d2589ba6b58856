"""Zero-shot image classification with a CLIP-style dual encoder.

Class names are turned into prompts with templates; each class embedding is the normalized mean of its normalized
prompt embeddings (the usual CLIP recipe). Images are scored by cosine similarity and the ranking gives top-k
accuracy through the bundled offline `evaluate` metric.

The model only needs ``get_image_features(pixel_values=...)`` and ``get_text_features(input_ids=...,
attention_mask=...)`` returning ``(B, D)`` tensors or outputs whose ``pooler_output`` is the embedding (transformers
5.x CLIP/SigLIP); the processor needs ``.tokenizer`` and ``.image_processor`` (e.g. `CLIPProcessor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import DEFAULT_TEMPLATES, check_templates, pixel_values, require_columns
from ..tokenization import text_padding
from .metrics import load_metric


def as_embeddings(output) -> torch.Tensor:
    """The ``(B, D)`` embedding from a ``get_*_features`` result (a tensor, or an output with ``pooler_output``)."""
    if isinstance(output, torch.Tensor):
        embeddings = output
    elif getattr(output, "pooler_output", None) is not None:
        embeddings = output.pooler_output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        embeddings = output[0]
    else:
        raise TypeError(f"cannot read embeddings from {type(output).__name__}: expected a tensor or pooler_output")
    if embeddings.ndim != 2:
        raise ValueError(f"expected (batch, dim) embeddings, got shape {tuple(embeddings.shape)}")
    return embeddings


def model_device_dtype(model, device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """Where to put inputs: ``device`` if given, else the model's first parameter's device; float dtype of the model."""
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.device(device), dtype


@torch.no_grad()
def zero_shot_classifier(
    model,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Normalized class embeddings ``(num_classes, D)``, averaged over the prompt templates."""
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    templates = check_templates(templates)
    device, _ = model_device_dtype(model, device)
    prompts = [template.format(name) for name in class_names for template in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(
            prompts[start : start + batch_size],
            truncation=True,
            return_tensors="pt",
            **text_padding(getattr(model, "config", None)),
        )
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        chunks.append(F.normalize(as_embeddings(model.get_text_features(**tokens)).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


@torch.no_grad()
def encode_images(model, image_processor, images, device=None) -> torch.Tensor:
    """Normalized image embeddings ``(B, D)`` for a list of PIL images."""
    device, dtype = model_device_dtype(model, device)
    pixels = pixel_values(image_processor, images).to(device=device, dtype=dtype)
    return F.normalize(as_embeddings(model.get_image_features(pixel_values=pixels)).float(), dim=-1)


@torch.no_grad()
def evaluate_zero_shot(
    model,
    processor,
    dataset,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 64,
    top_k: Sequence[int] = (1, 5),
    device: str | torch.device | None = None,
    max_examples: int | None = None,
    progress: bool = True,
) -> dict:
    """Zero-shot top-k accuracy of ``model`` on a labelled image dataset.

    Args:
        model: a dual encoder with ``get_image_features`` / ``get_text_features`` (put it in eval mode first).
        processor: an object with ``.tokenizer`` and ``.image_processor`` (e.g. `CLIPProcessor`).
        dataset: a `datasets.Dataset` or `IterableDataset` with an image column and an integer label column.
        class_names: names for labels ``0..C-1``; defaults to the ``ClassLabel`` names of ``label_column``.
        templates: prompt templates with one ``{}`` each.
        image_column / label_column: column names.
        batch_size: images per forward pass.
        top_k: k values to report; k larger than the number of classes counts the full ranking.
        device: where to run; defaults to the model's device.
        max_examples: evaluate only the first N examples.
        progress: show a tqdm progress bar.

    Returns:
        ``{"top1_accuracy": ..., "top5_accuracy": ..., "accuracy": ..., "num_examples": N, "num_classes": C,
        "num_templates": T}``.
    """
    require_columns(dataset, [image_column, label_column])
    if class_names is None:
        feature = (getattr(dataset, "features", None) or {}).get(label_column)
        class_names = getattr(feature, "names", None)
        if not class_names:
            raise ValueError(
                f"column {label_column!r} is not a ClassLabel with names: pass class_names (one name per label id)"
            )
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    top_k = sorted({int(k) for k in top_k})
    if not top_k or top_k[0] < 1:
        raise ValueError(f"top_k must contain positive integers, got {top_k}")
    for attribute in ("tokenizer", "image_processor"):
        if getattr(processor, attribute, None) is None:
            raise ValueError(f"processor has no {attribute}; pass e.g. a CLIPProcessor")

    device, _ = model_device_dtype(model, device)
    classifier = zero_shot_classifier(model, processor.tokenizer, class_names, templates, device=device)
    ranking_length = min(max(top_k), len(class_names))
    metric = load_metric("top_k_accuracy", keep_in_memory=True)

    data = dataset.select_columns([image_column, label_column])
    if max_examples is not None:
        data = data.take(max_examples)
    total = _num_examples(data)
    num_batches = math.ceil(total / batch_size) if total is not None else None
    seen = 0
    for batch in tqdm(data.iter(batch_size=batch_size), total=num_batches, disable=not progress, desc="zero-shot"):
        labels = torch.as_tensor(batch[label_column], dtype=torch.long)
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"labels must be in [0, {len(class_names)}) (got {labels.min().item()}..{labels.max().item()}); "
                "unlabelled splits (label -1) cannot be scored"
            )
        image_embeddings = encode_images(model, processor.image_processor, batch[image_column], device)
        ranked = (image_embeddings @ classifier.T).topk(ranking_length, dim=-1).indices
        metric.add_batch(predictions=ranked.cpu().tolist(), references=labels.tolist())
        seen += len(labels)
    if seen == 0:
        raise ValueError("the dataset is empty")
    results = metric.compute(k=top_k)
    return {**results, "num_examples": seen, "num_classes": len(class_names), "num_templates": len(list(templates))}


def _num_examples(dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # IterableDataset
        return None


__all__ = [
    "as_embeddings",
    "encode_images",
    "evaluate_zero_shot",
    "model_device_dtype",
    "zero_shot_classifier",
]
