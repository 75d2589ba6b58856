"""Converter from transformers ``SiglipModel`` / ``CLIPModel`` and their vision-only ``SiglipVisionModel`` /
``CLIPVisionModel``.

The vision towers map one to one onto C-GSPN names (the C-GSPN layer follows the SigLIP layout); the text tower is
the same transformers class in the C-GSPN model, so its key map is the identity over its own state dict.
Other classes (SigLIP2 NaFlex, CLIP with projection-only vision models, ...) raise ``NotImplementedError``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..configuration_cgspn import CGSPNConfig, CGSPNVisionConfig
from ..data import image_processor_of
from ..tokenization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_image_processor
from .common import Copy, TeacherSpec, linear

SIGLIP_MEAN_STD = (0.5, 0.5, 0.5)
_SUPPORTED = ("SiglipModel", "CLIPModel", "SiglipVisionModel", "CLIPVisionModel")


def _family(model: nn.Module) -> tuple[str, bool]:
    """("siglip" | "clip", is dual encoder)."""
    name = type(model).__name__
    if name not in _SUPPORTED:
        raise NotImplementedError(f"transformers model class {name} (supported: {', '.join(_SUPPORTED)})")
    return ("siglip" if name.startswith("Siglip") else "clip"), not name.endswith("VisionModel")


def _vision_layer_copies(target: str, source: str) -> list[Copy]:
    return [
        *linear(f"{target}.layer_norm1", f"{source}.layer_norm1"),
        *(
            c
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
            for c in linear(f"{target}.mixer.{proj}", f"{source}.self_attn.{proj}")
        ),
        *linear(f"{target}.layer_norm2", f"{source}.layer_norm2"),
        *linear(f"{target}.mlp.fc1", f"{source}.mlp.fc1"),
        *linear(f"{target}.mlp.fc2", f"{source}.mlp.fc2"),
    ]


def _vision_tower(family: str, vision_config, target: str, source: str) -> tuple[dict[str, Any], list[Copy]]:
    """SigLIP / CLIP vision tower -> C-GSPN vision config kwargs and key map.

    ``source`` / ``target`` are the key prefixes: ``"vision_model."`` in dual encoders, ``""`` in vision-only models.
    """
    emb = f"{source}embeddings"
    config = dict(
        hidden_size=vision_config.hidden_size,
        intermediate_size=vision_config.intermediate_size,
        num_hidden_layers=vision_config.num_hidden_layers,
        num_attention_heads=vision_config.num_attention_heads,
        num_channels=vision_config.num_channels,
        image_size=vision_config.image_size,
        patch_size=vision_config.patch_size,
        hidden_act=vision_config.hidden_act,
        layer_norm_eps=vision_config.layer_norm_eps,
        use_position_embeddings=True,
        qkv_bias=True,
    )
    copies = [
        Copy(f"{target}embeddings.patch_embedding.weight", f"{emb}.patch_embedding.weight"),
        Copy(f"{target}embeddings.position_embedding", f"{emb}.position_embedding.weight"),
        *linear(f"{target}post_layernorm", f"{source}post_layernorm"),
    ]
    if family == "siglip":
        if not getattr(vision_config, "vision_use_head", True):
            raise NotImplementedError("SigLIP vision tower without its MAP head (vision_use_head=False)")
        config.update(num_prefix_tokens=0, pooling="map", patch_embedding_bias=True, use_pre_layernorm=False)
        copies += [
            Copy(f"{target}embeddings.patch_embedding.bias", f"{emb}.patch_embedding.bias"),
            Copy(f"{target}head.probe", f"{source}head.probe"),
            Copy(f"{target}head.attention.in_proj_weight", f"{source}head.attention.in_proj_weight"),
            Copy(f"{target}head.attention.in_proj_bias", f"{source}head.attention.in_proj_bias"),
            *linear(f"{target}head.attention.out_proj", f"{source}head.attention.out_proj"),
            *linear(f"{target}head.layernorm", f"{source}head.layernorm"),
            *linear(f"{target}head.mlp.fc1", f"{source}head.mlp.fc1"),
            *linear(f"{target}head.mlp.fc2", f"{source}head.mlp.fc2"),
        ]
    else:
        # CLIP: class token, no patch bias, pre-LayerNorm; post_layernorm is applied to the pooled class token only,
        # which equals C-GSPN's per-token post_layernorm followed by class-token pooling.
        config.update(num_prefix_tokens=1, pooling="cls", patch_embedding_bias=False, use_pre_layernorm=True)
        copies += [
            Copy(f"{target}embeddings.prefix_tokens", f"{emb}.class_embedding"),
            *linear(f"{target}embeddings.pre_layernorm", f"{source}pre_layrnorm"),
        ]
    for index in range(vision_config.num_hidden_layers):
        copies += _vision_layer_copies(f"{target}encoder.layers.{index}", f"{source}encoder.layers.{index}")
    return config, copies


def default_image_processor(family: str, image_size: int):
    """The standard processor of a family when the teacher ships none: SigLIP squashes to the square and
    normalizes with 0.5/0.5; CLIP resizes the short side, center-crops and uses OpenAI's statistics."""
    if family == "siglip":
        return clip_image_processor(image_size, SIGLIP_MEAN_STD, SIGLIP_MEAN_STD, resize_mode="squash", resample=3)
    return clip_image_processor(image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_mode="shortest_edge")


def transformers_teacher_spec(model: nn.Module, processor=None, *, name: str | None = None) -> TeacherSpec:
    """Describe a transformers SigLIP/CLIP model (dual or vision-only) as a `TeacherSpec`.

    Args:
        model: ``SiglipModel``, ``CLIPModel``, ``SiglipVisionModel`` or ``CLIPVisionModel``.
        processor: the teacher's processor (or image processor); shipped unchanged. Without one, a standard image
            processor for the family is built and, for CLIP-vocabulary text towers, the offline CLIP tokenizer.
        name: repo id or folder, for reports.
    """
    family, dual = _family(model)
    model.eval()
    tensors = {key: value.detach() for key, value in model.state_dict().items()}
    vision_config = model.config.vision_config if dual else model.config
    target = "vision_model." if dual else ""
    vision, copies = _vision_tower(family, vision_config, target, target)

    image_processor = image_processor_of(processor)
    tokenizer = getattr(processor, "tokenizer", None)
    notes: list[str] = []
    default_preprocessing = image_processor is None
    if default_preprocessing:
        image_processor = default_image_processor(family, vision_config.image_size)
        notes.append("the teacher had no image processor: built the family's standard one")

    if dual:
        text_model = model.text_model
        text_copies = [Copy(f"text_model.{key}", f"text_model.{key}") for key in text_model.state_dict()]
        copies += [*text_copies, Copy("logit_scale", "logit_scale")]
        has_bias = getattr(model, "logit_bias", None) is not None
        if has_bias:
            copies.append(Copy("logit_bias", "logit_bias"))
        projection_dim = None
        if family == "clip":
            projection_dim = model.config.projection_dim
            copies += [
                Copy("visual_projection.weight", "visual_projection.weight"),
                Copy("text_projection.weight", "text_projection.weight"),
            ]
        config = CGSPNConfig(
            vision_config=vision,
            text_config=model.config.text_config.to_dict(),
            projection_dim=projection_dim,
            loss_type="sigmoid" if family == "siglip" else "softmax",
            logit_scale_init_value=float(model.logit_scale.detach().reshape(-1)[0]),
            logit_bias_init_value=float(model.logit_bias.detach().reshape(-1)[0]) if has_bias else None,
        )
        if tokenizer is None and model.config.text_config.vocab_size == 49408:
            from .open_clip import clip_tokenizer_for

            tokenizer = clip_tokenizer_for(model.config.text_config.max_position_embeddings, bidirectional=False)
            notes.append("the teacher had no tokenizer: built the offline CLIP BPE tokenizer")

        def image_features(pixel_values: torch.Tensor) -> torch.Tensor:
            return _pooled(model.get_image_features(pixel_values=pixel_values))

        def text_features(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    else:
        config = CGSPNVisionConfig(**vision)
        text_features = None

        def image_features(pixel_values: torch.Tensor) -> torch.Tensor:
            return model(pixel_values=pixel_values).pooler_output

    def preprocess(image) -> torch.Tensor:
        return torch.as_tensor(image_processor(images=image, return_tensors="pt")["pixel_values"][0])

    spec = TeacherSpec(
        config=config,
        copies=copies,
        tensors=tensors,
        image_features=image_features,
        text_features=text_features,
        preprocess=preprocess,
        tokenize=None,
        image_processor=image_processor,
        tokenizer=tokenizer,
        processor=processor if getattr(processor, "tokenizer", None) is not None else None,
        description=f"hf:{name}" if name else type(model).__name__,
        notes=notes,
        image_processor_is_default=default_preprocessing,
    )
    return spec


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns model outputs from ``get_*_features`` (older versions a tensor)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_transformers(repo_or_folder: str | os.PathLike, **kwargs):
    """``AutoModel.from_pretrained`` (the library's own loading) -> (model in eval mode, processor or ``None``, as
    `cgspn.data.load_processor` finds it)."""
    from transformers import AutoModel

    from ..data import load_processor

    return AutoModel.from_pretrained(repo_or_folder, **kwargs).eval(), load_processor(repo_or_folder)


def transformers_spec_from_pretrained(repo_or_folder: str | os.PathLike) -> TeacherSpec:
    """Load a transformers teacher by repo id or folder and describe it."""
    model, processor = load_transformers(repo_or_folder)
    return transformers_teacher_spec(model, processor, name=str(repo_or_folder))


__all__ = [
    "default_image_processor",
    "load_transformers",
    "transformers_spec_from_pretrained",
    "transformers_teacher_spec",
]
