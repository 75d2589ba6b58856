"""Verification of a converted folder against its teacher (`cgspn.conversion.convert` runs these).

In order: strict load of the saved folder (every tensor equal to the converted model's), every copied tensor equal to
its teacher source, preprocessing parity with the teacher's own transform, tokenizer parity (when the teacher's
tokenizer is available), text-embedding parity (the text tower is copied whole; both towers get the saved tokenizer's
output) and image-embedding parity: of the saved model itself when it keeps every block as attention and the position
embeddings, else of the exact all-attention reconstruction (which validates the key map the student shares).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modeling_cgspn import CGSPNModel, CGSPNVisionModel
from .common import ALL_LAYERS, BuildResult, TeacherSpec, build_model

PARITY_TEXTS = ["a photo of a cat", "Two dogs playing in the snow!", "x"]
SEED = 0


@dataclass
class Check:
    """One verification: ``value`` must not exceed ``tolerance``."""

    name: str
    value: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.tolerance)

    def __str__(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        extra = f" ({self.detail})" if self.detail else ""
        return f"[{status}] {self.name}: {self.value:.3g} <= {self.tolerance:.3g}{extra}"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|)."""
    return _max_diff(a, b) / max(1.0, float(b.abs().max()) if b.numel() else 1.0)


def parity_image(size: int = 97) -> object:
    """A deterministic non-square RGB test image (a gradient plus seeded noise)."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    height, width = size, int(size * 1.5) + 3
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.integers(0, 96, (height, width, 3))
    return Image.fromarray(np.clip(gradient * 0.6 + noise, 0, 255).astype(np.uint8))


def check_saved_model(out: Path, result: BuildResult) -> tuple[list[Check], nn.Module]:
    """Strict load of the saved folder; every tensor equals the converted model's. Returns the checks and the
    loaded model."""
    model_class = CGSPNModel if isinstance(result.model, CGSPNModel) else CGSPNVisionModel
    loaded, info = model_class.from_pretrained(out, output_loading_info=True)
    problems = sum(len(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    expected = result.model.state_dict()
    got = loaded.state_dict()
    diff = max((_max_diff(got[k], v) if k in got else float("inf")) for k, v in expected.items())
    return [
        Check("strict load (missing + unexpected + mismatched keys)", problems, 0, f"{info}" if problems else ""),
        Check("saved tensors == converted tensors", diff, 0.0),
    ], loaded


def check_copies(model: nn.Module, spec: TeacherSpec, result: BuildResult) -> Check:
    """Every copied tensor equals its teacher source (after the key map's slice/transpose/reshape)."""
    state = model.state_dict()
    worst, worst_key = 0.0, ""
    for target, entry in result.copied.items():
        diff = _max_diff(state[target], entry.apply(spec.tensors, state[target].shape))
        if diff > worst:
            worst, worst_key = diff, target
    return Check(f"{len(result.copied)} copied tensors == teacher sources", worst, 0.0, worst_key)


def check_preprocessing(out: Path, spec: TeacherSpec) -> list[Check]:
    """The saved image processor vs the teacher's own preprocessing on a non-square image.

    transformers loads image processors with the torchvision backend by default, whose antialiased resize differs
    from PIL's by a few 8-bit levels; loaded with ``backend="pil"`` the processor reproduces open_clip's transform
    (torchvision on PIL images) bit for bit. One backend must match exactly; both differences are reported.
    """
    if spec.preprocess is None:
        return []
    from transformers import AutoImageProcessor

    image = parity_image()
    reference = torch.as_tensor(spec.preprocess(image))
    diffs = {}
    for backend in ("pil", None):
        kwargs = {"backend": backend} if backend else {}
        processor = AutoImageProcessor.from_pretrained(out, **kwargs)
        pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
        diffs[backend or "default"] = _max_diff(pixels, reference)
    detail = ", ".join(f"{k} backend {v:.3g}" for k, v in diffs.items())
    return [Check("preprocessing parity (best backend)", min(diffs.values()), 1e-5, detail)]


def check_tokenizer(out: Path, spec: TeacherSpec) -> list[Check]:
    """Saved tokenizer ids vs the teacher's tokenizer on the positions both treat as text."""
    if spec.tokenize is None or spec.tokenizer is None:
        return []
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = torch.as_tensor(spec.tokenize(PARITY_TEXTS))
    encoded = tokenizer(
        PARITY_TEXTS, padding="max_length", max_length=reference.shape[1], truncation=True, return_tensors="pt"
    )
    ids = encoded["input_ids"]
    mask = encoded.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if ids.shape != reference.shape:
        return [Check("tokenizer parity (mismatched positions)", float("inf"), 0, f"{ids.shape} vs {reference.shape}")]
    mismatches = int(((ids != reference) & mask).sum())
    return [Check("tokenizer parity (mismatched positions)", mismatches, 0)]


def _text_inputs(out: Path, spec: TeacherSpec, text_config) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out)
        encoded = tokenizer(
            PARITY_TEXTS,
            padding="max_length",
            max_length=text_config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded.get("attention_mask")
    generator = torch.Generator().manual_seed(SEED)
    vocab = text_config.vocab_size
    ids = torch.randint(
        0, max(1, vocab - 3), (len(PARITY_TEXTS), text_config.max_position_embeddings), generator=generator
    )
    eos = getattr(text_config, "eos_token_id", None)
    ids[:, min(5, ids.shape[1] - 1)] = vocab - 1 if eos in (None, 2) or eos >= vocab else eos
    return ids, None


def _image_embedding(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    if isinstance(model, CGSPNModel):
        return model.get_image_features(pixel_values).pooler_output
    return model(pixel_values).pooler_output


@torch.no_grad()
def check_embeddings(out: Path, model: nn.Module, spec: TeacherSpec, exact: bool, atol: float) -> list[Check]:
    """Text (always, dual encoders) and image embeddings against the teacher."""
    checks = []
    vision = spec.vision_config
    generator = torch.Generator().manual_seed(SEED)
    pixels = torch.randn(2, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    teacher_image = spec.image_features(pixels)
    # Teachers whose image size is not a multiple of the patch (SO400M/14 at 384) drop the right/bottom remainder in
    # their strided patch convolution; C-GSPN takes exact multiples, so it sees the same pixels cropped.
    side = vision.image_size // vision.patch_size * vision.patch_size
    pixels = pixels[..., :side, :side]
    if exact:
        diff = _relative(_image_embedding(model, pixels), teacher_image)
        checks.append(Check("image embedding parity (saved model)", diff, atol))
    else:
        reference = build_model(spec, attention_layers=ALL_LAYERS, keep_position_embeddings=True).model
        diff = _relative(_image_embedding(reference, pixels), teacher_image)
        del reference
        checks.append(Check("image embedding parity (exact all-attention reconstruction)", diff, atol))
    if spec.is_dual and spec.text_features is not None:
        # the saved tokenizer's output (ids and, when it returns one, the attention mask) goes to both towers alike
        ids, mask = _text_inputs(out, spec, model.config.text_config)
        student = model.get_text_features(ids, attention_mask=mask).pooler_output
        teacher = spec.text_features(ids, mask)
        checks.append(Check("text embedding parity (saved model)", _relative(student, teacher), atol))
    return checks


def verify_folder(out: Path, spec: TeacherSpec, result: BuildResult, atol: float) -> list[Check]:
    """Every check of the module docstring on the folder ``out`` that `result` was saved to."""
    checks, loaded = check_saved_model(out, result)
    loaded.eval()
    checks.append(check_copies(loaded, spec, result))
    checks += check_preprocessing(out, spec)
    checks += check_tokenizer(out, spec)
    vision = getattr(loaded.config, "vision_config", None) or loaded.config
    exact = (
        not vision.propagation_layer_indices
        and vision.use_position_embeddings == spec.vision_config.use_position_embeddings
    )
    checks += check_embeddings(out, loaded, spec, exact, atol)
    return checks


__all__ = ["Check", "parity_image", "verify_folder"]
