"""``cgspn-convert``: turn a ViT teacher into a ready-to-distill C-GSPN folder, then verify the folder.

```
cgspn-convert --teacher open_clip:ViT-SO400M-14-SigLIP-384:webli --out cgspn-so400m
cgspn-convert --teacher hf:google/siglip-base-patch16-224 --out cgspn-b16 --attention-layers 5,11
```

The folder holds ``model.safetensors``, ``config.json`` (+ remote code), the processor (image processor and, when
one can be built offline, the tokenizer) and a model-card stub. Verification, in order: strict load of the saved
folder (every tensor equal to the converted model's), every copied tensor equal to its teacher source,
preprocessing parity with the teacher's own transform, tokenizer parity (when the teacher's tokenizer is available),
text-embedding parity (the text tower is copied whole) and image-embedding parity: of the saved model itself when it
keeps every block as attention and the position embeddings, else of the exact all-attention reconstruction (which
validates the key map the student shares). Any mismatch makes `main` return 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model_card import write_model_card
from ..modeling_cgspn import CGSPNModel, CGSPNVisionModel
from .common import ALL_LAYERS, BuildResult, TeacherSpec, build_model, parse_attention_layers
from .teacher import resolve_teacher

logger = logging.getLogger(__name__)

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


@dataclass
class ConversionReport:
    """What `convert` wrote and verified."""

    out: Path
    spec: TeacherSpec
    result: BuildResult
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


# --------------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------------


def save_processor(spec: TeacherSpec, out: Path) -> None:
    """Save the teacher's processor, or a `CLIPProcessor` of its image processor and tokenizer, or the image
    processor alone (no tokenizer could be built)."""
    if spec.processor is not None:
        spec.processor.save_pretrained(out)
    elif spec.tokenizer is not None:
        from transformers import CLIPProcessor

        CLIPProcessor(image_processor=spec.image_processor, tokenizer=spec.tokenizer).save_pretrained(out)
    elif spec.image_processor is not None:
        spec.image_processor.save_pretrained(out)


def write_card(spec: TeacherSpec, result: BuildResult, out: Path, teacher: str) -> Path:
    """The hub model card (`cgspn.model_card`) of a converted, not yet distilled, folder."""
    vision = getattr(result.model.config, "vision_config", None) or result.model.config
    rows = {
        "status": "converted with `cgspn-convert`, not yet distilled: distill the propagation layers (SPEC §4) "
        "before use",
        "copied from the teacher": "patch embedding, norms, MLPs, final norm, pooling head, projections, "
        "logit scale/bias, text tower",
        "propagation init": "down/up from the rank-Cc SVD of the teacher's W_O W_V",
        "position embeddings": "kept" if vision.use_position_embeddings else "dropped",
        "preprocessing": "`AutoProcessor.from_pretrained(folder, backend='pil')` reproduces the teacher's bit for bit",
        **{f"note {index}": note for index, note in enumerate(spec.notes, 1)},
    }
    return write_model_card(result.model, out, teacher=teacher, extra_rows=rows)


# --------------------------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------------------------


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
        ids, mask = _text_inputs(out, spec, model.config.text_config)
        student = model.get_text_features(ids, attention_mask=mask).pooler_output
        checks.append(Check("text embedding parity (saved model)", _relative(student, spec.text_features(ids)), atol))
    return checks


# --------------------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------------------


def convert(
    teacher: str | nn.Module,
    out: str | Path,
    *,
    propagation_channels: int | None = None,
    attention_layers: str | Sequence[int] | None = None,
    keep_position_embeddings: bool = False,
    vision_only: bool = False,
    atol: float = 1e-5,
) -> ConversionReport:
    """Convert ``teacher`` into a C-GSPN folder at ``out`` and verify it (see the module docstring).

    Returns the report; ``report.passed`` is False on any mismatch (the folder is left for inspection).
    """
    out = Path(out)
    spec = resolve_teacher(teacher, vision_only=vision_only)
    result = build_model(spec, attention_layers, keep_position_embeddings, propagation_channels)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    save_processor(spec, out)
    write_card(spec, result, out, teacher.removeprefix("hf:") if isinstance(teacher, str) else spec.description)

    report = ConversionReport(out=out, spec=spec, result=result)
    saved_checks, loaded = check_saved_model(out, result)
    loaded.eval()
    report.checks += saved_checks
    report.checks.append(check_copies(loaded, spec, result))
    report.checks += check_preprocessing(out, spec)
    report.checks += check_tokenizer(out, spec)
    vision = getattr(loaded.config, "vision_config", None) or loaded.config
    exact = (
        not vision.propagation_layer_indices
        and vision.use_position_embeddings == spec.vision_config.use_position_embeddings
    )
    report.checks += check_embeddings(out, loaded, spec, exact, atol)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgspn-convert", description="Convert an OpenCLIP / SigLIP / CLIP ViT teacher into a C-GSPN model folder."
    )
    parser.add_argument(
        "--teacher",
        required=True,
        help="open_clip:<name>[:<pretrained>] or hf:<repo-or-folder> (a plain folder path works too)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--propagation-channels", type=int, default=None, help="Cc (default: hidden_size // 18)")
    parser.add_argument(
        "--attention-layers",
        default=None,
        help="comma-separated blocks that keep attention (negative counts from the end), or 'all'",
    )
    parser.add_argument(
        "--keep-position-embeddings", action="store_true", help="keep the teacher's absolute position embeddings"
    )
    parser.add_argument("--vision-only", action="store_true", help="convert only the image tower")
    parser.add_argument("--atol", type=float, default=1e-5, help="embedding parity tolerance (relative to max(1, |x|))")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0: converted and verified, 1: a check failed)."""
    args = build_parser().parse_args(argv)
    if args.attention_layers not in (None, ALL_LAYERS):
        parse_attention_layers(args.attention_layers, 10**9)  # syntax check before loading the teacher
    report = convert(
        args.teacher,
        args.out,
        propagation_channels=args.propagation_channels,
        attention_layers=args.attention_layers,
        keep_position_embeddings=args.keep_position_embeddings,
        vision_only=args.vision_only,
        atol=args.atol,
    )
    print(f"Converted {report.spec.description} -> {report.out}")
    for note in report.spec.notes:
        print(f"note: {note}")
    for check in report.checks:
        print(check)
    if not report.passed:
        print("Verification FAILED: the folder was written but does not match the teacher", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
