"""Conversion of tiny random-init teachers (open_clip native ViT, open_clip timm SigLIP, transformers SigLIP/CLIP).

Nothing downloads: open_clip models come from tiny configs registered with `open_clip.add_model_config`, timm
towers from a tiny ViT registered with timm's model registry, transformers models from tiny configs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from PIL import Image  # noqa: E402
from timm.models import register_model  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from cgspn import CGSPNModel, CGSPNVisionModel  # noqa: E402
from cgspn.conversion import (  # noqa: E402
    build_model,
    load_teacher,
    parse_attention_layers,
    resolve_teacher,
    student_from_teacher,
    teacher_taps,
    value_output_factors,
)
from cgspn.conversion import open_clip as oc_conversion  # noqa: E402
from cgspn.conversion.cli import main  # noqa: E402
from cgspn.conversion.init import LAMBDA, NUM_DIRECTIONS, NUM_FIELDS, WT_NEXT, WT_PREV, WT_SELF, U  # noqa: E402
from cgspn.conversion.open_clip import image_processor_from_open_clip, open_clip_teacher_spec  # noqa: E402
from cgspn.conversion.teacher import parse_open_clip_spec  # noqa: E402
from cgspn.conversion.transformers import transformers_teacher_spec  # noqa: E402
from cgspn.tokenization import clip_image_processor  # noqa: E402
from tests.helpers import save_tiny_transformers_teacher  # noqa: E402

CLIP_VOCAB = 49408
WIDTH, HEADS, DEPTH, IMAGE, PATCH, CONTEXT = 32, 2, 3, 32, 8, 16
TINY_VIT = "cgspn-test-tiny-vit-b"
TINY_SIGLIP = "cgspn-test-tiny-siglip"
TIMM_SIGLIP = "vit_cgspn_test_patch8_siglip_32"
TIMM_PREFIXED = "vit_cgspn_test_patch8_reg2_32"
ATOL = 1e-5


def _timm_vit(defaults: dict, kwargs: dict) -> VisionTransformer:
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = VisionTransformer(**{**defaults, **kwargs})
    model.default_cfg = {}  # what timm's factory would attach; open_clip's TimmModel reads it
    return model


@register_model
def vit_cgspn_test_patch8_siglip_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Tiny SigLIP-style timm ViT: no class token, MAP head, tanh GELU."""
    defaults = dict(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.5,
        class_token=False, global_pool="map", act_layer="gelu_tanh",
    )  # fmt: skip
    return _timm_vit(defaults, kwargs)


@register_model
def vit_cgspn_test_patch8_reg2_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Tiny timm ViT with class + 2 register tokens outside the position embedding, pre-norm, token pooling."""
    defaults = dict(
        img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=2, num_heads=HEADS, class_token=True, reg_tokens=2,
        no_embed_class=True, pre_norm=True, global_pool="token",
    )  # fmt: skip
    return _timm_vit(defaults, kwargs)


@register_model
def vit_cgspn_test_patch8_siglip_36(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Like the tiny SigLIP tower at 36 px: not a multiple of the patch (as SO400M/14 at 384)."""
    return vit_cgspn_test_patch8_siglip_32(pretrained, **{"img_size": 36, **kwargs})


TINY_CONFIGS = {
    TINY_VIT: {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE, "layers": DEPTH, "width": WIDTH, "head_width": 16, "patch_size": PATCH},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": CLIP_VOCAB, "width": WIDTH, "heads": HEADS, "layers": 2},
    },
    TINY_SIGLIP: {
        "embed_dim": WIDTH,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": IMAGE, "timm_model_name": TIMM_SIGLIP, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {
            "context_length": CONTEXT,
            "vocab_size": CLIP_VOCAB,
            "width": WIDTH,
            "heads": HEADS,
            "layers": 2,
            "mlp_ratio": 2.5,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    },
}


@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every floating tensor so that no copy can pass by accident (zero biases, unit norms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def _text_ids(vocab: int = CLIP_VOCAB, eos: int | None = None) -> torch.Tensor:
    ids = torch.randint(1, vocab - 2, (3, CONTEXT), generator=torch.Generator().manual_seed(2))
    ids[0, 4:] = 0  # open_clip-style zero padding after the end-of-text token
    ids[:, 3] = vocab - 1 if eos is None else eos
    return ids


def _open_clip_model(name: str) -> torch.nn.Module:
    model = open_clip.create_model(name, pretrained=None)
    return _randomize(model)


def _siglip_timm_prefixed() -> torch.nn.Module:
    """open_clip CustomTextCLIP with the class/register-token timm tower and a linear projection head."""
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(
        embed_dim=20,
        vision_cfg={"image_size": IMAGE, "timm_model_name": TIMM_PREFIXED, "timm_pool": "", "timm_proj": "linear"},
        text_cfg={"context_length": CONTEXT, "vocab_size": 1000, "width": WIDTH, "heads": HEADS, "layers": 1},
    )
    return _randomize(model)


TEXT = dict(hidden_size=WIDTH, intermediate_size=48, num_hidden_layers=2, num_attention_heads=HEADS)
VISION = dict(TEXT, num_hidden_layers=DEPTH, image_size=IMAGE, patch_size=PATCH)


def _hf_siglip() -> SiglipModel:
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=256, max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return _randomize(SiglipModel(SiglipConfig(text_config=text, vision_config=VISION)))


def _hf_clip(vocab: int = 300) -> CLIPModel:
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=vocab, max_position_embeddings=CONTEXT, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    return _randomize(CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)))


TEACHERS = {
    "open_clip_vit": lambda: _open_clip_model(TINY_VIT),
    "open_clip_timm_siglip": lambda: _open_clip_model(TINY_SIGLIP),
    "open_clip_timm_prefixed": _siglip_timm_prefixed,
    "hf_siglip": _hf_siglip,
    "hf_clip": _hf_clip,
}


@pytest.fixture(scope="module")
def teachers():
    return {name: factory() for name, factory in TEACHERS.items()}


def _teacher_embeddings(teacher, pixels, ids):
    """The teacher's own image and text embeddings (library calls, not the converter's wrappers)."""
    with torch.no_grad():
        if isinstance(teacher, (SiglipModel, CLIPModel)):
            return (
                teacher.get_image_features(pixel_values=pixels).pooler_output,
                teacher.get_text_features(input_ids=ids).pooler_output,
            )
        return teacher.encode_image(pixels), teacher.encode_text(ids)


def _ids_for(name: str, teacher) -> torch.Tensor:
    if name.startswith("hf_"):
        config = teacher.config.text_config
        return _text_ids(config.vocab_size, config.eos_token_id)
    return _text_ids(teacher.vocab_size if hasattr(teacher, "vocab_size") else CLIP_VOCAB)


# ------------------------------------------------------------------------------------------------------------------
# (i) copied tensors
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TEACHERS))
def test_copied_tensors_equal_sources(teachers, name):
    teacher = teachers[name]
    spec = resolve_teacher(teacher)
    result = build_model(spec, attention_layers=[1])
    student = result.model.state_dict()
    sources = {key: value.detach() for key, value in teacher.state_dict().items()}
    for target, entry in result.copied.items():
        source = spec.tensors[entry.source]
        if entry.source in sources:  # a real teacher tensor (others are concatenations checked below)
            assert torch.equal(spec.tensors[entry.source], sources[entry.source])
        assert torch.equal(student[target], entry.apply({entry.source: source}, student[target].shape)), target
    # everything but the propagation layers and the dropped position embeddings is copied
    propagation = {k for k in student if ".mixer." in k and k not in result.copied}
    assert propagation == set(result.initialized)
    assert any("layers.0.mixer.down" in k for k in propagation)
    assert not any("layers.1.mixer.down" in k for k in student)
    leftover = set(student) - set(result.copied) - propagation
    assert leftover == set(), leftover


def test_copied_tensors_explicit_open_clip(teachers):
    """Hand-written expectations for the non-trivial key-map entries (slices, transposes, concatenations)."""
    teacher = teachers["open_clip_vit"]
    student = build_model(resolve_teacher(teacher), attention_layers="all", keep_position_embeddings=True).model
    block = teacher.visual.transformer.resblocks[1].attn
    mixer = student.vision_model.encoder.layers[1].mixer
    q, k, v = block.in_proj_weight.chunk(3)
    assert torch.equal(mixer.q_proj.weight, q) and torch.equal(mixer.k_proj.weight, k)
    assert torch.equal(mixer.v_proj.weight, v)
    assert torch.equal(mixer.v_proj.bias, block.in_proj_bias.chunk(3)[2])
    assert torch.equal(student.visual_projection.weight, teacher.visual.proj.t())
    assert torch.equal(student.text_projection.weight, teacher.text_projection.t())
    assert torch.equal(student.vision_model.embeddings.prefix_tokens[0, 0], teacher.visual.class_embedding)
    assert torch.equal(student.vision_model.embeddings.position_embedding[0], teacher.visual.positional_embedding)
    assert torch.equal(student.logit_scale, teacher.logit_scale)

    siglip = teachers["open_clip_timm_siglip"]
    student = build_model(resolve_teacher(siglip)).model
    pool = siglip.visual.trunk.attn_pool
    head = student.vision_model.head
    assert torch.equal(head.attention.in_proj_weight, torch.cat((pool.q.weight, pool.kv.weight)))
    assert torch.equal(head.probe, pool.latent)
    assert torch.equal(student.text_model.head.bias, siglip.text.text_projection.bias)
    assert torch.equal(student.logit_bias, siglip.logit_bias)
    assert student.vision_model.embeddings.position_embedding is None  # dropped by default

    prefixed = teachers["open_clip_timm_prefixed"]
    student = build_model(resolve_teacher(prefixed), keep_position_embeddings=True).model
    trunk = prefixed.visual.trunk
    embeddings = student.vision_model.embeddings
    assert torch.equal(embeddings.prefix_tokens, torch.cat((trunk.cls_token, trunk.reg_token), dim=1))
    assert torch.equal(embeddings.position_embedding[:, :3], torch.zeros(1, 3, WIDTH))  # no_embed_class
    assert torch.equal(embeddings.position_embedding[:, 3:], trunk.pos_embed)
    assert torch.equal(student.visual_projection.weight, prefixed.visual.head.proj.weight)


# ------------------------------------------------------------------------------------------------------------------
# (ii) exact parity with every layer kept as attention
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TEACHERS))
def test_all_attention_reproduces_teacher(teachers, name):
    teacher = teachers[name]
    converted = load_teacher(teacher)
    assert not converted.training and not any(p.requires_grad for p in converted.parameters())
    pixels, ids = _pixels(), _ids_for(name, teacher)
    image_ref, text_ref = _teacher_embeddings(teacher, pixels, ids)
    with torch.no_grad():
        image = converted.get_image_features(pixels).pooler_output
        text = converted.get_text_features(ids).pooler_output
    assert image.shape == image_ref.shape and text.shape == text_ref.shape
    torch.testing.assert_close(image, image_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, text_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("vision_class", [SiglipVisionModel, CLIPVisionModel])
def test_vision_only_transformers(vision_class):
    config = (SiglipConfig if vision_class is SiglipVisionModel else CLIPConfig)(vision_config=VISION).vision_config
    torch.manual_seed(0)
    teacher = _randomize(vision_class(config))
    converted = load_teacher(teacher)
    assert isinstance(converted, CGSPNVisionModel)
    with torch.no_grad():
        torch.testing.assert_close(
            converted(_pixels()).pooler_output, teacher(pixel_values=_pixels()).pooler_output, atol=ATOL, rtol=0
        )


def test_vision_only_open_clip_and_taps(teachers):
    """Vision-only teacher: pooled unprojected features, and taps that match open_clip's own intermediates."""
    teacher = teachers["open_clip_vit"]
    converted = load_teacher(teacher, vision_only=True)
    assert isinstance(converted, CGSPNVisionModel)
    pixels = _pixels()
    with torch.no_grad(), teacher_taps(converted, layers=[0, 2]) as taps:
        pooled = converted(pixels).pooler_output
        reference = teacher.visual.forward_intermediates(
            pixels, indices=[0, 2], output_fmt="NLC", intermediates_only=True, output_extra_tokens=True
        )
        embeds = teacher.visual._embeds(pixels)
        block = teacher.visual.transformer.resblocks[0]
        attention = block.attention(block.ln_1(embeds))
    torch.testing.assert_close(taps.records[0]["input"], embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(taps.records[0]["mixer"], attention, atol=ATOL, rtol=0)
    for index, features in zip([0, 2], reference["image_intermediates"]):
        torch.testing.assert_close(taps.records[index]["pb"][:, 1:], features, atol=ATOL, rtol=0)
    expected = teacher.visual.ln_post(teacher.visual.transformer(teacher.visual._embeds(pixels)))[:, 0]
    torch.testing.assert_close(pooled, expected.detach(), atol=ATOL, rtol=0)


def test_image_size_not_a_patch_multiple():
    """timm/open_clip drop the remainder pixels in the patch convolution; C-GSPN sees the same pixels cropped."""
    torch.manual_seed(0)
    teacher = _randomize(
        open_clip.CustomTextCLIP(
            embed_dim=WIDTH,
            vision_cfg={
                "image_size": 36,
                "timm_model_name": "vit_cgspn_test_patch8_siglip_36",
                "timm_proj": "none",
                "timm_pool": "map",
            },
            text_cfg={
                "context_length": CONTEXT,
                "vocab_size": 100,
                "width": WIDTH,
                "heads": HEADS,
                "layers": 1,
                "no_causal_mask": True,
                "proj_bias": True,
                "pool_type": "last",
            },
        )
    )
    spec = resolve_teacher(teacher)
    assert spec.vision_config.image_size == 36 and any("[..., :32, :32]" in note for note in spec.notes)
    converted = load_teacher(teacher)
    pixels = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        expected = teacher.encode_image(pixels)
        got = converted.get_image_features(pixels[..., :32, :32]).pooler_output
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# (iii) preprocessing
# ------------------------------------------------------------------------------------------------------------------


def _photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _floor_crop_transform(transform, image: Image.Image) -> torch.Tensor:
    """open_clip's transform with the center crop offset floored (as transformers does) instead of rounded."""
    import torchvision.transforms.functional as TF

    resize, _crop, *rest = transform.transforms
    resized = resize(image)
    width, height = resized.size
    out = TF.crop(resized, (height - IMAGE) // 2, (width - IMAGE) // 2, IMAGE, IMAGE)
    for step in rest:
        out = step(out)
    return out


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_processor_reproduces_open_clip_transform(tmp_path, resize_mode):
    """Bit-exact with the PIL backend (the default torchvision backend's antialiased resize differs slightly).

    Known divergence: torchvision's center crop rounds a half-pixel offset to even, transformers floors it, so when
    the resized long side exceeds the crop by 4k+3 pixels the crop window moves by one pixel (checked exactly below).
    """
    kwargs = {"image_resize_mode": resize_mode}
    if resize_mode == "squash":
        kwargs.update(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    model, _, transform = open_clip.create_model_and_transforms(TINY_VIT, pretrained=None, **kwargs)
    image_processor_from_open_clip(model).save_pretrained(tmp_path)
    exact = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    default = AutoImageProcessor.from_pretrained(tmp_path)
    ambiguous = 0
    for size in [(50, 40), (32, 32), (200, 33), (61, 97), (41, 97)]:
        image = _photo(*size)
        reference = transform(image)
        if resize_mode == "shortest" and not torch.equal(reference, _floor_crop_transform(transform, image)):
            ambiguous += 1  # (41, 97): resized to 32 x 75, offset 21.5 -> torchvision 22, transformers 21
            reference = _floor_crop_transform(transform, image)
        got = exact(images=image, return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(got, reference, atol=1e-6, rtol=0)
        fast = default(images=image, return_tensors="pt").pixel_values[0]
        assert fast.shape == reference.shape and (fast - reference).abs().mean() < 0.05
    assert ambiguous == (1 if resize_mode == "shortest" else 0)


# ------------------------------------------------------------------------------------------------------------------
# (iv) default student: propagation layers initialized from the SVD of W_O W_V
# ------------------------------------------------------------------------------------------------------------------


def test_default_student_svd_init(teachers):
    teacher = teachers["open_clip_timm_siglip"]
    result = build_model(resolve_teacher(teacher), propagation_channels=4)
    student = result.model
    vision = student.config.vision_config
    assert vision.propagation_layer_indices == list(range(DEPTH)) and not vision.use_position_embeddings
    for index, block in enumerate(teacher.visual.trunk.blocks):
        w_v = block.attn.qkv.weight[2 * WIDTH :].double()
        b_v = block.attn.qkv.bias[2 * WIDTH :].double()
        w_o, b_o = block.attn.proj.weight.double(), block.attn.proj.bias.double()
        mixer = student.vision_model.encoder.layers[index].mixer
        left, singular, right_t = torch.linalg.svd(w_o @ w_v)
        best = left[:, :4] @ torch.diag(singular[:4]) @ right_t[:4]
        down, up = mixer.down.weight.double(), mixer.up.weight.double()
        torch.testing.assert_close(up @ down, best, atol=1e-5, rtol=0)  # the rank-4 truncated SVD
        torch.testing.assert_close(down @ down.T, torch.diag(singular[:4]), atol=1e-5, rtol=0)  # balanced split
        torch.testing.assert_close(up.T @ up, torch.diag(singular[:4]), atol=1e-5, rtol=0)
        torch.testing.assert_close(mixer.up.bias.double(), w_o @ b_v + b_o, atol=1e-6, rtol=0)
        assert torch.equal(mixer.down.bias, torch.zeros(4))
        factors = value_output_factors(block.attn.qkv.weight[2 * WIDTH :], block.attn.proj.weight, 4)
        assert torch.equal(mixer.down.weight, factors["down.weight"]) and torch.equal(
            mixer.up.weight, factors["up.weight"]
        )
        bias = mixer.heads.bias.view(NUM_DIRECTIONS, NUM_FIELDS, 4)
        assert torch.equal(mixer.heads.weight, torch.zeros(20 * 4, 4))
        assert torch.all(bias[:, LAMBDA] == 1) and torch.all(bias[:, [WT_PREV, WT_SELF, WT_NEXT]] == 0)
        torch.testing.assert_close(bias[:, U], torch.full((4, 4), 1 / (IMAGE // PATCH * 2 + 2)))
    with torch.no_grad():
        features = student.get_image_features(_pixels()).pooler_output
        # any grid works without position embeddings
        other = student.get_image_features(torch.randn(1, 3, 3 * PATCH, 5 * PATCH)).pooler_output
    assert features.shape == (2, WIDTH) and torch.isfinite(features).all() and torch.isfinite(other).all()


def test_student_from_a_loaded_teacher_is_the_converted_student(teachers):
    """One builder: a student built from the loaded exact teacher equals the one converted from the source."""
    spec = transformers_teacher_spec(teachers["hf_clip"])
    direct = build_model(spec, attention_layers=[1], propagation_channels=3).model.state_dict()
    exact = build_model(spec, attention_layers="all", keep_position_embeddings=True).model
    via_teacher = student_from_teacher(exact, [1], propagation_channels=3).state_dict()
    assert sorted(via_teacher) == sorted(direct)
    for key, value in direct.items():
        assert torch.equal(via_teacher[key], value), key


def test_propagation_init_passes_constant_inputs():
    """The documented heads init makes the merged scans return a spatially constant input unchanged."""
    from cgspn.conversion.init import propagation_heads_init
    from cgspn.propagation_reference import propagate_ref

    grid, channels = (3, 5), 2
    heads = propagation_heads_init(channels, grid)
    z = torch.randn(1, 1, 1, channels).expand(1, *grid, channels).contiguous()
    g = (z @ heads["heads.weight"].T + heads["heads.bias"]).contiguous()
    torch.testing.assert_close(propagate_ref(z, g), z, atol=1e-6, rtol=0)


def test_propagation_init_stays_on_the_teacher_device():
    """Every init tensor is built on the attention weights' device ("meta" stands in for a GPU here): a teacher on
    CUDA used to get its bias summed with a CPU tensor."""
    from cgspn.conversion.init import init_propagation_from_attention

    attention = {name: torch.randn(8, 8, device="meta") for name in ("v_proj.weight", "out_proj.weight")}
    attention.update({name: torch.randn(8, device="meta") for name in ("v_proj.bias", "out_proj.bias")})
    init = init_propagation_from_attention(attention, channels=4, grid=(2, 2))
    assert {name: tensor.device.type for name, tensor in init.items()} == dict.fromkeys(init, "meta")


# ------------------------------------------------------------------------------------------------------------------
# (v) the CLI
# ------------------------------------------------------------------------------------------------------------------


def test_cli_open_clip_end_to_end(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["--teacher", f"open_clip:{TINY_VIT}", "--out", str(out), "--attention-layers", "-1"]) == 0
    for file in ("model.safetensors", "config.json", "README.md", "tokenizer.json", "processor_config.json"):
        assert (out / file).is_file(), file
    log = capsys.readouterr().out
    assert "FAIL" not in log and "preprocessing parity" in log and "text embedding parity" in log
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, CGSPNModel)
    assert model.config.vision_config.attention_layer_indices == [DEPTH - 1]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model is None  # not a hub id
    assert "not yet distilled" in card.text and f"open_clip:{TINY_VIT}" in card.text
    assert (
        model.config.text_config.model_type == "clip_text_model" and model.config.text_config.hidden_act == "quick_gelu"
    )
    # a saved C-GSPN folder is itself a valid teacher (curriculum stages)
    frozen = load_teacher(str(out))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_cli_siglip_exact_folder(tmp_path, capsys):
    out = tmp_path / "exact"
    argv = ["--teacher", f"open_clip:{TINY_SIGLIP}", "--out", str(out), "--attention-layers", "all"]
    assert main([*argv, "--keep-position-embeddings"]) == 0
    assert "image embedding parity (saved model)" in capsys.readouterr().out
    processor = CLIPProcessor.from_pretrained(out)
    assert processor.tokenizer.pad_token_id == 0  # pads like open_clip, for the bidirectional text tower


def test_cli_hf_folder(tmp_path, capsys):
    teacher_dir = tmp_path / "teacher"
    teacher = _hf_clip(vocab=CLIP_VOCAB)
    teacher.save_pretrained(teacher_dir)
    tokenizer = oc_conversion.clip_tokenizer_for(CONTEXT, bidirectional=False)
    CLIPProcessor(
        image_processor=clip_image_processor(IMAGE, (0.5,) * 3, (0.25,) * 3), tokenizer=tokenizer
    ).save_pretrained(teacher_dir)
    assert (
        main(["--teacher", f"hf:{teacher_dir}", "--out", str(tmp_path / "student"), "--propagation-channels", "3"]) == 0
    )
    model = AutoModel.from_pretrained(tmp_path / "student")
    assert model.config.vision_config.propagation_channels == 3
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "student").image_std) == [0.25] * 3


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_cli_transformers_folder_with_masking_tokenizer(tmp_path, capsys, family):
    """A transformers teacher saved with a tokenizer that returns attention masks: the text parity check gives the
    saved tokenizer's ids and mask to both towers (it gave the mask to the student only: SigLIP failed with 1.42)."""
    save_tiny_transformers_teacher(tmp_path / "teacher", family)
    _randomize(AutoModel.from_pretrained(tmp_path / "teacher")).save_pretrained(tmp_path / "teacher")
    assert main(["--teacher", f"hf:{tmp_path / 'teacher'}", "--out", str(tmp_path / "student")]) == 0
    log = capsys.readouterr().out
    assert "[ok  ] text embedding parity (saved model)" in log and "FAIL" not in log


def test_cli_refuses_non_empty_output(tmp_path, capsys):
    """``--out`` never overwrites a trained model (and its checkpoints/) silently; ``--overwrite`` replaces it."""
    out = tmp_path / "student"
    argv = ["--teacher", f"open_clip:{TINY_VIT}", "--out", str(out)]
    assert main(argv) == 0
    (out / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    weights = (out / "model.safetensors").read_bytes()
    assert main([*argv, "--propagation-channels", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights and (out / "checkpoints").is_dir()
    assert main([*argv, "--propagation-channels", "2", "--overwrite"]) == 0
    assert not (out / "checkpoints").exists()
    assert AutoModel.from_pretrained(out).config.vision_config.propagation_channels == 2
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    assert main(["--teacher", f"open_clip:{TINY_VIT}", "--out", str(data), "--overwrite"]) == 2
    assert "no config.json" in capsys.readouterr().err and (data / "images").is_dir()


def test_cli_fails_on_preprocessing_mismatch(tmp_path, monkeypatch, capsys):
    def wrong_processor(model):
        return clip_image_processor(IMAGE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    monkeypatch.setattr(oc_conversion, "image_processor_from_open_clip", wrong_processor)
    assert main(["--teacher", f"open_clip:{TINY_VIT}", "--out", str(tmp_path / "bad")]) == 1
    assert "[FAIL] preprocessing parity" in capsys.readouterr().out


def test_cli_fails_on_key_map_bug(tmp_path, monkeypatch, capsys):
    """A wrong key map (k and v swapped) is caught by the embedding parity of the exact reconstruction."""
    original = oc_conversion.fused_qkv

    def swapped(target_prefix, source, width, suffix):
        q, k, v = original(target_prefix, source, width, suffix)
        return [q, type(k)(k.target, v.source, v.rows), type(v)(v.target, k.source, k.rows)]

    monkeypatch.setattr(oc_conversion, "fused_qkv", swapped)
    assert main(["--teacher", f"open_clip:{TINY_VIT}", "--out", str(tmp_path / "bad")]) == 1
    assert "[FAIL] image embedding parity" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------------
# unsupported teachers and spec parsing
# ------------------------------------------------------------------------------------------------------------------


def test_unsupported_teachers_raise():
    layer_scale = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={
            "layers": 1,
            "width": WIDTH,
            "head_width": 16,
            "patch_size": PATCH,
            "image_size": IMAGE,
            "ls_init_value": 0.1,
        },
        text_cfg={"context_length": CONTEXT, "vocab_size": 100, "width": WIDTH, "heads": HEADS, "layers": 1},
    )
    with pytest.raises(NotImplementedError, match="layer scale"):
        open_clip_teacher_spec(layer_scale)
    resnet = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": [1, 1, 1, 1], "width": 16, "image_size": 32},
        text_cfg={"context_length": CONTEXT, "vocab_size": 100, "width": WIDTH, "heads": HEADS, "layers": 1},
    )
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        open_clip_teacher_spec(resnet)
    vit = ViTModel(ViTConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=48))
    with pytest.raises(NotImplementedError, match="ViTModel"):
        transformers_teacher_spec(vit)
    with pytest.raises(ValueError, match="Unknown teacher"):
        resolve_teacher("nowhere:model")


def test_parse_open_clip_spec():
    assert parse_open_clip_spec("open_clip:ViT-SO400M-14-SigLIP-384:webli") == ("ViT-SO400M-14-SigLIP-384", "webli")
    assert parse_open_clip_spec("open_clip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_open_clip_spec("open_clip:hf-hub:timm/ViT-B-16-SigLIP") == ("hf-hub:timm/ViT-B-16-SigLIP", None)


def test_attention_layer_indices_and_channels_are_validated():
    assert parse_attention_layers("-1,0", 12) == [0, 11]
    with pytest.raises(ValueError, match="out of range"):
        parse_attention_layers("-13", 12)
    with pytest.raises(ValueError, match="out of range"):
        parse_attention_layers([12], 12)
    spec = transformers_teacher_spec(_hf_siglip())
    with pytest.raises(Exception, match="propagation_channels must be >= 1"):
        build_model(spec, propagation_channels=0)
