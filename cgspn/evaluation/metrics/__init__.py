"""Local `evaluate` metric modules that load offline by path (no hub download).

``load_metric("top_k_accuracy")`` / ``load_metric("mean_iou")`` return `evaluate.Metric` instances; the scripts live
in sibling folders so ``evaluate.load("<this folder>/<name>")`` works too.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("mean_iou", "top_k_accuracy")


def metric_path(name: str) -> Path:
    """Folder of a bundled metric module, suitable for ``evaluate.load``."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"unknown metric {name!r}; bundled metrics: {', '.join(AVAILABLE_METRICS)}")
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"metric script {path / (name + '.py')} is missing from the installation")
    return path


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a bundled metric by local path (works with ``HF_EVALUATE_OFFLINE=1`` and no network)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = ["AVAILABLE_METRICS", "METRICS_DIR", "load_metric", "metric_path"]
