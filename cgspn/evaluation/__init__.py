"""Evaluation: zero-shot classification and semantic segmentation on any `datasets` dataset.

Metrics come from local `evaluate` modules that load offline (`cgspn.evaluation.metrics`); ``cgspn-eval`` is the
command-line front end (`cgspn.evaluation.cli.main`).
"""

from .data import load_eval_dataset
from .metrics import load_metric
from .segmentation import evaluate_segmentation, predict_masks
from .zero_shot import DEFAULT_TEMPLATES, evaluate_zero_shot, zero_shot_classifier

__all__ = [
    "DEFAULT_TEMPLATES",
    "evaluate_segmentation",
    "evaluate_zero_shot",
    "load_eval_dataset",
    "load_metric",
    "predict_masks",
    "zero_shot_classifier",
]
