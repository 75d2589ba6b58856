"""C-GSPN model configurations."""

from __future__ import annotations

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.18: composite configs build their sub-configs themselves
    SubConfigSpec = None

DEFAULT_TEXT_MODEL_TYPE = "siglip_text_model"
PROPAGATION_BACKENDS = ("auto", "hub", "cuda", "triton", "torch")
# The hub kernel (kernels_src/build.toml: [general.hub] repo-id and version), pinned by version.
HUB_KERNEL_REPO_ID = "cgspn/propagation"
HUB_KERNEL_VERSION = 1
POOLINGS = ("map", "cls", "mean")
SEGMENTATION_HEADS = ("linear", "multiscale")
# Written into every saved config so a folder loads as `trust_remote_code` hub code with each Auto class.
VISION_AUTO_MAP = {
    "AutoConfig": "configuration_cgspn.CGSPNVisionConfig",
    "AutoModel": "modeling_cgspn.CGSPNVisionModel",
    "AutoModelForImageClassification": "modeling_cgspn.CGSPNForImageClassification",
    "AutoModelForSemanticSegmentation": "modeling_cgspn.CGSPNForSemanticSegmentation",
    "AutoBackbone": "modeling_cgspn.CGSPNBackbone",
}
INT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "num_prefix_tokens",
    "semantic_loss_ignore_index",
)
FLOAT_FIELDS = ("layer_norm_eps", "attention_dropout", "initializer_range")


def _check_field_types(config: PreTrainedConfig) -> None:
    """Reject values of the wrong type before anything computes with them (e.g. ``hidden_size="32"``)."""

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for name in INT_FIELDS:
        if not is_int(getattr(config, name)):
            raise TypeError(f"{name} must be an integer, got {getattr(config, name)!r}")
    for name in FLOAT_FIELDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if config.propagation_channels is not None and not is_int(config.propagation_channels):
        raise TypeError(f"propagation_channels must be an integer or None, got {config.propagation_channels!r}")
    indices = config.attention_layer_indices or []
    if not isinstance(indices, (list, tuple)) or not all(is_int(index) for index in indices):
        raise TypeError(f"attention_layer_indices must be a list of block indices (integers), got {indices!r}")


CLIP_AUTO_MAP = {
    "AutoConfig": "configuration_cgspn.CGSPNConfig",
    "AutoModel": "modeling_cgspn.CGSPNModel",
    "AutoModelForZeroShotImageClassification": "modeling_cgspn.CGSPNModel",
}


@strict
class CGSPNVisionConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a C-GSPN vision tower: a ViT whose self-attention sublayers are replaced by
    4-direction line-scan propagation in a small latent channel space (SPEC §1-2), except in the
    hybrid layers listed in `attention_layer_indices`, which keep attention.

    hidden_size (`int`, *optional*, defaults to 768):
        Width of the residual stream.
    intermediate_size (`int`, *optional*, defaults to 3072):
        Width of the MLP's hidden layer.
    num_hidden_layers (`int`, *optional*, defaults to 12):
        Number of blocks.
    num_attention_heads (`int`, *optional*, defaults to 12):
        Heads of the hybrid attention layers and of the MAP pooling head.
    num_channels (`int`, *optional*, defaults to 3):
        Channels of the input image.
    image_size (`int`, *optional*, defaults to 224):
        Nominal training resolution (only used by processors and position embeddings; any multiple of
        `patch_size` is accepted at run time when `use_position_embeddings=False`).
    patch_size (`int`, *optional*, defaults to 16):
        Side of the square patches.
    propagation_channels (`int`, *optional*):
        Latent channels `Cc` of the propagation; defaults to `max(1, hidden_size // 18)` (paper: 1152 -> 64).
    attention_layer_indices (`list[int]`, *optional*):
        Indices of blocks that keep self-attention (hybrid layers). Defaults to none.
    hidden_act (`str`, *optional*, defaults to `"gelu_pytorch_tanh"`):
        Activation of the MLPs.
    layer_norm_eps (`float`, *optional*, defaults to 1e-6):
        Epsilon of the layer norms.
    attention_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on attention probabilities of hybrid layers.
    use_position_embeddings (`bool`, *optional*, defaults to `False`):
        Learned absolute position embeddings (teachers use them; C-GSPN students need none). When enabled
        they are bicubically resampled to the input's grid.
    num_prefix_tokens (`int`, *optional*, defaults to 0):
        Class/register tokens prepended to the patch tokens.
    pooling (`str`, *optional*, defaults to `"map"`):
        Image-level pooling: `"map"` (multi-head attention pooling head, as SigLIP), `"cls"` (first prefix
        token) or `"mean"` (mean of the patch tokens).
    patch_embedding_bias (`bool`, *optional*, defaults to `True`):
        Bias of the patch embedding convolution (OpenCLIP ViTs have none).
    use_pre_layernorm (`bool`, *optional*, defaults to `False`):
        LayerNorm after the embeddings (OpenCLIP's `ln_pre`).
    qkv_bias (`bool`, *optional*, defaults to `True`):
        Bias of the hybrid layers' query/key/value projections.
    propagation_backend (`str`, *optional*, defaults to `"auto"`):
        Backend of the propagation operator: one of `"auto"`, `"hub"`, `"cuda"`, `"triton"`, `"torch"`. A
        saved `"hub"` never fetches remote code by itself: the hub kernel needs the user's explicit choice
        (`use_kernels=True`, `CGSPN_PROPAGATION_BACKEND=hub` or `cgspn.use_backend("hub")`); until then it
        acts as `"auto"`.
    kernel_repo_id (`str`, *optional*, defaults to `"cgspn/propagation"`):
        Hub repository of the propagation kernel that `use_kernels=True` may fetch.
    kernel_version (`int`, *optional*, defaults to 1):
        Kernel API version of `kernel_repo_id` (its branch `v<N>`): the hub kernel is always pinned by it.
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the truncated normal initializer.
    semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
        Label ignored by the semantic segmentation loss.
    segmentation_head (`str`, *optional*, defaults to `"linear"`):
        `"linear"` (a BatchNorm + 1x1 conv on the last patch features, as DINOv2's linear probe) or
        `"multiscale"` (a light FPN over `out_indices` features).
    out_features / out_indices (`list`, *optional*):
        Backbone stages to output (`"stem"`, `"stage1"`, ...).

    Example:

    ```python
    >>> from cgspn import CGSPNVisionConfig, CGSPNVisionModel

    >>> config = CGSPNVisionConfig(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16,
    ...                            intermediate_size=4304, patch_size=14, image_size=378)
    >>> config.propagation_channels
    64
    >>> model = CGSPNVisionModel(config)
    ```"""

    model_type = "cgspn_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    propagation_channels: int | None = None
    attention_layer_indices: list[int] | None = None
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    use_position_embeddings: bool = False
    num_prefix_tokens: int = 0
    pooling: Literal["map", "cls", "mean"] = "map"
    patch_embedding_bias: bool = True
    use_pre_layernorm: bool = False
    qkv_bias: bool = True
    propagation_backend: Literal["auto", "hub", "cuda", "triton", "torch"] = "auto"
    kernel_repo_id: str = HUB_KERNEL_REPO_ID
    kernel_version: int = HUB_KERNEL_VERSION
    initializer_range: float = 0.02
    semantic_loss_ignore_index: int = 255
    segmentation_head: Literal["linear", "multiscale"] = "linear"
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        _check_field_types(self)
        if self.propagation_channels is None:
            self.propagation_channels = max(1, self.hidden_size // 18)
        self.attention_layer_indices = sorted(set(self.attention_layer_indices or []))
        self.auto_map = {**VISION_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        stages = len(self.stage_names)
        beyond = [f for f in out_features or [] if f not in self.stage_names]
        beyond += [i for i in out_indices or [] if not -stages <= i < stages]
        if beyond:
            raise ValueError(
                f"Backbone outputs (out_features/out_indices) {beyond} name blocks beyond num_hidden_layers="
                f"{self.num_hidden_layers} (stages 'stem'..'{self.stage_names[-1]}'): a config copied from a deeper "
                "model keeps its backbone outputs; remove out_features and out_indices, or choose among these stages"
            )
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Reject values that cannot build a model (called at construction by `@strict`)."""
        positive = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
        for name in (*positive, "num_channels", "num_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be >= patch_size ({self.patch_size})")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if not 0 <= self.attention_dropout <= 1:
            raise ValueError(f"attention_dropout must be in [0, 1], got {self.attention_dropout}")
        if not self.initializer_range >= 0:
            raise ValueError(f"initializer_range must be >= 0, got {self.initializer_range}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of {sorted(ACT2FN)}, got {self.hidden_act!r}")
        if self.propagation_channels < 1:
            raise ValueError(f"propagation_channels must be >= 1, got {self.propagation_channels}")
        if self.num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {self.num_prefix_tokens}")
        bad = [i for i in self.attention_layer_indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"attention_layer_indices {bad} out of range for num_hidden_layers={self.num_hidden_layers}"
            )
        needs_heads = self.attention_layer_indices or self.pooling == "map"
        if needs_heads and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}) for attention layers and MAP pooling"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls" and self.num_prefix_tokens < 1:
            raise ValueError("pooling='cls' needs num_prefix_tokens >= 1")
        if self.propagation_backend not in PROPAGATION_BACKENDS:
            raise ValueError(
                f"propagation_backend must be one of {PROPAGATION_BACKENDS}, got {self.propagation_backend!r}"
            )
        if self.kernel_repo_id.count("/") != 1:
            raise ValueError(f"kernel_repo_id must be a hub repository id 'owner/name', got {self.kernel_repo_id!r}")
        if type(self.kernel_version) is not int or self.kernel_version < 1:
            raise ValueError(f"kernel_version must be a kernel version number >= 1, got {self.kernel_version!r}")
        if self.segmentation_head not in SEGMENTATION_HEADS:
            raise ValueError(f"segmentation_head must be one of {SEGMENTATION_HEADS}, got {self.segmentation_head!r}")

    @property
    def propagation_layer_indices(self) -> list[int]:
        """Blocks whose token mixer is the C-GSPN propagation."""
        hybrid = set(self.attention_layer_indices)
        return [index for index in range(self.num_hidden_layers) if index not in hybrid]


@strict
class CGSPNConfig(PreTrainedConfig):
    r"""
    Configuration of a CLIP-style dual encoder with a C-GSPN vision tower and any transformers text
    tower (SigLIP text by default; CLIP text works too).

    vision_config (`dict` or `CGSPNVisionConfig`, *optional*):
        The vision tower.
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        Any transformers text-encoder config (`model_type` selects the class, e.g. `"siglip_text_model"`,
        `"clip_text_model"`); defaults to SigLIP text.
    projection_dim (`int`, *optional*):
        When set, linear projections (no bias) map both towers' pooled outputs to this width (CLIP/OpenCLIP);
        when `None` the pooled outputs are used directly (SigLIP) and must have equal widths.
    loss_type (`str`, *optional*, defaults to `"sigmoid"`):
        `"sigmoid"` (SigLIP pairwise loss) or `"softmax"` (CLIP contrastive loss).
    logit_scale_init_value (`float`, *optional*, defaults to `log(10)`):
        Initial log temperature.
    logit_bias_init_value (`float`, *optional*, defaults to -10.0):
        Initial logit bias; `None` builds no bias (CLIP).

    Example:

    ```python
    >>> from cgspn import CGSPNConfig, CGSPNModel
    >>> config = CGSPNConfig(vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    ...                      text_config={"model_type": "siglip_text_model", "hidden_size": 64})
    >>> model = CGSPNModel(config)
    ```"""

    model_type = "cgspn"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(config_class=CGSPNVisionConfig),
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type=DEFAULT_TEXT_MODEL_TYPE),
        }
    else:
        sub_configs = {"vision_config": CGSPNVisionConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int | None = None
    loss_type: Literal["sigmoid", "softmax"] = "sigmoid"
    logit_scale_init_value: float = math.log(10.0)
    logit_bias_init_value: float | None = -10.0
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            self._build_sub_configs()
        super().__post_init__(**kwargs)
        self.auto_map = {**CLIP_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    def _build_sub_configs(self) -> None:
        """Dicts or `None` to config objects, as `sub_configs_defaults` does on newer transformers."""
        if not isinstance(self.vision_config, PreTrainedConfig):
            self.vision_config = CGSPNVisionConfig(**(self.vision_config or {}))
        if not isinstance(self.text_config, PreTrainedConfig):
            text = dict(self.text_config or {})
            self.text_config = AutoConfig.for_model(text.pop("model_type", DEFAULT_TEXT_MODEL_TYPE), **text)

    def validate_architecture(self):
        """Reject towers whose embeddings cannot be compared (called at construction by `@strict`)."""
        if self.loss_type not in ("sigmoid", "softmax"):
            raise ValueError(f"loss_type must be 'sigmoid' or 'softmax', got {self.loss_type!r}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.projection_dim is None and self.text_embed_dim != self.vision_config.hidden_size:
            raise ValueError(
                f"Without projection_dim the text embedding width ({self.text_embed_dim}) must equal the vision "
                f"hidden_size ({self.vision_config.hidden_size})"
            )

    @property
    def text_embed_dim(self) -> int:
        """Width of the text tower's pooled output (SigLIP's `projection_size`, else `hidden_size`)."""
        return getattr(self.text_config, "projection_size", None) or self.text_config.hidden_size


__all__ = ["CGSPNConfig", "CGSPNVisionConfig"]
