"""Evaluation: zero-shot classification and semantic segmentation on any `datasets` dataset.

Metrics come from local `evaluate` modules that load offline (`cgspn.evaluation.metrics`); ``cgspn-eval`` is the
command-line front end (`cgspn.evaluation.cli.main`).
"""

from ..data import DEFAULT_TEMPLATES
from .metrics import load_metric
from .segmentation import evaluate_segmentation, predict_masks
from .zero_shot import evaluate_zero_shot, zero_shot_classifier

__all__ = [
    "DEFAULT_TEMPLATES",
    "evaluate_segmentation",
    "evaluate_zero_shot",
    "load_metric",
    "predict_masks",
    "zero_shot_classifier",
]
