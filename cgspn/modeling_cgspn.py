"""PyTorch C-GSPN models: vision tower, CLIP-style dual encoder, classification, segmentation, backbone.

A C-GSPN vision tower is a ViT whose self-attention sublayers are replaced by the 4-direction
line-scan propagation of SPEC §2 (``CGSPNPropagation``), except in the hybrid layers listed in
``config.attention_layer_indices``, which keep multi-head attention (``CGSPNAttention``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import initialization
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    SemanticSegmenterOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_cgspn import CGSPNConfig, CGSPNVisionConfig
from .propagation import LAYER_NAME, backend_from_config, kernel_mapping, propagate

try:  # kernels is optional for hub code: without it the layer simply keeps its own forward
    from kernels import use_kernel_forward_from_hub
except ImportError:  # pragma: no cover - exercised only where kernels is absent

    def use_kernel_forward_from_hub(layer_name: str) -> Callable[[type], type]:
        return lambda cls: cls


def _grid_size(pixel_values: torch.Tensor, config: CGSPNVisionConfig) -> tuple[int, int]:
    """Check ``pixel_values`` and return the patch grid (height, width)."""
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, {config.num_channels}, height, width), "
            f"got {tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be a floating-point tensor normalized by the model's image processor, got "
            f"{pixel_values.dtype} (raw 0..255 pixels?); pass images through the image processor, or convert them"
        )
    _, channels, height, width = pixel_values.shape
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects {config.num_channels} "
            f"(shape {tuple(pixel_values.shape)})"
        )
    patch = config.patch_size
    if height % patch or width % patch or height == 0 or width == 0:
        raise ValueError(
            f"Image size {height}x{width} must be a positive multiple of the patch size {patch}; "
            "resize or pad the image (e.g. with the model's image processor)"
        )
    return height // patch, width // patch


@dataclass
class CGSPNOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `return_loss` is `True`):
        Contrastive loss (sigmoid or softmax, per `config.loss_type`).
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        Scaled (and biased) image-text similarity scores.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        Transpose of `logits_per_image`.
    text_embeds (`torch.FloatTensor` of shape `(batch_size, output_dim)`):
        Normalized text embeddings.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, output_dim)`):
        Normalized image embeddings.
    text_model_output / vision_model_output (`BaseModelOutputWithPooling`):
        The towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


class CGSPNEmbeddings(nn.Module):
    """Patch embedding, optional prefix (class/register) tokens, optional position embeddings."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_embedding_bias,
        )
        self.prefix_tokens = (
            nn.Parameter(torch.zeros(1, config.num_prefix_tokens, config.hidden_size))
            if config.num_prefix_tokens
            else None
        )
        self.position_grid = config.image_size // config.patch_size
        self.position_embedding = (
            nn.Parameter(torch.zeros(1, config.num_prefix_tokens + self.position_grid**2, config.hidden_size))
            if config.use_position_embeddings
            else None
        )
        self.pre_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_pre_layernorm else None
        )

    def _position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a height x width grid (bicubic resampling off the training grid)."""
        prefix = self.position_embedding[:, : self.config.num_prefix_tokens]
        patches = self.position_embedding[:, self.config.num_prefix_tokens :]
        if (height, width) != (self.position_grid, self.position_grid):
            grid = patches.reshape(1, self.position_grid, self.position_grid, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
            patches = grid.to(patches.dtype).permute(0, 2, 3, 1).reshape(1, height * width, -1)
        return torch.cat((prefix, patches), dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = _grid_size(pixel_values, self.config)
        weight = self.patch_embedding.weight
        embeddings = self.patch_embedding(pixel_values.to(dtype=weight.dtype)).flatten(2).transpose(1, 2)
        if self.prefix_tokens is not None:
            embeddings = torch.cat((self.prefix_tokens.expand(embeddings.shape[0], -1, -1), embeddings), dim=1)
        if self.position_embedding is not None:
            embeddings = embeddings + self._position_embeddings(height, width)
        if self.pre_layernorm is not None:
            embeddings = self.pre_layernorm(embeddings)
        # the convolution's output is a transposed view: a contiguous residual stream makes every block faster
        return embeddings.contiguous()


@use_kernel_forward_from_hub(LAYER_NAME)
class CGSPNPropagation(nn.Module):
    """The propagation sublayer (SPEC §2): P-down, heads, 4-direction line scan, merge, P-up.

    Fills the attention slot of a block. Prefix tokens receive ``up`` of the grid mean of the merged scans.
    """

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        channels = config.propagation_channels
        self.propagation_backend: str = backend_from_config(config.propagation_backend)
        self.down = nn.Linear(config.hidden_size, channels)
        self.heads = nn.Linear(channels, 20 * channels)
        self.up = nn.Linear(channels, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, hidden = hidden_states.shape
        num_prefix = tokens - height * width
        patches = hidden_states[:, num_prefix:].reshape(batch, height, width, hidden)
        z = self.down(patches)
        y = propagate(z, self.heads(z), backend=self.propagation_backend)
        out = self.up(y).reshape(batch, height * width, hidden)
        if num_prefix:
            prefix = self.up(y.mean(dim=(1, 2), dtype=torch.float32).to(y.dtype)).unsqueeze(1)
            out = torch.cat((prefix.expand(-1, num_prefix, -1), out), dim=1)
        return out


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with explicit weights (used when `attn_implementation="eager"`)."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class CGSPNAttention(nn.Module):
    """Multi-head self-attention of the hybrid layers (`config.attention_layer_indices`)."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, self.num_heads, self.head_dim)
        query, key, value = (
            proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            is_causal=False,
        )
        return self.out_proj(output.reshape(*input_shape, -1)), weights


class CGSPNMLP(nn.Module):
    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CGSPNLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + mixer(LN1(x))`` then ``x + MLP(LN2(x))``; the mixer is propagation or attention."""

    def __init__(self, config: CGSPNVisionConfig, layer_index: int):
        super().__init__()
        self.uses_attention = layer_index in config.attention_layer_indices
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mixer = CGSPNAttention(config) if self.uses_attention else CGSPNPropagation(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CGSPNMLP(config)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed = self.mixer(self.layer_norm1(hidden_states), height, width)
        weights = None
        if self.uses_attention:
            mixed, weights = mixed
        hidden_states = hidden_states + mixed
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, weights


class CGSPNAttentionPoolingHead(nn.Module):
    """Multi-head attention pooling (MAP) with a learned probe, as in SigLIP."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CGSPNMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)
        pooled = self.attention(probe, hidden_states, hidden_states, need_weights=False)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class CGSPNPreTrainedModel(PreTrainedModel):
    config_class = CGSPNVisionConfig
    config: CGSPNVisionConfig
    base_model_prefix = "vision_model"  # task models keep the tower there: a saved tower loads into them
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CGSPNEmbeddings", "CGSPNLayer", "CGSPNAttentionPoolingHead"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _vision_config(self) -> CGSPNVisionConfig:
        return getattr(self.config, "vision_config", None) or self.config

    def set_use_kernels(self, use_kernels, kernel_config=None, mode=None):
        """transformers' ``use_kernels=True`` also swaps the ``CGSPNPropagation`` layers for the fused kernel.

        Without a ``kernel_config`` the mapping comes from :func:`propagation.kernel_mapping`: the local
        compiled build, else the hub kernel pinned by ``config.kernel_repo_id``/``kernel_version`` (on CUDA),
        else the Triton build; a ``kernel_config`` given by the user is used as it is. Offline
        (``HF_HUB_OFFLINE``) only the C-GSPN layers are kernelized: transformers' own hub kernels (activations)
        could only come from the cache, and kernels raises instead of falling back when they are not there.
        ``False`` gives every layer its own forward back. The kernels are chosen for the model's device at the
        time of the call: load with ``device_map`` (or call this again after moving the model).
        """
        if kernel_config is not None and kernel_config.use_local_kernel:
            # transformers 5.24's from_pretrained rewrites each entry as (path, metadata), which its own
            # local-kernel mapping then cannot split: give it back the "path:Layer" string
            mapping = kernel_config.kernel_mapping
            kernel_config.kernel_mapping = {k: v[0] if isinstance(v, tuple) else v for k, v in mapping.items()}
        if not use_kernels:  # kernels swaps forwards per instance: give every layer its class's forward back
            for module in self.modules():
                if hasattr(type(module), "kernel_layer_name"):
                    module.__dict__.pop("forward", None)
                    module.__dict__.pop("_kernel_repo", None)
        if not use_kernels or kernel_config is not None or getattr(self, "kernel_config", None) is not None:
            return super().set_use_kernels(use_kernels, kernel_config, mode)  # a KernelConfig is used as given
        import kernels
        from huggingface_hub import constants

        config = self._vision_config()
        mapping = kernel_mapping(self.device.type, (config.kernel_repo_id, config.kernel_version))
        if not constants.is_offline_mode():
            with kernels.use_kernel_mapping(mapping):
                return super().set_use_kernels(use_kernels, kernel_config, mode)
        # transformers' set_use_kernels would first register its own hub mapping into the active one; this is its
        # kernelize (the mode from `training` unless given, every failing layer keeping its forward) of the C-GSPN
        # layers alone (the other hub layers, e.g. activations, keep their forward without a warning each)
        if mode is None:
            mode = kernels.Mode.TRAINING if self.training else kernels.Mode.INFERENCE
        fallback = kernels.KernelizeFallback.ALL
        with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
            for module in self.modules():
                if isinstance(module, CGSPNPropagation):
                    kernels.kernelize(module, mode=mode, device=self.device.type, use_fallback=fallback)
        self._use_kernels = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal Linear/Conv weights, zero biases; propagation heads start near zero
        (a fresh propagation layer adds almost nothing to the residual stream)."""
        std = self._vision_config().initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            initialization.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                initialization.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            initialization.ones_(module.weight)
            initialization.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            initialization.trunc_normal_(module.in_proj_weight, std=std)
            initialization.zeros_(module.in_proj_bias)
        elif isinstance(module, CGSPNEmbeddings):
            for parameter in (module.prefix_tokens, module.position_embedding):
                if parameter is not None:
                    initialization.trunc_normal_(parameter, std=std)
        elif isinstance(module, CGSPNAttentionPoolingHead):
            initialization.trunc_normal_(module.probe, std=std)
        elif isinstance(module, CGSPNModel):
            initialization.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                initialization.constant_(module.logit_bias, self.config.logit_bias_init_value)


class CGSPNEncoder(nn.Module):
    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([CGSPNLayer(config, index) for index in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Returns the last hidden state, all hidden states (embeddings first) and the hybrid layers' attentions."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, height, width)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions and layer.uses_attention:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


class CGSPNVisionModel(CGSPNPreTrainedModel):
    """The C-GSPN vision tower: embeddings, blocks, final LayerNorm and pooling (MAP head, class token or mean)."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__(config)
        self.embeddings = CGSPNEmbeddings(config)
        self.encoder = CGSPNEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = CGSPNAttentionPoolingHead(config) if config.pooling == "map" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def _pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "map":
            return self.head(last_hidden_state)
        if self.config.pooling == "cls":
            return last_hidden_state[:, 0]
        return last_hidden_state[:, self.config.num_prefix_tokens :].mean(dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images whose sides are multiples of `config.patch_size` (any size: no position embeddings by default).

        Returns `BaseModelOutputWithPooling`: `last_hidden_state` (after the final LayerNorm; prefix tokens first,
        then patches in row-major order), `pooler_output`, `hidden_states` (embeddings + every block, before the
        final LayerNorm) and `attentions` (one per hybrid attention layer; needs `attn_implementation="eager"`).
        """
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.return_dict if return_dict is None else return_dict
        height, width = _grid_size(pixel_values, self.config)
        hidden_states = self.embeddings(pixel_values)
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            hidden_states, height, width, output_hidden_states, output_attentions
        )
        last_hidden_state = self.post_layernorm(hidden_states)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self._pool(last_hidden_state),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


def _patch_feature_map(tokens: torch.Tensor, num_prefix: int, height: int, width: int) -> torch.Tensor:
    """(B, P+H*W, C) tokens -> (B, C, H, W) map of the patch tokens."""
    return tokens[:, num_prefix:].unflatten(1, (height, width)).permute(0, 3, 1, 2).contiguous()


class CGSPNForImageClassification(CGSPNPreTrainedModel):
    """C-GSPN vision tower with a linear classifier on the pooled output."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = CGSPNVisionModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vision_model(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class CGSPNMultiScaleHead(nn.Module):
    """Light multi-scale decoder: per selected block, LayerNorm + linear to a narrow width, summed at
    twice the patch resolution, then a 3x3 conv block and a 1x1 classifier."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        width = min(config.hidden_size, 256)
        self.norms = nn.ModuleList(
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in config.out_indices
        )
        self.projections = nn.ModuleList(nn.Linear(config.hidden_size, width) for _ in config.out_indices)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, config.num_labels, kernel_size=1)

    def forward(self, features: list[torch.Tensor], num_prefix: int, height: int, width: int) -> torch.Tensor:
        fused = 0
        for feature, norm, projection in zip(features, self.norms, self.projections, strict=True):
            feature_map = _patch_feature_map(projection(norm(feature)), num_prefix, height, width)
            fused = fused + F.interpolate(feature_map, scale_factor=2, mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(fused))


class CGSPNLinearSegmentationHead(nn.Module):
    """BatchNorm + 1x1 convolution on the final patch features (DINOv2's linear probe)."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(config.hidden_size)
        self.classifier = nn.Conv2d(config.hidden_size, config.num_labels, kernel_size=1)

    def forward(self, features: list[torch.Tensor], num_prefix: int, height: int, width: int) -> torch.Tensor:
        return self.classifier(self.batch_norm(_patch_feature_map(features[-1], num_prefix, height, width)))


class CGSPNForSemanticSegmentation(CGSPNPreTrainedModel):
    """C-GSPN vision tower with a linear or multi-scale segmentation head; logits are upsampled to the input size."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__(config)
        self.vision_model = CGSPNVisionModel(config)
        head_class = CGSPNMultiScaleHead if config.segmentation_head == "multiscale" else CGSPNLinearSegmentationHead
        self.decode_head = head_class(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Ground-truth class per pixel; `config.semantic_loss_ignore_index` (255) is ignored.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        multiscale = self.config.segmentation_head == "multiscale"
        outputs = self.vision_model(
            pixel_values, output_hidden_states=multiscale or output_hidden_states, output_attentions=output_attentions
        )
        if multiscale:
            features = [outputs.hidden_states[index] for index in self.config.out_indices]
        else:
            features = [outputs.last_hidden_state]
        height, width = _grid_size(pixel_values, self.config)
        logits = self.decode_head(features, self.config.num_prefix_tokens, height, width)
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            if labels.shape[-2:] != logits.shape[-2:]:
                raise ValueError(
                    f"labels must have the image's size {tuple(logits.shape[-2:])}, got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(logits, labels.long(), ignore_index=self.config.semantic_loss_ignore_index)
        output = SemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class CGSPNBackbone(BackboneMixin, CGSPNPreTrainedModel):
    """Feature maps (B, C, H/patch, W/patch) of the stages in `config.out_features`, each after the final
    LayerNorm, for transformers' dense-prediction heads (e.g. UperNet)."""

    def __init__(self, config: CGSPNVisionConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.embeddings = CGSPNEmbeddings(config)
        self.encoder = CGSPNEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # the tower's final norm
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        return_dict = self.config.return_dict if return_dict is None else return_dict
        height, width = _grid_size(pixel_values, self.config)
        _, hidden_states, attentions = self.encoder(
            self.embeddings(pixel_values), height, width, output_hidden_states=True, output_attentions=output_attentions
        )
        feature_maps = tuple(
            _patch_feature_map(self.post_layernorm(hidden_states[index]), self.config.num_prefix_tokens, height, width)
            for index in self.out_indices
        )
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


def _text_model_class(text_config) -> type[PreTrainedModel]:
    """The transformers text encoder of a text config (`SiglipTextConfig` -> `SiglipTextModel`, ...)."""
    name = type(text_config).__name__.removesuffix("Config") + "Model"
    model_class = getattr(transformers, name, None)
    if model_class is None:
        raise ValueError(f"No transformers text model {name} for text_config of type {type(text_config).__name__}")
    return model_class


class CGSPNModel(CGSPNPreTrainedModel):
    """CLIP-style dual encoder: a C-GSPN vision tower and a transformers text tower built from `text_config`."""

    config_class = CGSPNConfig
    config: CGSPNConfig
    base_model_prefix = "cgspn"
    input_modalities = ("image", "text")

    def __init__(self, config: CGSPNConfig):
        super().__init__(config)
        self.vision_model = CGSPNVisionModel._from_config(config.vision_config)
        self.text_model = _text_model_class(config.text_config)._from_config(config.text_config)
        if config.projection_dim is None:
            self.visual_projection = self.text_projection = nn.Identity()
        else:
            self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
            self.text_projection = nn.Linear(config.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value))
            if config.logit_bias_init_value is not None
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower output whose `pooler_output` is the (projected, unnormalized) text embedding."""
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Vision tower output whose `pooler_output` is the (projected, unnormalized) image embedding."""
        outputs = self.vision_model(pixel_values, return_dict=True, **kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs

    def contrastive_loss(self, logits_per_text: torch.Tensor) -> torch.Tensor:
        """SigLIP's pairwise sigmoid loss or CLIP's symmetric softmax loss over a square batch."""
        targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
        if self.config.loss_type == "sigmoid":
            signs = 2 * torch.eye(logits_per_text.shape[0], device=logits_per_text.device) - 1
            return -F.logsigmoid(signs * logits_per_text).sum(dim=-1).mean()
        return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CGSPNOutput | tuple:
        if input_ids is None or pixel_values is None:
            raise ValueError("CGSPNModel needs both input_ids and pixel_values; use get_*_features for one tower")
        if input_ids.shape[0] == 0 or pixel_values.shape[0] == 0:
            raise ValueError("CGSPNModel needs at least one text and one image (got an empty batch)")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        vision_outputs = self.get_image_features(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        text_outputs = self.get_text_features(
            input_ids,
            attention_mask,
            position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        if self.logit_bias is not None:
            logits_per_text = logits_per_text + self.logit_bias
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError("return_loss needs as many texts as images (matching pairs)")
            loss = self.contrastive_loss(logits_per_text)
        output = CGSPNOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "CGSPNBackbone",
    "CGSPNForImageClassification",
    "CGSPNForSemanticSegmentation",
    "CGSPNModel",
    "CGSPNPreTrainedModel",
    "CGSPNVisionModel",
]
