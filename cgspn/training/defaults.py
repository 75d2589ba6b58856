"""Distillation recipes: optimizer defaults per stage and the stage-2 loss mix.

* ``"cgspn"`` (the default): the recipe measured best by ``benchmarks/fidelity_ablation.py`` on real images for MAP-,
  class-token- and mean-pooled teachers (checked through the CLI by ``benchmarks/bench_fidelity.py``). Stage 2
  distills the student's own output (its final tokens and its pooled embedding, what zero-shot classification and
  dense heads consume) with every parameter training; the learning rates suit runs of hundreds to thousands of steps
  and shrink with the width (``lr * min(1, 256 / width)``).
* ``"paper"``: SPEC §4 as published: PP/PB taps through MLP adaptors, AdamW 4e-5 (stage 1) / 4e-4 (stage 2) for
  batches of 1024 / 8192 over millions of images.

Warm-up defaults longer than a tenth of the run are shortened to that (short runs would otherwise never leave it).
"""

from __future__ import annotations

from dataclasses import dataclass

RECIPE_NAMES = ("cgspn", "paper")
STAGES = ("stage1", "stage2")
REFERENCE_WIDTH = 256


@dataclass(frozen=True)
class StageDefaults:
    """Optimizer defaults of one stage; ``width_scaled`` learning rates shrink as ``min(1, 256 / width)``."""

    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    width_scaled: bool = False

    def learning_rate_for(self, width: int | None) -> float:
        if not self.width_scaled or width is None:
            return self.learning_rate
        return self.learning_rate * min(1.0, REFERENCE_WIDTH / width)


@dataclass(frozen=True)
class Stage2Loss:
    """Weights of the stage-2 terms: PP/PB taps through adaptors (SPEC §4) and the student's own output."""

    tap_weight: float
    output_weight: float


RECIPES: dict[str, dict[str, StageDefaults]] = {
    "cgspn": {
        "stage1": StageDefaults(2e-3, "linear", 300, width_scaled=True),
        "stage2": StageDefaults(1e-3, "cosine", 10_000, width_scaled=True),
    },
    "paper": {
        "stage1": StageDefaults(4e-5, "linear", 300),
        "stage2": StageDefaults(4e-4, "cosine", 10_000),
    },
}
STAGE2_LOSSES: dict[str, Stage2Loss] = {
    "cgspn": Stage2Loss(tap_weight=0.0, output_weight=1.0),
    "paper": Stage2Loss(tap_weight=1.0, output_weight=0.0),
}


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPE_NAMES:
        raise ValueError(f"recipe must be one of {RECIPE_NAMES}, got {recipe!r}")
    return recipe


def stage_defaults(recipe: str, stage: str) -> StageDefaults:
    """The optimizer defaults of ``stage`` (``"stage1"``, ``"stage2"``; the curriculum uses stage 2's)."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; expected one of {STAGES}")
    return RECIPES[check_recipe(recipe)][stage]


__all__ = ["RECIPES", "RECIPE_NAMES", "STAGE2_LOSSES", "Stage2Loss", "StageDefaults", "check_recipe", "stage_defaults"]
