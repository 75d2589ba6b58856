"""Teachers for distillation: any supported teacher, re-expressed as an exact, frozen C-GSPN model, and the students
built from them.

`load_teacher` converts with every block kept as attention and the position embeddings kept, so the returned
`CGSPNModel` / `CGSPNVisionModel` reproduces the original teacher's embeddings (to float rounding), and training
code reads the same per-block features from teacher and student with `cgspn.taps.FeatureTaps`:

```python
>>> teacher = load_teacher("open_clip:ViT-SO400M-14-SigLIP-384:webli")
>>> with teacher_taps(teacher, layers=[8, 17, 26]) as taps:
...     teacher.get_image_features(pixel_values)
>>> taps.records[8]["input"], taps.records[8]["mixer"], taps.records[8]["pb"]  # h[i-1], Attn_i(LN1(h)), h[i]
```

A C-GSPN model is itself a teacher source (`cgspn_teacher_spec`, an identity key map), so `student_from_teacher`
builds a student from a loaded teacher through the same `build_model` as every other source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..data import image_processor_of, load_processor
from ..modeling_cgspn import CGSPNModel, CGSPNVisionModel
from ..taps import FeatureTaps
from .common import ALL_LAYERS, Copy, TeacherSpec, build_model, freeze

OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf:"


def is_cgspn_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` (optionally ``hf:``-prefixed) is a saved C-GSPN model folder (its config's ``model_type``
    starts with ``cgspn``)."""
    config = Path(str(path).removeprefix(HF_PREFIX)) / "config.json"
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


def cgspn_teacher_spec(model: CGSPNModel | CGSPNVisionModel, processor=None, *, name: str | None = None) -> TeacherSpec:
    """Describe a C-GSPN model (e.g. an exact teacher from `load_teacher`) as a `TeacherSpec`: its own config and the
    identity key map over its state dict. Its attention blocks seed the SVD init of the student's propagation layers.
    """
    model.eval()
    tensors = {key: value.detach() for key, value in model.state_dict().items()}
    dual = isinstance(model, CGSPNModel)

    def image_features(pixel_values: torch.Tensor) -> torch.Tensor:
        return (model.get_image_features(pixel_values) if dual else model(pixel_values)).pooler_output

    def text_features(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return model.get_text_features(input_ids, attention_mask=attention_mask).pooler_output

    return TeacherSpec(
        config=model.config,
        copies=[Copy(key, key) for key in tensors],
        tensors=tensors,
        image_features=image_features,
        text_features=text_features if dual else None,
        image_processor=image_processor_of(processor),
        tokenizer=getattr(processor, "tokenizer", None),
        processor=processor if getattr(processor, "tokenizer", None) is not None else None,
        description=name or type(model).__name__,
    )


def resolve_teacher(
    teacher: str | os.PathLike | nn.Module, *, vision_only: bool = False, processor=None
) -> TeacherSpec:
    """A `TeacherSpec` for ``teacher``: ``"open_clip:<name>[:<pretrained>]"``, ``"hf:<repo-or-folder>"``, a plain
    transformers folder, a saved C-GSPN folder, or an already built open_clip / transformers / C-GSPN model.

    Raises:
        NotImplementedError: unsupported model classes or features.
        ValueError: a string that names no known source.
    """
    if isinstance(teacher, (CGSPNModel, CGSPNVisionModel)):
        return cgspn_teacher_spec(getattr(teacher, "vision_model", teacher) if vision_only else teacher, processor)
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
    if is_cgspn_folder(text):
        folder = text.removeprefix(HF_PREFIX)
        return resolve_teacher(load_cgspn_model(folder), vision_only=vision_only, processor=load_processor(folder))
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


def load_cgspn_model(path: str | os.PathLike, dtype: torch.dtype | None = None) -> CGSPNModel | CGSPNVisionModel:
    """A saved C-GSPN folder (optionally ``hf:``-prefixed) as a `CGSPNModel` (dual encoder) or `CGSPNVisionModel`
    (vision tower).

    Raises:
        FileNotFoundError: ``path`` is not a saved C-GSPN folder.
    """
    if not is_cgspn_folder(path):
        raise FileNotFoundError(f"{path} is not a saved C-GSPN model folder (no config.json with a cgspn model_type)")
    path = str(path).removeprefix(HF_PREFIX)
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    model_class = CGSPNModel if model_type == CGSPNModel.config_class.model_type else CGSPNVisionModel
    return model_class.from_pretrained(str(path), **({"dtype": dtype} if dtype is not None else {}))


def load_teacher_and_processor(
    teacher: str | os.PathLike | nn.Module,
    *,
    vision_only: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[CGSPNModel | CGSPNVisionModel, object | None]:
    """The frozen teacher as an exact C-GSPN model (all blocks attention, position embeddings kept), in eval mode,
    and the processor a model folder built from it ships (`TeacherSpec.processor_to_ship`; ``None`` when the teacher
    ships none: a transformers folder without one, a model instance).

    Args:
        teacher: a source accepted by `resolve_teacher`, a saved C-GSPN folder (loaded as is: e.g. the frozen
            student of a previous curriculum stage), or a C-GSPN model instance (frozen as is; no processor).
        vision_only: return only the vision tower (a `CGSPNVisionModel`; no projection).
        dtype / device: where the teacher lives.
    """
    processor = None
    if isinstance(teacher, (CGSPNModel, CGSPNVisionModel)):
        model = teacher
    elif not isinstance(teacher, nn.Module) and is_cgspn_folder(teacher):
        model, processor = load_cgspn_model(teacher, dtype), load_processor(str(teacher).removeprefix(HF_PREFIX))
    else:
        spec = resolve_teacher(teacher, vision_only=vision_only)
        model = build_model(spec, attention_layers=ALL_LAYERS, keep_position_embeddings=True).model
        # training takes no guessed normalization: the family's standard processor stays a `cgspn convert` note
        processor = None if spec.image_processor_is_default else spec.processor_to_ship()
    if vision_only and isinstance(model, CGSPNModel):
        model = model.vision_model
    return freeze(model.to(device=device, dtype=dtype)), processor


def load_teacher(
    teacher: str | os.PathLike | nn.Module,
    *,
    vision_only: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CGSPNModel | CGSPNVisionModel:
    """The frozen exact teacher of `load_teacher_and_processor`, without the processor."""
    return load_teacher_and_processor(teacher, vision_only=vision_only, dtype=dtype, device=device)[0]


def student_from_teacher(
    teacher: CGSPNModel | CGSPNVisionModel,
    attention_layers: str | Sequence[int] | None = None,
    propagation_channels: int | None = None,
) -> CGSPNModel | CGSPNVisionModel:
    """A student built by `build_model` from a loaded C-GSPN teacher (e.g. from `load_teacher`).

    Copies every weight that has a place in the student (patch embedding, norms, MLPs, kept attention layers,
    pooling head, projections, text tower), drops the position embeddings and gives each propagation layer the SVD
    init of the teacher block's value-output map (SPEC §4).

    Args:
        teacher: the teacher; it must keep attention in every block the student propagates in.
        attention_layers: blocks that keep attention (`parse_attention_layers` syntax); default none.
        propagation_channels: ``Cc``; default the teacher config's ``propagation_channels``.
    """
    spec = cgspn_teacher_spec(teacher)
    channels = propagation_channels or spec.vision_config.propagation_channels
    return build_model(spec, attention_layers, keep_position_embeddings=False, propagation_channels=channels).model


def teacher_taps(teacher: CGSPNModel | CGSPNVisionModel, layers: Iterable[int] | None = None) -> FeatureTaps:
    """`FeatureTaps` on the teacher's vision tower, detached: per block ``"input"`` (h[i-1]), ``"mixer"`` (the
    attention sublayer output), ``"pp"`` and ``"pb"`` (the block output)."""
    vision = getattr(teacher, "vision_model", teacher)
    return FeatureTaps(vision, layers=layers, detach=True)


__all__ = [
    "cgspn_teacher_spec",
    "is_cgspn_folder",
    "load_cgspn_model",
    "load_teacher",
    "load_teacher_and_processor",
    "parse_open_clip_spec",
    "resolve_teacher",
    "student_from_teacher",
    "teacher_taps",
]
