"""The distillation stages of SPEC §4 as tasks the trainer runs.

A task owns a frozen teacher and a trainable ``module`` (the one handed to ``accelerator.prepare``):

- :class:`SublayerTask` (stage 1): one teacher forward records every block's input and token-mixer output;
  each student propagation layer computes ``mixer(layer_norm1(h_teacher_input))`` and is pulled towards the
  teacher's sublayer output with an MSE. Only propagation parameters train by default.
- :class:`FeatureTask` (stage 2 and the curriculum): the student runs end to end against a weighted sum of
  the paper's PP and PB taps every ``distill_every`` blocks (through MLP adaptors, ``MSE + lam * KL``) and of the
  student's own output (final tokens and pooled embedding; the ``"cgspn"`` recipe). The teacher may run at a lower
  resolution than the student (curriculum): its patch features are bilinearly upsampled.

The teacher stays outside the prepared module, so checkpoints hold only what trains.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..conversion.common import freeze
from ..taps import FeatureTaps
from .defaults import STAGE2_LOSSES
from .losses import DEFAULT_KL_WEIGHT, FeatureDistillationLoss, output_loss, sublayer_mse

logger = logging.getLogger(__name__)


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision tower of a CGSPN model (``model.vision_model`` when it has one, else ``model`` itself)."""
    tower = getattr(model, "vision_model", model)
    if not hasattr(tower, "encoder") or not hasattr(tower.encoder, "layers"):
        raise TypeError(f"{type(model).__name__} is not a C-GSPN vision tower (no encoder.layers)")
    return tower


def distill_layers(num_layers: int, distill_every: int) -> list[int]:
    """Blocks tapped in stage 2: ``distill_every - 1, 2 * distill_every - 1, ...`` (27 layers, 9 -> [8, 17, 26])."""
    if distill_every < 1:
        raise ValueError(f"distill_every must be >= 1, got {distill_every}")
    if distill_every > num_layers:
        raise ValueError(f"distill_every ({distill_every}) exceeds the number of blocks ({num_layers})")
    return list(range(distill_every - 1, num_layers, distill_every))


def _resize(pixel_values: torch.Tensor, size: int) -> torch.Tensor:
    if pixel_values.shape[-2:] == (size, size):
        return pixel_values
    return F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def upsample_tokens(tokens: torch.Tensor, num_prefix: int, source_grid: tuple[int, int], target_grid: tuple[int, int]):
    """Bilinearly resample the patch tokens of (B, P + h*w, C) features to ``target_grid``; prefix tokens stay."""
    if tuple(source_grid) == tuple(target_grid):
        return tokens
    prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
    grid = patches.unflatten(1, tuple(source_grid)).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(target_grid), mode="bilinear", align_corners=False)
    patches = grid.to(tokens.dtype).flatten(2).transpose(1, 2)
    return torch.cat((prefix, patches), dim=1)


class SublayerDistiller(nn.Module):
    """Trainable part of stage 1: the student tower, of which only the propagation layers run.

    Args:
        student: The student vision tower.
        train_layer_norm: Also train ``layer_norm1`` of the propagation layers (default: mixers only).
        gradient_checkpointing: Recompute each mixer in the backward pass.
    """

    def __init__(self, student: nn.Module, train_layer_norm: bool = False, gradient_checkpointing: bool = False):
        super().__init__()
        self.student = student
        self.layers = [i for i, block in enumerate(student.encoder.layers) if not block.uses_attention]
        if not self.layers:
            raise ValueError("Stage 1 needs a student with at least one propagation layer")
        self.gradient_checkpointing = gradient_checkpointing
        student.requires_grad_(False)
        for index in self.layers:
            block = student.encoder.layers[index]
            block.mixer.requires_grad_(True)
            block.layer_norm1.requires_grad_(train_layer_norm)

    def _mixer(self, index: int, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        block = self.student.encoder.layers[index]
        return block.mixer(block.layer_norm1(hidden_states), height, width)

    def forward(
        self, inputs: dict[int, torch.Tensor], targets: dict[int, torch.Tensor], height: int, width: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over propagation layers of ``MSE(Prop_i(LN1(h_i)), Attn_i(LN1_teacher(h_i)))``, and the parts."""
        total = 0.0
        parts = {}
        for index in self.layers:
            if self.gradient_checkpointing and self.training:
                output = checkpoint(self._mixer, index, inputs[index], height, width, use_reentrant=False)
            else:
                output = self._mixer(index, inputs[index], height, width)
            loss = sublayer_mse(output, targets[index])
            parts[f"mse_{index}"] = loss.detach()
            total = total + loss
        return total, parts


class FeatureDistiller(nn.Module):
    """Trainable part of stage 2: the student tower and, when taps are weighted, their adaptors (dropped at export).

    Without the output loss, parameters after the last tapped block (later blocks, final norm, pooling head) get no
    gradient and are frozen, so data-parallel training needs no unused-parameter search.
    """

    def __init__(
        self, student: nn.Module, criterion: FeatureDistillationLoss | None, tap_weight: float, output_weight: float
    ):
        super().__init__()
        self.student = student
        self.criterion = criterion
        self.tap_weight = tap_weight
        self.output_weight = output_weight
        if not output_weight:
            last = max(criterion.layers)
            frozen = [*student.encoder.layers[last + 1 :], student.post_layernorm]
            frozen += [student.head] if getattr(student, "head", None) is not None else []
            for module in frozen:
                module.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, teacher: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss against ``teacher`` (``FeatureTask.teacher_targets``) and its detached parts."""
        layers = self.criterion.layers if self.criterion is not None else []
        with FeatureTaps(self.student, layers) as taps:
            output = self.student(pixel_values)
        total, parts = 0.0, {}
        if self.criterion is not None:
            tap_loss, parts = self.criterion(taps.records, teacher["taps"])
            total = self.tap_weight * tap_loss
        if self.output_weight:
            loss, output_parts = output_loss(
                output.last_hidden_state, teacher["tokens"], output.pooler_output, teacher["pooled"]
            )
            total = total + self.output_weight * loss
            parts.update(output_parts)
        return total, parts


def _grid(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size


class SublayerTask:
    """Stage 1: sublayer-wise distillation of every student propagation layer (SPEC §4)."""

    name = "stage1"

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        train_layer_norm: bool = False,
        gradient_checkpointing: bool = False,
    ):
        self.teacher = freeze(vision_tower(teacher))
        self.student_model = student
        self.module = SublayerDistiller(vision_tower(student), train_layer_norm, gradient_checkpointing)
        teacher_blocks = len(self.teacher.encoder.layers)
        if teacher_blocks != len(self.module.student.encoder.layers):
            raise ValueError(f"Teacher has {teacher_blocks} blocks, student {len(self.module.student.encoder.layers)}")
        self.patch_size = self.teacher.config.patch_size

    @torch.no_grad()
    def teacher_targets(self, pixel_values: torch.Tensor) -> tuple[dict, dict]:
        """Block inputs and token-mixer outputs of the teacher at the student's propagation layers."""
        with FeatureTaps(self.teacher, self.module.layers, detach=True) as taps:
            self.teacher(pixel_values)
        return {i: r["input"] for i, r in taps.records.items()}, {i: r["mixer"] for i, r in taps.records.items()}

    def loss(self, module: nn.Module, pixel_values: torch.Tensor, step: int, autocast) -> tuple[torch.Tensor, dict]:
        with autocast():
            inputs, targets = self.teacher_targets(pixel_values)
        height, width = _grid(pixel_values, self.patch_size)
        return module(inputs, targets, height, width)


class FeatureTask:
    """Stage 2 / curriculum phase: end-to-end distillation of PP/PB taps (SPEC §4) and of the student's output.

    Args:
        teacher: Frozen teacher (the original one, or the previous curriculum phase's student).
        student: The student model (its vision tower trains).
        distill_every: Tap every ``distill_every``-th block.
        teacher_resolution: Resolution the teacher sees (curriculum); ``None`` = the student's batch resolution.
        resolutions: Optional per-batch resolutions for the student (multi-resolution training); one is drawn
            per optimizer step from a generator seeded by ``(seed, step)``, so resumed runs draw the same ones.
        kl_weight / alpha / beta: Tap loss weights (SPEC: 7/3, 0.5, 0.5).
        tap_weight / output_weight: Weights of the tap loss (through adaptors, SPEC §4) and of the output loss
            (final tokens and pooled embedding, :func:`~cgspn.training.losses.output_loss`); defaults: the
            ``"cgspn"`` recipe (output only). At least one must be positive.
    """

    name = "stage2"

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        distill_every: int = 9,
        teacher_resolution: int | None = None,
        resolutions: Sequence[int] | None = None,
        kl_weight: float = DEFAULT_KL_WEIGHT,
        alpha: float = 0.5,
        beta: float = 0.5,
        seed: int = 0,
        tap_weight: float = STAGE2_LOSSES["cgspn"].tap_weight,
        output_weight: float = STAGE2_LOSSES["cgspn"].output_weight,
    ):
        if tap_weight < 0 or output_weight < 0 or not (tap_weight or output_weight):
            raise ValueError(
                f"tap_weight and output_weight must be >= 0 and one of them > 0, got {tap_weight} and {output_weight}"
            )
        self.teacher = freeze(vision_tower(teacher))
        self.student_model = student
        student_tower = vision_tower(student)
        num_layers = len(student_tower.encoder.layers)
        if len(self.teacher.encoder.layers) != num_layers:
            raise ValueError(f"Teacher has {len(self.teacher.encoder.layers)} blocks, student {num_layers}")
        self.layers = distill_layers(num_layers, distill_every) if tap_weight else []
        criterion = (
            FeatureDistillationLoss(
                student_tower.config.hidden_size, self.layers, kl_weight, kl_weight, alpha=alpha, beta=beta
            )
            if tap_weight
            else None
        )
        self.module = FeatureDistiller(student_tower, criterion, tap_weight, output_weight)
        self.teacher_resolution = teacher_resolution
        self.resolutions = list(resolutions or [])
        self.seed = seed
        self.patch_size = student_tower.config.patch_size
        self.teacher_patch_size = self.teacher.config.patch_size
        self.num_prefix = student_tower.config.num_prefix_tokens
        if self.teacher.config.num_prefix_tokens != self.num_prefix:
            raise ValueError("Teacher and student must have the same number of prefix tokens")

    def resolution_for_step(self, step: int) -> int | None:
        """The student's resolution at optimizer step ``step`` (``None``: keep the batch as loaded)."""
        if not self.resolutions:
            return None
        return random.Random(self.seed * 1_000_003 + step).choice(self.resolutions)

    @torch.no_grad()
    def teacher_targets(self, pixel_values: torch.Tensor, student_grid: tuple[int, int]) -> dict:
        """The teacher's ``"taps"`` (PP/PB per tapped block) and, with the output loss, its final ``"tokens"`` and
        ``"pooled"`` embedding, at the teacher's resolution; tokens are resampled to the student's patch grid."""
        if self.teacher_resolution is not None:
            pixel_values = _resize(pixel_values, self.teacher_resolution)
        grid = _grid(pixel_values, self.teacher_patch_size)
        with FeatureTaps(self.teacher, self.layers, detach=True) as taps:
            output = self.teacher(pixel_values)

        def resample(tokens: torch.Tensor) -> torch.Tensor:
            return upsample_tokens(tokens, self.num_prefix, grid, student_grid)

        targets = {
            "taps": {
                index: {kind: resample(record[kind]) for kind in ("pp", "pb")} for index, record in taps.records.items()
            }
        }
        if self.module.output_weight:  # the paper recipe never reads them: skip resampling the final tokens
            targets.update(tokens=resample(output.last_hidden_state), pooled=output.pooler_output)
        return targets

    def loss(self, module: nn.Module, pixel_values: torch.Tensor, step: int, autocast) -> tuple[torch.Tensor, dict]:
        resolution = self.resolution_for_step(step)
        if resolution is not None:
            pixel_values = _resize(pixel_values, resolution)
        with autocast():
            targets = self.teacher_targets(pixel_values, _grid(pixel_values, self.patch_size))
        return module(pixel_values, targets)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy (the curriculum's teacher: the previous phase's student)."""
    return freeze(copy.deepcopy(model))


__all__ = [
    "FeatureDistiller",
    "FeatureTask",
    "SublayerDistiller",
    "SublayerTask",
    "distill_layers",
    "freeze",
    "frozen_copy",
    "upsample_tokens",
    "vision_tower",
]
