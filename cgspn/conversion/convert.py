"""`convert`: turn a ViT teacher into a ready-to-distill C-GSPN folder, then verify the folder.

```python
>>> from cgspn.conversion import convert
>>> report = convert("open_clip:ViT-SO400M-14-SigLIP-384:webli", "cgspn-so400m")
>>> report.passed, [str(check) for check in report.checks]
```

The folder holds ``model.safetensors``, ``config.json`` (+ remote code), the processor (image processor and, when
one can be built offline, the tokenizer) and a model-card stub; `cgspn.conversion.verify` then checks it against the
teacher. A non-empty folder is never written into: ``overwrite=True`` replaces a model folder as a whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..model_card import write_model_card
from .common import BuildResult, TeacherSpec, build_model
from .teacher import resolve_teacher
from .verify import Check, verify_folder


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


def check_output_dir(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a model folder to replace. A non-empty folder (a trained model and its checkpoints) is
    refused unless ``overwrite``, and even then only a model folder (one with ``config.json``) is replaced.

    Raises:
        FileExistsError: ``out`` is a file, or a non-empty folder and ``overwrite`` is False.
        ValueError: ``overwrite`` asked for a non-empty folder that holds no ``config.json``.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Output {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise FileExistsError(
            f"Output folder {out} is not empty (it may hold a trained model and its checkpoints/): choose a new "
            "folder, or pass --overwrite to replace it"
        )
    if not (out / "config.json").is_file():
        raise ValueError(f"--overwrite replaces model folders only, and {out} has no config.json: not deleting it")
    return True


def convert(
    teacher: str | nn.Module,
    out: str | Path,
    *,
    propagation_channels: int | None = None,
    attention_layers: str | Sequence[int] | None = None,
    keep_position_embeddings: bool = False,
    vision_only: bool = False,
    atol: float = 1e-5,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert ``teacher`` into a C-GSPN folder at ``out`` and verify it (see the module docstring).

    Returns the report; ``report.passed`` is False on any mismatch (the folder is left for inspection).

    Raises:
        FileExistsError / ValueError: ``out`` is not empty and may not be replaced (`check_output_dir`).
    """
    out = Path(out)
    replace = check_output_dir(out, overwrite)
    spec = resolve_teacher(teacher, vision_only=vision_only)
    result = build_model(spec, attention_layers, keep_position_embeddings, propagation_channels)
    if replace:  # the whole folder, so no checkpoints/ of an earlier run stay beside the new weights
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    processor = spec.processor_to_ship()
    if processor is not None:
        processor.save_pretrained(out)
    write_card(spec, result, out, teacher.removeprefix("hf:") if isinstance(teacher, str) else spec.description)
    return ConversionReport(out=out, spec=spec, result=result, checks=verify_folder(out, spec, result, atol))


__all__ = ["ConversionReport", "check_output_dir", "convert"]
