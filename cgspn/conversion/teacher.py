"""Teachers for distillation: any supported teacher, re-expressed as an exact, frozen C-GSPN model.

`load_teacher` converts with every block kept as attention and the position embeddings kept, so the returned
`CGSPNModel` / `CGSPNVisionModel` reproduces the original teacher's embeddings (to float rounding), and training
code reads the same per-block features from teacher and student with `cgspn.taps.FeatureTaps`:

```python
>>> teacher = load_teacher("open_clip:ViT-SO400M-14-SigLIP-384:webli")
>>> with teacher_taps(teacher, layers=[8, 17, 26]) as taps:
...     teacher.get_image_features(pixel_values)
>>> taps.records[8]["input"], taps.records[8]["mixer"], taps.records[8]["pb"]  # h[i-1], Attn_i(LN1(h)), h[i]
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..modeling_cgspn import CGSPNModel, CGSPNVisionModel
from ..taps import FeatureTaps
from .common import ALL_LAYERS, TeacherSpec, build_model, freeze

OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf:"


def is_cgspn_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a saved C-GSPN model folder (its config's ``model_type`` starts with ``cgspn``)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    return str(json.loads(config.read_text()).get("model_type", "")).startswith("cgspn")


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``"open_clip:<name>[:<pretrained>]"`` -> (name, pretrained). Schema names (``hf-hub:``, ``local-dir:``) carry
    their own weights and take no ``pretrained``."""
    rest = spec.removeprefix(OPEN_CLIP_PREFIX)
    if rest.startswith(("hf-hub:", "local-dir:")):
        return rest, None
    name, _, pretrained = rest.partition(":")
    if not name:
        raise ValueError(f"Empty open_clip model name in {spec!r}")
    return name, pretrained or None


def resolve_teacher(
    teacher: str | os.PathLike | nn.Module, *, vision_only: bool = False, processor=None
) -> TeacherSpec:
    """A `TeacherSpec` for ``teacher``: ``"open_clip:<name>[:<pretrained>]"``, ``"hf:<repo-or-folder>"``, a plain
    transformers folder, or an already built open_clip / transformers model.

    Raises:
        NotImplementedError: unsupported model classes or features.
        ValueError: a string that names no known source.
    """
    if isinstance(teacher, nn.Module):
        module = type(teacher).__module__
        if module.startswith("open_clip"):
            from .open_clip import open_clip_teacher_spec

            return open_clip_teacher_spec(teacher, vision_only=vision_only)
        if module.startswith("transformers"):
            from .transformers import transformers_teacher_spec

            return transformers_teacher_spec(teacher, processor)
        raise NotImplementedError(f"teacher of class {type(teacher).__name__} from {module}")
    text = str(teacher)
    if text.startswith(OPEN_CLIP_PREFIX):
        from .open_clip import open_clip_spec_from_name

        name, pretrained = parse_open_clip_spec(text)
        return open_clip_spec_from_name(name, pretrained, vision_only=vision_only)
    if text.startswith(HF_PREFIX) or Path(text).is_dir():
        from .transformers import transformers_spec_from_pretrained

        return transformers_spec_from_pretrained(text.removeprefix(HF_PREFIX))
    raise ValueError(
        f"Unknown teacher {text!r}: use open_clip:<name>[:<pretrained>], hf:<repo-or-folder> or a model folder"
    )


def load_teacher(
    teacher: str | os.PathLike | nn.Module,
    *,
    vision_only: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CGSPNModel | CGSPNVisionModel:
    """The frozen teacher as an exact C-GSPN model (all blocks attention, position embeddings kept), in eval mode.

    Args:
        teacher: a source accepted by `resolve_teacher`, a saved C-GSPN folder (loaded as is: e.g. the frozen
            student of a previous curriculum stage), or a C-GSPN model instance (frozen as is).
        vision_only: return only the vision tower (a `CGSPNVisionModel`; no projection).
        dtype / device: where the teacher lives.
    """
    if isinstance(teacher, (CGSPNModel, CGSPNVisionModel)):
        model = teacher
    elif not isinstance(teacher, nn.Module) and is_cgspn_folder(teacher):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(teacher, dtype=dtype)
    else:
        spec = resolve_teacher(teacher, vision_only=vision_only)
        model = build_model(spec, attention_layers=ALL_LAYERS, keep_position_embeddings=True).model
    if vision_only and isinstance(model, CGSPNModel):
        model = model.vision_model
    return freeze(model.to(device=device, dtype=dtype))


def teacher_taps(teacher: CGSPNModel | CGSPNVisionModel, layers: Iterable[int] | None = None) -> FeatureTaps:
    """`FeatureTaps` on the teacher's vision tower, detached: per block ``"input"`` (h[i-1]), ``"mixer"`` (the
    attention sublayer output), ``"pp"`` and ``"pb"`` (the block output)."""
    vision = getattr(teacher, "vision_model", teacher)
    return FeatureTaps(vision, layers=layers, detach=True)


__all__ = ["is_cgspn_folder", "load_teacher", "parse_open_clip_spec", "resolve_teacher", "teacher_taps"]
