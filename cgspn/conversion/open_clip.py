"""Converter from open_clip models (native ``VisionTransformer`` towers and timm-backed ViT towers such as SigLIP's).

Supported towers, each with an explicit key map into C-GSPN names:

* vision, native open_clip ``VisionTransformer`` (class token, learned or sin-cos position embeddings, ``ln_pre``,
  token or average pooling, ``proj``) -> `CGSPNVisionModel` with ``pooling="cls"``/``"mean"``;
* vision, ``TimmModel`` wrapping a timm ``VisionTransformer`` (e.g. ``vit_so400m_patch14_siglip_384``: no class
  token, MAP head ``attn_pool``) -> ``pooling="map"``/``"cls"``/``"mean"``, optional linear ``proj`` head;
* text, native ``TextTransformer`` (or the flat text attributes of ``open_clip.CLIP``): causal with ``argmax``/``eos``
  pooling -> transformers ``CLIPTextModel``; bidirectional with ``last`` pooling and a biased projection (SigLIP)
  -> ``SiglipTextModel`` (its ``head`` is the projection).

Anything else (layer scale, custom attention blocks, attentional poolers, HF text towers, CoCa, ResNets, ...)
raises ``NotImplementedError`` naming the feature.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..configuration_cgspn import CGSPNConfig, CGSPNVisionConfig
from ..tokenization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_image_processor
from .common import Copy, TeacherSpec, fused_qkv, linear

logger = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID = 49406
# transformers' CLIPTextModel pools at the argmax of the token ids (open_clip's "argmax") when eos_token_id == 2.
LEGACY_ARGMAX_EOS_ID = 2
_INTERPOLATION_TO_PIL = {"bicubic": 3, "bilinear": 2, "nearest": 0}
_RESIZE_MODES = {"shortest": "shortest_edge", "squash": "squash"}


def _activation_name(module: nn.Module, where: str) -> str:
    """transformers ``ACT2FN`` name of an activation module."""
    name = type(module).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if name == "GELUTanh" or (isinstance(module, nn.GELU) and module.approximate == "tanh"):
        return "gelu_pytorch_tanh"
    if isinstance(module, nn.GELU):
        return "gelu"
    raise NotImplementedError(f"{where}: activation {name} is not supported (GELU, tanh-GELU or QuickGELU)")


def _require_identity(module: nn.Module | None, what: str) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise NotImplementedError(f"{what} is not supported by the C-GSPN converter")


def _layer_norm_eps(module: nn.Module, where: str) -> float:
    if not isinstance(module, nn.LayerNorm):
        raise NotImplementedError(f"{where}: normalization {type(module).__name__} (only LayerNorm is supported)")
    return float(module.eps)


def _square(value: Any, what: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise NotImplementedError(f"non-square {what} {tuple(value)}")
        value = value[0]
    return int(value)


# --------------------------------------------------------------------------------------------------------------------
# open_clip residual blocks (shared by the native vision and text towers)
# --------------------------------------------------------------------------------------------------------------------


def _check_resblock(block: nn.Module, where: str) -> None:
    if type(block).__name__ != "ResidualAttentionBlock":
        raise NotImplementedError(
            f"{where}: {type(block).__name__} (custom attention blocks: qk-norm, scaled cosine attention, "
            "head/attention/fc scaling) is not supported"
        )
    _require_identity(block.ls_1, f"{where}: layer scale (ls_init_value)")
    _require_identity(block.ls_2, f"{where}: layer scale (ls_init_value)")
    if hasattr(block, "ln_1_kv"):
        raise NotImplementedError(f"{where}: cross-attention blocks are not supported")


def _resblock_copies(target: str, source: str, width: int, attention: str) -> list[Copy]:
    """``ResidualAttentionBlock`` -> C-GSPN layer (``attention="mixer"``) or transformers layer (``"self_attn"``)."""
    return [
        *linear(f"{target}.layer_norm1", f"{source}.ln_1"),
        *fused_qkv(f"{target}.{attention}", f"{source}.attn.in_proj_weight", width, "weight"),
        *fused_qkv(f"{target}.{attention}", f"{source}.attn.in_proj_bias", width, "bias"),
        *linear(f"{target}.{attention}.out_proj", f"{source}.attn.out_proj"),
        *linear(f"{target}.layer_norm2", f"{source}.ln_2"),
        *linear(f"{target}.mlp.fc1", f"{source}.mlp.c_fc"),
        *linear(f"{target}.mlp.fc2", f"{source}.mlp.c_proj"),
    ]


def _resblock_dims(blocks: nn.ModuleList, where: str) -> dict[str, Any]:
    first = blocks[0]
    for index, block in enumerate(blocks):
        _check_resblock(block, f"{where} block {index}")
    return {
        "hidden_size": first.attn.embed_dim,
        "num_attention_heads": first.attn.num_heads,
        "intermediate_size": first.mlp.c_fc.out_features,
        "num_hidden_layers": len(blocks),
        "hidden_act": _activation_name(first.mlp.gelu, where),
        "layer_norm_eps": _layer_norm_eps(first.ln_1, where),
    }


# --------------------------------------------------------------------------------------------------------------------
# vision towers
# --------------------------------------------------------------------------------------------------------------------


def _native_vision(visual: nn.Module, prefix: str) -> tuple[dict[str, Any], list[Copy], bool]:
    """open_clip ``VisionTransformer`` -> (vision config kwargs, key map, has projection)."""
    if visual.attn_pool is not None:
        raise NotImplementedError("open_clip attentional pooler (attentional_pool / CoCa) is not supported")
    if visual.pool_type not in ("tok", "avg"):
        raise NotImplementedError(f"open_clip vision pool_type {visual.pool_type!r} (supported: 'tok', 'avg')")
    if visual.final_ln_after_pool and visual.pool_type == "avg":
        raise NotImplementedError("open_clip final_ln_after_pool with average pooling")
    dims = _resblock_dims(visual.transformer.resblocks, "open_clip vision tower")
    width = dims["hidden_size"]
    config = dict(
        dims,
        image_size=_square(visual.image_size, "image size"),
        patch_size=_square(visual.patch_size, "patch size"),
        num_channels=visual.conv1.in_channels,
        num_prefix_tokens=1,
        pooling="cls" if visual.pool_type == "tok" else "mean",
        patch_embedding_bias=visual.conv1.bias is not None,
        use_pre_layernorm=not isinstance(visual.ln_pre, nn.Identity),
        use_position_embeddings=True,
        qkv_bias=visual.transformer.resblocks[0].attn.in_proj_bias is not None,
    )
    target = "vision_model"
    copies = [
        Copy(f"{target}.embeddings.patch_embedding.weight", f"{prefix}conv1.weight"),
        Copy(f"{target}.embeddings.prefix_tokens", f"{prefix}class_embedding"),
        Copy(f"{target}.embeddings.position_embedding", f"{prefix}positional_embedding"),
        *linear(f"{target}.post_layernorm", f"{prefix}ln_post"),
    ]
    if config["patch_embedding_bias"]:
        copies.append(Copy(f"{target}.embeddings.patch_embedding.bias", f"{prefix}conv1.bias"))
    if config["use_pre_layernorm"]:
        copies += linear(f"{target}.embeddings.pre_layernorm", f"{prefix}ln_pre")
    for index in range(dims["num_hidden_layers"]):
        copies += _resblock_copies(
            f"{target}.encoder.layers.{index}", f"{prefix}transformer.resblocks.{index}", width, "mixer"
        )
    has_projection = visual.proj is not None
    if has_projection:
        copies.append(Copy("visual_projection.weight", f"{prefix}proj", transpose=True))
    return config, copies, has_projection


def _timm_block_copies(target: str, source: str, width: int) -> list[Copy]:
    return [
        *linear(f"{target}.layer_norm1", f"{source}.norm1"),
        *fused_qkv(f"{target}.mixer", f"{source}.attn.qkv.weight", width, "weight"),
        *fused_qkv(f"{target}.mixer", f"{source}.attn.qkv.bias", width, "bias"),
        *linear(f"{target}.mixer.out_proj", f"{source}.attn.proj"),
        *linear(f"{target}.layer_norm2", f"{source}.norm2"),
        *linear(f"{target}.mlp.fc1", f"{source}.mlp.fc1"),
        *linear(f"{target}.mlp.fc2", f"{source}.mlp.fc2"),
    ]


def _check_timm_block(block: nn.Module, where: str) -> None:
    if type(block).__name__ != "Block" or type(block.attn).__name__ != "Attention":
        raise NotImplementedError(f"{where}: timm block {type(block).__name__} (only the standard ViT Block)")
    for name in ("ls1", "ls2"):
        _require_identity(getattr(block, name), f"{where}: layer scale")
    for name in ("q_norm", "k_norm", "norm"):
        _require_identity(getattr(block.attn, name, None), f"{where}: attention {name}")
    _require_identity(getattr(block.mlp, "norm", None), f"{where}: MLP norm")
    if type(block.mlp).__name__ != "Mlp":
        raise NotImplementedError(f"{where}: MLP {type(block.mlp).__name__} (only timm Mlp, no GLU/SwiGLU)")


def _timm_vision(visual: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]):
    """open_clip ``TimmModel`` around a timm ``VisionTransformer`` -> (config kwargs, key map, has projection)."""
    trunk = visual.trunk
    if type(trunk).__name__ != "VisionTransformer":
        raise NotImplementedError(f"timm trunk {type(trunk).__name__} (only timm VisionTransformer)")
    trunk_prefix = f"{prefix}trunk."
    _require_identity(trunk.patch_embed.norm, "timm patch-embedding norm")
    _require_identity(trunk.fc_norm, "timm fc_norm (norm after pooling)")
    _require_identity(trunk.head, "a timm classifier head inside the trunk")
    blocks = trunk.blocks
    for index, block in enumerate(blocks):
        _check_timm_block(block, f"timm block {index}")
    if isinstance(trunk.norm, nn.Identity):
        raise NotImplementedError("timm ViT without a final norm")
    width = trunk.embed_dim
    first = blocks[0]
    num_prefix = trunk.num_prefix_tokens
    if trunk.attn_pool is not None:
        pool = trunk.attn_pool
        if type(pool).__name__ != "AttentionPoolLatent":
            raise NotImplementedError(f"timm pooling {type(pool).__name__} (only AttentionPoolLatent MAP heads)")
        if pool.latent_len != 1 or pool.pos_embed is not None or pool.mlp is None or pool.pool != "token":
            raise NotImplementedError("timm MAP head with several latents, position embedding or no MLP")
        _require_identity(pool.q_norm, "timm MAP head q/k norm")
        if num_prefix and not trunk.pool_include_prefix:
            raise NotImplementedError("timm MAP head over patch tokens only, with class/register tokens present")
        if pool.num_heads != first.attn.num_heads or pool.mlp.fc1.out_features != first.mlp.fc1.out_features:
            raise NotImplementedError("timm MAP head whose heads or MLP width differ from the blocks'")
        pooling = "map"
    elif trunk.global_pool == "token":
        pooling = "cls"
    elif trunk.global_pool == "avg" and not trunk.pool_include_prefix:
        pooling = "mean"
    else:
        raise NotImplementedError(f"timm global_pool {trunk.global_pool!r} (supported: 'map', 'token', 'avg')")
    config = dict(
        hidden_size=width,
        num_attention_heads=first.attn.num_heads,
        intermediate_size=first.mlp.fc1.out_features,
        num_hidden_layers=len(blocks),
        hidden_act=_activation_name(first.mlp.act, "timm vision tower"),
        layer_norm_eps=_layer_norm_eps(first.norm1, "timm vision tower"),
        image_size=_square(trunk.patch_embed.img_size, "image size"),
        patch_size=_square(trunk.patch_embed.patch_size, "patch size"),
        num_channels=trunk.patch_embed.proj.in_channels,
        num_prefix_tokens=num_prefix,
        pooling=pooling,
        patch_embedding_bias=trunk.patch_embed.proj.bias is not None,
        use_pre_layernorm=not isinstance(trunk.norm_pre, nn.Identity),
        use_position_embeddings=trunk.pos_embed is not None,
        qkv_bias=first.attn.qkv.bias is not None,
    )
    target = "vision_model"
    copies = [
        Copy(f"{target}.embeddings.patch_embedding.weight", f"{trunk_prefix}patch_embed.proj.weight"),
        *linear(f"{target}.post_layernorm", f"{trunk_prefix}norm"),
    ]
    if config["patch_embedding_bias"]:
        copies.append(Copy(f"{target}.embeddings.patch_embedding.bias", f"{trunk_prefix}patch_embed.proj.bias"))
    if num_prefix:
        # timm keeps class and register tokens apart; C-GSPN holds them as one (1, P, C) tensor, cls first
        parts = [t for t in (trunk.cls_token, trunk.reg_token) if t is not None]
        tensors[f"{trunk_prefix}cls_token+reg_token"] = torch.cat([p.detach() for p in parts], dim=1)
        copies.append(Copy(f"{target}.embeddings.prefix_tokens", f"{trunk_prefix}cls_token+reg_token"))
    if trunk.pos_embed is not None:
        pad = num_prefix if trunk.no_embed_class else 0  # zero position embedding where timm adds none
        copies.append(Copy(f"{target}.embeddings.position_embedding", f"{trunk_prefix}pos_embed", pad_prefix=pad))
    if config["use_pre_layernorm"]:
        copies += linear(f"{target}.embeddings.pre_layernorm", f"{trunk_prefix}norm_pre")
    for index in range(len(blocks)):
        copies += _timm_block_copies(f"{target}.encoder.layers.{index}", f"{trunk_prefix}blocks.{index}", width)
    if pooling == "map":
        pool_prefix = f"{trunk_prefix}attn_pool"
        # nn.MultiheadAttention packs [q; k; v] in in_proj; timm keeps q apart and packs [k; v] in kv
        for suffix in ("weight", "bias"):
            tensors[f"{pool_prefix}.q+kv.{suffix}"] = torch.cat(
                (tensors[f"{pool_prefix}.q.{suffix}"], tensors[f"{pool_prefix}.kv.{suffix}"]), dim=0
            )
        copies += [
            Copy(f"{target}.head.probe", f"{pool_prefix}.latent"),
            Copy(f"{target}.head.attention.in_proj_weight", f"{pool_prefix}.q+kv.weight"),
            Copy(f"{target}.head.attention.in_proj_bias", f"{pool_prefix}.q+kv.bias"),
            *linear(f"{target}.head.attention.out_proj", f"{pool_prefix}.proj"),
            *linear(f"{target}.head.layernorm", f"{pool_prefix}.norm"),
            *linear(f"{target}.head.mlp.fc1", f"{pool_prefix}.mlp.fc1"),
            *linear(f"{target}.head.mlp.fc2", f"{pool_prefix}.mlp.fc2"),
        ]
    head = dict(visual.head.named_children())
    layers = {name: module for name, module in head.items() if not isinstance(module, nn.Dropout)}
    has_projection = bool(layers)
    if layers:
        proj = layers.get("proj")
        if set(layers) != {"proj"} or not isinstance(proj, nn.Linear) or proj.bias is not None:
            raise NotImplementedError(f"open_clip timm head {list(layers)} (only a bias-free linear 'proj')")
        copies.append(Copy("visual_projection.weight", f"{prefix}head.proj.weight"))
    return config, copies, has_projection


# --------------------------------------------------------------------------------------------------------------------
# text tower
# --------------------------------------------------------------------------------------------------------------------


class _TextView:
    """Uniform access to open_clip's text tower: ``CustomTextCLIP.text`` or the flat attributes of ``CLIP``."""

    def __init__(self, model: nn.Module):
        text = getattr(model, "text", None)
        if text is not None:
            if type(text).__name__ != "TextTransformer":
                raise NotImplementedError(
                    f"open_clip text tower {type(text).__name__} (only the native TextTransformer)"
                )
            if text.cls_emb is not None:
                raise NotImplementedError("open_clip text class embedding (CoCa-style embed_cls)")
            if getattr(text, "use_pad_mask", False):
                raise NotImplementedError("open_clip text padding mask (use_pad_mask)")
            self.module, self.prefix = text, "text."
            self.pool_type, self.eos_id = text.pool_type, text.eos_id
        else:
            self.module, self.prefix = model, ""
            self.pool_type, self.eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
        self.transformer = self.module.transformer
        self.token_embedding = self.module.token_embedding
        self.positional_embedding = self.module.positional_embedding
        self.ln_final = self.module.ln_final
        self.text_projection = self.module.text_projection
        self.causal = self.module.attn_mask is not None
        self.context_length = self.positional_embedding.shape[0]
        self.vocab_size = self.token_embedding.num_embeddings


def _special_token_ids(vocab_size: int, pad: int, eos: bool = False) -> dict[str, int | None]:
    """CLIP's special ids for CLIP-vocabulary towers, else ``None`` (the text models pool without them)."""
    clip = vocab_size == CLIP_VOCAB_SIZE
    ids = {"bos_token_id": CLIP_BOS_ID if clip else None, "pad_token_id": pad if clip else None}
    if eos:
        ids["eos_token_id"] = CLIP_VOCAB_SIZE - 1 if clip else None
    return ids


def _text_tower(model: nn.Module, projection_dim: int | None) -> tuple[dict[str, Any], list[Copy], str]:
    """Text tower -> (transformers text config dict, key map, kind "clip" or "siglip")."""
    view = _TextView(model)
    dims = _resblock_dims(view.transformer.resblocks, "open_clip text tower")
    width = dims["hidden_size"]
    proj = view.text_projection
    config: dict[str, Any] = dict(
        dims, vocab_size=view.vocab_size, max_position_embeddings=view.context_length, attention_dropout=0.0
    )
    p = view.prefix
    target = "text_model"
    copies = [
        Copy(f"{target}.embeddings.token_embedding.weight", f"{p}token_embedding.weight"),
        Copy(f"{target}.embeddings.position_embedding.weight", f"{p}positional_embedding"),
        *linear(f"{target}.final_layer_norm", f"{p}ln_final"),
    ]
    for index in range(dims["num_hidden_layers"]):
        copies += _resblock_copies(
            f"{target}.encoder.layers.{index}", f"{p}transformer.resblocks.{index}", width, "self_attn"
        )
    if view.causal and view.pool_type in ("argmax", "eos"):
        if isinstance(proj, nn.Linear) and proj.bias is not None:
            raise NotImplementedError("causal open_clip text tower with a biased projection")
        if proj is None or projection_dim is None:
            raise NotImplementedError("CLIP-style text tower without projections on both towers")
        if view.pool_type == "eos" and view.eos_id == LEGACY_ARGMAX_EOS_ID:
            raise NotImplementedError("pool_type 'eos' with eos_id 2 (transformers reads id 2 as argmax pooling)")
        eos = LEGACY_ARGMAX_EOS_ID if view.pool_type == "argmax" else view.eos_id
        config.update(model_type="clip_text_model", eos_token_id=eos, projection_dim=projection_dim)
        config.update(_special_token_ids(view.vocab_size, pad=CLIP_VOCAB_SIZE - 1))
        weight_source = f"{p}text_projection" + (".weight" if isinstance(proj, nn.Linear) else "")
        copies.append(Copy("text_projection.weight", weight_source, transpose=not isinstance(proj, nn.Linear)))
        return config, copies, "clip"
    if not view.causal and view.pool_type == "last":
        if projection_dim is not None:
            raise NotImplementedError("SigLIP-style text tower paired with a projected vision tower")
        if proj is None:
            raise NotImplementedError("SigLIP-style text tower without projection")
        if isinstance(proj, nn.Linear):
            config["projection_size"] = proj.out_features
            copies += linear(f"{target}.head", f"{p}text_projection", bias=proj.bias is not None)
            if proj.bias is None:
                raise NotImplementedError("SigLIP-style text tower with a bias-free projection")
        else:
            raise NotImplementedError("SigLIP-style text tower with a parameter (bias-free) projection")
        config.update(model_type="siglip_text_model", **_special_token_ids(view.vocab_size, pad=0, eos=True))
        return config, copies, "siglip"
    raise NotImplementedError(
        f"open_clip text tower with causal={view.causal} and pool_type={view.pool_type!r} "
        "(supported: causal + argmax/eos (CLIP), bidirectional + last (SigLIP))"
    )


# --------------------------------------------------------------------------------------------------------------------
# preprocessing and tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    return cfg


def image_processor_from_open_clip(model: nn.Module):
    """A `CLIPImageProcessor` equal to open_clip's eval transform of ``model`` (its ``preprocess_cfg``)."""
    cfg = _preprocess_cfg(model)
    resize_mode = cfg.get("resize_mode", "shortest")
    interpolation = cfg.get("interpolation", "bicubic")
    if resize_mode not in _RESIZE_MODES:
        raise NotImplementedError(f"open_clip resize_mode {resize_mode!r} (supported: {sorted(_RESIZE_MODES)})")
    if interpolation not in _INTERPOLATION_TO_PIL:
        raise NotImplementedError(f"open_clip interpolation {interpolation!r}")
    return clip_image_processor(
        image_size=_square(cfg.get("size", 224), "preprocessing size"),
        mean=cfg.get("mean", OPENAI_CLIP_MEAN),
        std=cfg.get("std", OPENAI_CLIP_STD),
        resize_mode=_RESIZE_MODES[resize_mode],
        resample=_INTERPOLATION_TO_PIL[interpolation],
    )


def open_clip_eval_transform(model: nn.Module):
    """open_clip's own eval transform for ``model`` (built by ``open_clip.image_transform_v2``)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: v for k, v in _preprocess_cfg(model).items() if k in PreprocessCfg.__dataclass_fields__}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def clip_tokenizer_for(context_length: int, bidirectional: bool):
    """The CLIP BPE tokenizer (open_clip's bundled vocab) for a text tower of ``context_length`` tokens.

    open_clip pads with id 0. For causal towers padding never reaches the pooled token, so the usual
    ``<|endoftext|>`` padding is kept; for bidirectional towers (which attend to padding) the tokenizer pads with the
    id-0 token and returns only ``input_ids``, as open_clip feeds them.
    """
    from ..tokenization import clip_tokenizer_from_open_clip_vocab

    if not bidirectional:
        return clip_tokenizer_from_open_clip_vocab(model_max_length=context_length)
    tokenizer = clip_tokenizer_from_open_clip_vocab(model_max_length=context_length, pad_token="!")
    tokenizer.model_input_names = ["input_ids"]
    tokenizer.init_kwargs["model_input_names"] = ["input_ids"]
    return tokenizer


def _open_clip_tokenizer(name: str | None, context_length: int, vocab_size: int):
    """open_clip's own tokenizer for parity checks (offline: the bundled CLIP BPE, or a named model's tokenizer)."""
    import open_clip

    if name is not None:
        try:
            return open_clip.get_tokenizer(name, context_length=context_length)
        except Exception as error:  # HF tokenizers need the network
            logger.warning("open_clip.get_tokenizer(%r) failed (%s); no tokenizer parity check", name, error)
            return None
    if vocab_size == CLIP_VOCAB_SIZE:
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return None


def _hf_tokenizer_name(name: str | None) -> str | None:
    if name is None:
        return None
    import open_clip

    try:
        config = open_clip.get_model_config(name) or {}
    except Exception:
        return None
    return (config.get("text_cfg") or {}).get("hf_tokenizer_name")


# --------------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------------


def open_clip_teacher_spec(
    model: nn.Module,
    *,
    name: str | None = None,
    preprocess=None,
    tokenizer=None,
    vision_only: bool = False,
) -> TeacherSpec:
    """Describe an open_clip ``CLIP``/``CustomTextCLIP`` model as a `TeacherSpec`.

    Args:
        model: the open_clip model (any weights).
        name: its open_clip model name, used to find its tokenizer (optional).
        preprocess: open_clip's eval transform (defaults to one rebuilt from the model's ``preprocess_cfg``).
        tokenizer: a transformers tokenizer to ship (defaults to the CLIP BPE tokenizer for CLIP-vocabulary towers,
            else ``AutoTokenizer.from_pretrained`` of the model's ``hf_tokenizer_name`` when that works offline).
        vision_only: convert only the image tower (a `CGSPNVisionModel` without projection).
    """
    if type(model).__name__ not in ("CLIP", "CustomTextCLIP"):
        raise NotImplementedError(f"open_clip model class {type(model).__name__} (only CLIP and CustomTextCLIP)")
    tensors = {key: value.detach() for key, value in model.state_dict().items()}
    visual = model.visual
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        vision, copies, has_projection = _native_vision(visual, "visual.")
    elif kind == "TimmModel":
        vision, copies, has_projection = _timm_vision(visual, "visual.", tensors)
    else:
        raise NotImplementedError(f"open_clip vision tower {kind} (only ViTs: VisionTransformer or a timm ViT)")

    model.eval()
    image_features = model.encode_image
    notes: list[str] = []
    if vision_only:
        copies = [c for c in copies if c.target.startswith("vision_model.")]
        config = CGSPNVisionConfig(**vision)
        copies = [
            Copy(c.target.removeprefix("vision_model."), c.source, c.rows, c.transpose, c.pad_prefix) for c in copies
        ]

        def vision_tower_features(pixel_values: torch.Tensor) -> torch.Tensor:
            """Pooled, unprojected features (open_clip applies ``proj`` inside the tower)."""
            return _unprojected_image_features(model, pixel_values)

        image_features = vision_tower_features
        text_config = None
    else:
        projection_dim = _projection_dim(visual, has_projection)
        text_config, text_copies, _text_kind = _text_tower(model, projection_dim)
        copies += text_copies
        copies.append(Copy("logit_scale", "logit_scale"))
        has_bias = getattr(model, "logit_bias", None) is not None
        if has_bias:
            copies.append(Copy("logit_bias", "logit_bias"))
        config = CGSPNConfig(
            vision_config=vision,
            text_config=text_config,
            projection_dim=projection_dim,
            loss_type="sigmoid" if has_bias else "softmax",
            logit_scale_init_value=float(model.logit_scale.detach().reshape(-1)[0]),
            logit_bias_init_value=float(model.logit_bias.detach().reshape(-1)[0]) if has_bias else None,
        )
    spec = TeacherSpec(
        config=config,
        copies=copies,
        tensors=tensors,
        image_features=image_features,
        preprocess=preprocess or open_clip_eval_transform(model),
        image_processor=image_processor_from_open_clip(model),
        description=f"open_clip:{name}" if name else f"open_clip {type(model).__name__}",
        notes=notes,
    )
    if text_config is not None:
        bidirectional = text_config["model_type"] == "siglip_text_model"
        context_length = text_config["max_position_embeddings"]

        def text_features(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            """open_clip encodes token ids alone: the tokenizer shipped for a bidirectional tower returns no mask,
            and a causal tower's pooled token never sees the padding that a mask would hide."""
            return model.encode_text(input_ids)

        spec.text_features = text_features
        spec.tokenize = _open_clip_tokenizer(name, context_length, text_config["vocab_size"])
        spec.tokenizer = tokenizer or _default_tokenizer(name, context_length, text_config["vocab_size"], bidirectional)
        if spec.tokenizer is None:
            notes.append("no tokenizer could be built offline; the folder ships the image processor only")
    return spec


def _projection_dim(visual: nn.Module, has_projection: bool) -> int | None:
    if not has_projection:
        return None
    if type(visual).__name__ == "VisionTransformer":
        return visual.proj.shape[1]
    return visual.head.proj.out_features


def _unprojected_image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    visual = model.visual
    if type(visual).__name__ == "VisionTransformer":
        x = visual.transformer(visual._embeds(pixel_values))
        pooled, _ = visual._pool(x)
        return pooled
    return visual.trunk(pixel_values)


def _default_tokenizer(name: str | None, context_length: int, vocab_size: int, bidirectional: bool):
    hf_name = _hf_tokenizer_name(name)
    if hf_name is None and vocab_size == CLIP_VOCAB_SIZE:
        return clip_tokenizer_for(context_length, bidirectional)
    if hf_name is not None:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(hf_name, model_max_length=context_length)
        except Exception as error:  # offline: the tokenizer files are on the Hub
            logger.warning("Could not load tokenizer %r (%s); pass tokenizer= to ship one", hf_name, error)
    return None


def load_open_clip(name: str, pretrained: str | None = None, **kwargs):
    """``open_clip.create_model_and_transforms(name, pretrained=...)`` -> (model in eval mode, eval transform)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
    return model.eval(), preprocess


def open_clip_spec_from_name(name: str, pretrained: str | None = None, *, vision_only: bool = False) -> TeacherSpec:
    """Load an open_clip model by name (library call; downloads only if ``pretrained`` asks for it) and describe it."""
    model, preprocess = load_open_clip(name, pretrained)
    return open_clip_teacher_spec(model, name=name, preprocess=preprocess, vision_only=vision_only)


__all__ = [
    "clip_tokenizer_for",
    "image_processor_from_open_clip",
    "load_open_clip",
    "open_clip_eval_transform",
    "open_clip_spec_from_name",
    "open_clip_teacher_spec",
]
