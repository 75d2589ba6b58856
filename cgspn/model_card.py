"""Hub model cards for C-GSPN models, filled from the model's config (and results, when known)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # only such teachers become `base_model`


def build_model_card(
    model: nn.Module,
    repo_id: str,
    *,
    teacher: str | None = None,
    datasets: list[str] | None = None,
    results: Mapping[str, float] | None = None,
    dataset_name: str = "custom",
    license: str = "apache-2.0",
    extra_rows: Mapping[str, str] | None = None,
) -> ModelCard:
    """A model card with hub metadata (library, pipeline tag, tags, license, datasets, model-index) and usage.

    Args:
        model: a C-GSPN model (`CGSPNModel`, `CGSPNVisionModel`, ...).
        repo_id: hub id or local folder the usage snippets load from.
        teacher: the teacher it was converted from / distilled out of (becomes `base_model` when a hub id).
        datasets: training dataset ids.
        results: metric name -> value (e.g. ``{"zero-shot top-1": 0.91}``) for the model-index and a table.
        dataset_name: name of the dataset the results were measured on.
        extra_rows: more rows for the summary table.
    """
    config = model.config
    vision = getattr(config, "vision_config", None) or config
    zero_shot = hasattr(config, "vision_config")
    results = dict(results or {})
    task = "zero-shot-image-classification" if zero_shot else "image-feature-extraction"
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type=name.lower().replace(" ", "_"),
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in results.items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        license=license,
        tags=["cgspn", "vision", "spatial-propagation", "distillation"],
        datasets=datasets,
        base_model=teacher if teacher and HUB_ID.match(teacher) and not os.path.exists(teacher) else None,
        model_name=Path(repo_id).name,
        eval_results=eval_results or None,
    )
    attention_layers = ", ".join(map(str, vision.attention_layer_indices))
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=Path(repo_id).name,
        model_kind="CLIP-style dual encoder" if zero_shot else "vision backbone",
        propagation_channels=vision.propagation_channels,
        attention_layers=attention_layers,
        teacher=teacher,
        hidden_size=vision.hidden_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        patch_size=vision.patch_size,
        image_size=vision.image_size,
        num_channels=vision.num_channels,
        num_parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M",
        extra_rows=list((extra_rows or {}).items()),
        repo_id=repo_id,
        zero_shot=zero_shot,
        results=[(name, f"{value:.4g}") for name, value in results.items()],
    )


def write_model_card(model: nn.Module, folder: str | os.PathLike, **kwargs) -> Path:
    """Write ``README.md`` (the hub model card) into ``folder``; the snippets load from the folder's name by default
    (cards hold no local absolute paths)."""
    folder = Path(folder)
    kwargs.setdefault("repo_id", folder.name)
    path = folder / "README.md"
    build_model_card(model, **kwargs).save(path)
    return path
