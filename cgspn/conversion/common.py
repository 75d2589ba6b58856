"""Source-independent pieces of the converters: the key-map entry, the teacher description and the student builder.

Each source module (`open_clip`, `transformers`) describes its teacher as a `TeacherSpec`: the C-GSPN config that
reproduces the teacher exactly (every block keeps attention, position embeddings on) plus an explicit key map from
C-GSPN parameter names to teacher tensors. `build_model` turns a spec into a teacher reconstruction or a student.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.initialization import no_init_weights

from ..configuration_cgspn import CGSPNConfig, CGSPNVisionConfig
from ..modeling_cgspn import CGSPNModel, CGSPNVisionModel
from .init import init_propagation_from_attention

ALL_LAYERS = "all"
_ATTENTION_KEY = re.compile(r"^(?P<prefix>(?:vision_model\.)?encoder\.layers\.(?P<index>\d+)\.mixer)\.(?P<rest>.+)$")
_POSITION_KEY = re.compile(r"^(?:vision_model\.)?embeddings\.position_embedding$")


@dataclass(frozen=True)
class Copy:
    """One key-map entry: C-GSPN tensor ``target`` comes from teacher tensor ``source``.

    The source is optionally sliced along dim 0 (``rows``, e.g. the q/k/v thirds of a fused ``qkv``), transposed
    (``transpose``, open_clip's ``x @ proj`` parameters), given ``pad_prefix`` zero rows in front (position embeddings
    that skip the prefix tokens) and finally reshaped to the target's shape (e.g. ``(C,) -> (1, 1, C)``).
    """

    target: str
    source: str
    rows: tuple[int, int] | None = None
    transpose: bool = False
    pad_prefix: int = 0

    def apply(self, tensors: dict[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """The target tensor built from the teacher's ``tensors`` (possibly a view of the source)."""
        value = tensors[self.source].detach()
        if self.rows is not None:
            value = value[self.rows[0] : self.rows[1]]
        if self.transpose:
            value = value.t()
        if self.pad_prefix:
            value = value.reshape(-1, value.shape[-1])
            value = torch.cat((value.new_zeros(self.pad_prefix, value.shape[-1]), value), dim=0)
        if value.numel() != int(torch.Size(shape).numel()):
            raise ValueError(
                f"Key map error: {self.source} {tuple(tensors[self.source].shape)} cannot fill {self.target} "
                f"{tuple(shape)}"
            )
        return value.reshape(shape)  # may be a view: load_state_dict copies it into the model


def fused_qkv(target_prefix: str, source: str, width: int, suffix: str) -> list[Copy]:
    """Split a fused ``[q; k; v]`` projection (weight or bias) into ``q_proj``/``k_proj``/``v_proj``."""
    return [
        Copy(f"{target_prefix}.{name}_proj.{suffix}", source, rows=(index * width, (index + 1) * width))
        for index, name in enumerate(("q", "k", "v"))
    ]


def linear(target: str, source: str, bias: bool = True) -> list[Copy]:
    """Weight (and bias) of a Linear or LayerNorm whose parameter names match."""
    copies = [Copy(f"{target}.weight", f"{source}.weight")]
    if bias:
        copies.append(Copy(f"{target}.bias", f"{source}.bias"))
    return copies


@dataclass
class TeacherSpec:
    """A teacher described in C-GSPN terms.

    Attributes:
        config: the C-GSPN config reproducing the teacher (all blocks attention, position embeddings kept).
        copies: the explicit key map; every parameter of the exact model must be a target.
        tensors: the teacher's tensors by source name.
        image_features: teacher image embedding (projected, unnormalized) of pixel values.
        text_features: teacher text embedding of token ids and attention mask (``None`` when the tokenizer returns
            none), used as the teacher's own library uses them; ``None`` for vision-only teachers.
        preprocess: the teacher's own image preprocessing (PIL image -> (3, H, W) tensor), when known.
        tokenize: the teacher's own tokenizer (texts -> (B, L) ids), when known.
        image_processor / tokenizer / processor: what the converted folder ships (`processor` wins when set).
        description: human-readable teacher name for reports and the model card.
        notes: conversion notes (e.g. a tokenizer that could not be built offline).
        image_processor_is_default: the teacher shipped no image processor, so ``image_processor`` is its family's
            standard one (a guess of the normalization, which training does not make on its own).
    """

    config: CGSPNConfig | CGSPNVisionConfig
    copies: list[Copy]
    tensors: dict[str, torch.Tensor]
    image_features: Callable[[torch.Tensor], torch.Tensor]
    text_features: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    preprocess: Callable[[object], torch.Tensor] | None = None
    tokenize: Callable[[list[str]], torch.Tensor] | None = None
    image_processor: object | None = None
    tokenizer: object | None = None
    processor: object | None = None
    description: str = "teacher"
    notes: list[str] = field(default_factory=list)
    image_processor_is_default: bool = False

    @property
    def vision_config(self) -> CGSPNVisionConfig:
        return getattr(self.config, "vision_config", None) or self.config

    @property
    def is_dual(self) -> bool:
        return isinstance(self.config, CGSPNConfig)

    def processor_to_ship(self):
        """What a folder built from this teacher ships: the teacher's processor, else a `CLIPProcessor` of its image
        processor and tokenizer, else the image processor alone (no tokenizer), else ``None``."""
        if self.processor is not None:
            return self.processor
        if self.tokenizer is not None:
            from transformers import CLIPProcessor

            return CLIPProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)
        return self.image_processor

    def __post_init__(self) -> None:
        vision = self.vision_config
        if vision.image_size % vision.patch_size:
            side = vision.image_size // vision.patch_size * vision.patch_size
            self.notes.append(
                f"image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}: the teacher's "
                f"patch convolution ignores the right/bottom {vision.image_size - side} pixels, and C-GSPN models "
                f"take sides that are multiples of the patch, so crop preprocessed images to [..., :{side}, :{side}] "
                "(same result)"
            )


@dataclass
class BuildResult:
    """A built model plus provenance: which parameters were copied from where, which were initialized."""

    model: CGSPNModel | CGSPNVisionModel
    copied: dict[str, Copy]
    initialized: list[str]


def parse_attention_layers(value: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """``None``/``""`` -> no attention layers; ``"all"`` -> every block; ``"0,5,11"`` or a sequence -> those blocks
    (negative indices count from the end)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if value.strip().lower() == ALL_LAYERS:
            return list(range(num_layers))
        value = [int(part) for part in value.split(",") if part.strip()]
    indices = sorted({index + num_layers if index < 0 else index for index in value})
    bad = [index for index in indices if not 0 <= index < num_layers]
    if bad:
        raise ValueError(f"attention layers {bad} out of range for a tower of {num_layers} blocks")
    return indices


def student_config(
    spec: TeacherSpec,
    attention_layers: str | Sequence[int] | None = None,
    keep_position_embeddings: bool = False,
    propagation_channels: int | None = None,
) -> CGSPNConfig | CGSPNVisionConfig:
    """The teacher's exact config with the student's choices applied."""
    vision = spec.vision_config.to_dict()
    vision["attention_layer_indices"] = parse_attention_layers(attention_layers, spec.vision_config.num_hidden_layers)
    vision["use_position_embeddings"] = keep_position_embeddings and spec.vision_config.use_position_embeddings
    vision["propagation_channels"] = (
        max(1, vision["hidden_size"] // 18) if propagation_channels is None else propagation_channels
    )
    for key in ("_out_features", "_out_indices", "stage_names", "out_features", "out_indices"):
        vision.pop(key, None)
    if not spec.is_dual:
        return CGSPNVisionConfig(**_config_kwargs(vision))
    config = spec.config.to_dict()
    config["vision_config"] = _config_kwargs(vision)
    return CGSPNConfig.from_dict(_config_kwargs(config))


def _config_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("transformers_version", "model_type", "architectures")}


def build_model(
    spec: TeacherSpec,
    attention_layers: str | Sequence[int] | None = None,
    keep_position_embeddings: bool = False,
    propagation_channels: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> BuildResult:
    """Build a C-GSPN model from a teacher spec.

    Copies every tensor the key map provides; position embeddings only when kept; attention weights only for the
    hybrid layers. Each propagation layer gets the rank-Cc SVD init of its teacher block's value-output map
    (`init_propagation_from_attention`). With ``attention_layers="all"`` and ``keep_position_embeddings=True`` the
    result reproduces the teacher exactly.

    Raises:
        RuntimeError: the key map leaves a parameter unfilled or names a tensor the model does not have (a converter
            bug, never silently ignored).
    """
    config = student_config(spec, attention_layers, keep_position_embeddings, propagation_channels)
    model_class = CGSPNModel if spec.is_dual else CGSPNVisionModel
    with no_init_weights():  # every tensor is loaded below (strictly), so skip the random init
        model = model_class(config)
    expected = model.state_dict()
    vision = getattr(config, "vision_config", None) or config
    grid = (vision.image_size // vision.patch_size,) * 2

    state: dict[str, torch.Tensor] = {}
    copied: dict[str, Copy] = {}
    attention_sources: dict[str, dict[str, torch.Tensor]] = {}
    for entry in spec.copies:
        match = _ATTENTION_KEY.match(entry.target)
        if _POSITION_KEY.match(entry.target) and not keep_position_embeddings:
            continue
        if match and entry.target not in expected:  # a propagation layer: keep the teacher's attention for its init
            # the attention shapes equal (C, C) / (C,) whatever the layout
            width = vision.hidden_size
            shape = (width, width) if match["rest"].endswith("weight") else (width,)
            attention_sources.setdefault(match["prefix"], {})[match["rest"]] = entry.apply(spec.tensors, shape)
            continue
        if entry.target not in expected:
            raise RuntimeError(f"Key map names {entry.target}, which the C-GSPN model does not have")
        state[entry.target] = entry.apply(spec.tensors, expected[entry.target].shape)
        copied[entry.target] = entry

    initialized = []
    for prefix, attention in attention_sources.items():
        for name, tensor in init_propagation_from_attention(attention, vision.propagation_channels, grid).items():
            state[f"{prefix}.{name}"] = tensor
            initialized.append(f"{prefix}.{name}")

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RuntimeError(f"Conversion key map is incomplete: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=True)
    model.to(dtype)
    model.eval()
    return BuildResult(model=model, copied=copied, initialized=sorted(initialized))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients (a teacher)."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def clone_spec(spec: TeacherSpec, **changes) -> TeacherSpec:
    """A shallow copy of ``spec`` with some fields replaced."""
    new = copy.copy(spec)
    for key, value in changes.items():
        setattr(new, key, value)
    return new
