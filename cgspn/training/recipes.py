"""High-level entry points: load models, run stage 1, stage 2 or the high-resolution curriculum.

The CLI (:mod:`cgspn.training.cli`) only parses arguments and calls these; they are equally usable from Python:

```python
>>> from cgspn.conversion import load_teacher_and_processor, student_from_teacher
>>> from cgspn.data import build_image_processor, load_image_dataset, prepare_dataset
>>> from cgspn.training import TrainingArguments, distill_stage1
>>> teacher, processor = load_teacher_and_processor("hf:path/to/siglip")
>>> dataset = prepare_dataset(load_image_dataset("data/"), build_image_processor(processor), 224)
>>> args = TrainingArguments(output_dir="out/stage1", max_steps=5000, per_device_batch_size=64)
>>> distill_stage1(teacher, student_from_teacher(teacher), dataset, args, processor=processor)
```
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..data import resized_processor
from .defaults import STAGE2_LOSSES, check_recipe
from .stages import FeatureTask, SublayerTask, frozen_copy, vision_tower
from .trainer import DistillationTrainer, TrainingArguments, TrainResult, export_student, push_folder_to_hub

logger = logging.getLogger(__name__)

DEFAULT_RESOLUTIONS = (378, 518, 756, 1036)


def distill_stage1(
    teacher: nn.Module,
    student: nn.Module,
    dataset,
    args: TrainingArguments,
    train_layer_norm: bool = False,
    card_info: dict[str, Any] | None = None,
    processor=None,
) -> TrainResult:
    """Stage 1 (sublayer-wise MSE) on a dataset of ``pixel_values``; ``processor`` is exported with the student."""
    task = SublayerTask(teacher, student, train_layer_norm, gradient_checkpointing=args.gradient_checkpointing)
    return DistillationTrainer(task, dataset, args, card_info=card_info, processor=processor).train()


def distill_stage2(
    teacher: nn.Module,
    student: nn.Module,
    dataset,
    args: TrainingArguments,
    distill_every: int = 9,
    batch_resolutions: Sequence[int] | None = None,
    kl_weight: float = 7.0 / 3.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    teacher_resolution: int | None = None,
    card_info: dict[str, Any] | None = None,
    processor=None,
    tap_weight: float | None = None,
    output_weight: float | None = None,
) -> TrainResult:
    """Stage 2 (end-to-end distillation) on a dataset of ``pixel_values``; ``processor`` is exported with the student.
    ``None`` loss weights take the defaults of ``args.recipe`` (:data:`~cgspn.training.defaults.STAGE2_LOSSES`)."""
    from accelerate.utils import set_seed

    defaults = STAGE2_LOSSES[check_recipe(args.recipe)]
    set_seed(args.seed)  # the adaptors' initialization
    task = FeatureTask(
        teacher,
        student,
        distill_every=distill_every,
        teacher_resolution=teacher_resolution,
        resolutions=batch_resolutions,
        kl_weight=kl_weight,
        alpha=alpha,
        beta=beta,
        seed=args.seed,
        tap_weight=defaults.tap_weight if tap_weight is None else tap_weight,
        output_weight=defaults.output_weight if output_weight is None else output_weight,
    )
    return DistillationTrainer(task, dataset, args, card_info=card_info, processor=processor).train()


def _phase_dir(output_dir: str | Path, index: int, resolution: int) -> Path:
    return Path(output_dir) / f"phase{index}_res{resolution}"


def _finished_phase(model_class: type[nn.Module], phase_dir: Path) -> nn.Module | None:
    """The exported student of a finished curriculum phase; ``None`` (with a warning if unreadable) otherwise."""
    if not (phase_dir / "model.safetensors").is_file():
        return None
    try:
        return model_class.from_pretrained(str(phase_dir))
    except Exception as error:  # any unreadable export: re-run the phase from its checkpoints
        logger.warning("The export in %s cannot be loaded (%s); resuming that phase", phase_dir, error)
        return None


def distill_curriculum(
    teacher: nn.Module | None,
    student: nn.Module,
    dataset_for_resolution,
    args: TrainingArguments,
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    batch_resolutions: Sequence[int] | None = None,
    card_info: dict[str, Any] | None = None,
    processor=None,
    **stage2_options,
) -> list[TrainResult]:
    """The high-resolution curriculum (SPEC §4): one stage-2 phase per resolution.

    Phase ``k`` trains the student at ``resolutions[k]`` against a frozen copy of itself as it was at the end of
    phase ``k-1``, run at ``resolutions[k-1]``, whose PP/PB patch features are bilinearly upsampled. With a
    ``teacher``, phase 0 is regular stage 2 against it at ``resolutions[0]``; without, the student is taken as
    already trained at ``resolutions[0]`` and the curriculum starts at ``resolutions[1]``.

    Args:
        dataset_for_resolution: ``callable(size) -> dataset`` of ``pixel_values`` at ``size``.
        args: Per-phase training arguments; phase ``k`` writes to ``output_dir/phase<k>_res<r>``. ``args.resume``
            skips finished phases (reloading their export) and resumes the current one.
        batch_resolutions: Optional multi-resolution sampling: each phase draws per batch among those of these
            resolutions that do not exceed its own, plus its own.
        processor: Exported with every phase's student and the final one, resized to that phase's resolution.
        stage2_options: ``distill_every``, ``kl_weight``, ``alpha``, ``beta``, ``tap_weight``, ``output_weight``.
    """
    resolutions = list(resolutions)
    if not resolutions or any(r < 1 for r in resolutions):
        raise ValueError(f"resolutions must be a non-empty list of positive sizes, got {resolutions}")
    if teacher is None and len(resolutions) < 2:
        raise ValueError("Without a teacher the curriculum needs at least two resolutions")
    start = 0 if teacher is not None else 1
    results = []
    for index in range(start, len(resolutions)):
        resolution = resolutions[index]
        phase_dir = _phase_dir(args.output_dir, index, resolution)
        finished = _finished_phase(type(student), phase_dir) if args.resume else None
        if finished is not None:
            logger.info("Phase %d (%d px) already finished; loading its student", index, resolution)
            vision_tower(student).load_state_dict(vision_tower(finished).state_dict())
            continue
        if index == 0:
            phase_teacher, teacher_resolution = teacher, None
        else:
            phase_teacher, teacher_resolution = frozen_copy(vision_tower(student)), resolutions[index - 1]
        sampled = sorted({r for r in batch_resolutions or [] if r <= resolution} | {resolution})
        phase_args = replace(args, output_dir=str(phase_dir), push_to_hub=None)
        result = distill_stage2(
            phase_teacher,
            student,
            dataset_for_resolution(resolution),
            phase_args,
            batch_resolutions=sampled if len(sampled) > 1 else None,
            teacher_resolution=teacher_resolution,
            card_info={**(card_info or {}), "resolution": resolution, "phase": index},
            processor=resized_processor(processor, resolution),
            **stage2_options,
        )
        results.append(result)
        if not result.finished:
            return results
    _export_final(student, args, results, card_info, resolutions, resized_processor(processor, resolutions[-1]))
    return results


def _export_final(student, args: TrainingArguments, results, card_info, resolutions, processor) -> None:
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        output_dir = Path(args.output_dir)
        losses = [loss for result in results for loss in result.losses]
        steps = sum(result.global_step for result in results)
        info = {**(card_info or {}), "resolutions": list(resolutions)}
        width = vision_tower(student).config.hidden_size
        export_student(
            student, output_dir, "curriculum", args.resolved("stage2", width), steps, losses, info, processor
        )
        if args.push_to_hub:
            push_folder_to_hub(output_dir, args.push_to_hub, args.hub_private, args.hub_token)
    state.wait_for_everyone()


__all__ = [
    "DEFAULT_RESOLUTIONS",
    "distill_curriculum",
    "distill_stage1",
    "distill_stage2",
]
