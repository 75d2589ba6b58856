"""Conversion of ViT teachers (open_clip, timm-backed SigLIP, transformers SigLIP/CLIP) into C-GSPN models.

* `resolve_teacher` / `open_clip_teacher_spec` / `transformers_teacher_spec`: describe a teacher as a `TeacherSpec`
  (exact C-GSPN config + explicit key map).
* `build_model`: a student (propagation layers initialized from the teacher, SPEC §4) or, with every layer kept as
  attention and the position embeddings kept, an exact reconstruction of the teacher.
* `load_teacher` / `load_teacher_and_processor`: the frozen exact teacher for distillation (and the processor its
  students ship); `teacher_taps` records its per-block features; `student_from_teacher` builds a student from it.
* `convert`: write a student (or exact) folder with its processor and model card, then verify it against the
  teacher (`cgspn.conversion.verify`); ``cgspn convert`` (`cgspn.conversion.cli`) only parses arguments for it.

Heavy optional dependencies (open_clip, timm) are imported only when an open_clip teacher is converted.
"""

from .common import BuildResult, Copy, TeacherSpec, build_model, parse_attention_layers, student_config
from .convert import ConversionReport, convert
from .init import init_propagation_from_attention, propagation_heads_init, value_output_factors
from .teacher import (
    cgspn_teacher_spec,
    load_cgspn_model,
    load_teacher,
    load_teacher_and_processor,
    resolve_teacher,
    student_from_teacher,
    teacher_taps,
)
from .transformers import transformers_teacher_spec

__all__ = [
    "BuildResult",
    "ConversionReport",
    "Copy",
    "TeacherSpec",
    "build_model",
    "cgspn_teacher_spec",
    "convert",
    "init_propagation_from_attention",
    "load_cgspn_model",
    "load_teacher",
    "load_teacher_and_processor",
    "parse_attention_layers",
    "propagation_heads_init",
    "resolve_teacher",
    "student_config",
    "student_from_teacher",
    "teacher_taps",
    "transformers_teacher_spec",
    "value_output_factors",
]
