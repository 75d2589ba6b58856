"""Distillation training of C-GSPN students (SPEC §4) on Accelerate and `datasets`.

- :mod:`cgspn.data` (shared with evaluation and the demo): image datasets and processors.
- :mod:`~cgspn.training.losses`: stage-1 sublayer MSE; stage-2 MSE + lam*KL through MLP adaptors.
- :mod:`~cgspn.training.stages`: stage-1 / stage-2 tasks (teacher targets, trainable modules).
- :mod:`~cgspn.training.trainer`: the Accelerate loop, checkpoints, resume, export, push to hub.
- :mod:`~cgspn.training.checkpointing`: crash-safe (write, flush, rename) checkpoints and exports; resume fall-back.
- :mod:`~cgspn.training.recipes`: stage 1, stage 2 and the high-resolution curriculum end to end.
- :mod:`~cgspn.training.cli`: ``cgspn-train {stage1,stage2,curriculum}``.

Teachers are loaded and students built by :mod:`cgspn.conversion` (``load_teacher_and_processor``,
``student_from_teacher``).

Heavy dependencies (`datasets`, `accelerate`) are imported only when used.
"""

from ..data import build_image_processor, collate_pixel_values, load_image_dataset, prepare_dataset
from .losses import FeatureDistillationLoss, TapAdaptor, feature_loss, sublayer_mse
from .recipes import distill_curriculum, distill_stage1, distill_stage2
from .stages import FeatureTask, SublayerTask, distill_layers
from .trainer import DistillationTrainer, TrainingArguments, TrainResult, latest_checkpoint

__all__ = [
    "DistillationTrainer",
    "FeatureDistillationLoss",
    "FeatureTask",
    "SublayerTask",
    "TapAdaptor",
    "TrainResult",
    "TrainingArguments",
    "build_image_processor",
    "collate_pixel_values",
    "distill_curriculum",
    "distill_layers",
    "distill_stage1",
    "distill_stage2",
    "feature_loss",
    "latest_checkpoint",
    "load_image_dataset",
    "prepare_dataset",
    "sublayer_mse",
]
