"""The demo's report: a markdown summary and PNG plots (loss curves, accuracy bars, example predictions)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """One panel per training run, loss against step (log scale)."""
    curves = {name: points for name, points in curves.items() if points}
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for axis, (name, points) in zip(axes[0], curves.items(), strict=True):
        steps, losses = zip(*points, strict=True)
        axis.plot(steps, losses, color="tab:blue")
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_bars(metrics: Mapping[str, Mapping[str, float]], path: Path, chance: Mapping[str, float]) -> Path:
    """Grouped bars: one group per metric, one bar per model; a dashed line marks chance level."""
    names = list(metrics)
    models = list(next(iter(metrics.values())))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        values = [metrics[name][model] for model in models]
        bars = axis.bar(models, values, color=["tab:gray", "tab:orange"][: len(models)])
        axis.bar_label(bars, fmt="%.3f")
        if name in chance:
            axis.axhline(chance[name], linestyle="--", color="black", linewidth=1, label="chance")
            axis.legend(loc="lower right")
        axis.set_ylim(0, 1.05)
        axis.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predictions(images, masks, predictions: Mapping[str, Sequence[np.ndarray]], path: Path) -> Path:
    """Rows of image | ground truth | each model's predicted mask."""
    columns = 2 + len(predictions)
    fig, axes = plt.subplots(len(images), columns, figsize=(2 * columns, 2 * len(images)), squeeze=False)
    titles = ["image", "ground truth", *predictions]
    vmax = max(int(np.max(mask)) for mask in masks) + 1
    for row, image in enumerate(images):
        panels = [np.asarray(image), np.asarray(masks[row])] + [pred[row] for pred in predictions.values()]
        for column, panel in enumerate(panels):
            axis = axes[row][column]
            if column == 0:
                axis.imshow(panel)
            else:
                axis.imshow(panel, cmap="tab10", vmin=0, vmax=max(vmax, 10), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(rows: Sequence[Sequence[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def write_report(output_dir: Path, summary: dict, figures: Mapping[str, Path]) -> Path:
    """Write ``report.md`` and ``results.json`` next to the figures."""
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    teacher, student = summary["teacher"], summary["student"]
    rows = [
        ("", "teacher (ViT, attention)", "student (C-GSPN)", "student / teacher"),
        *[
            (name, f"{teacher[key]:.4f}", f"{student[key]:.4f}", f"{student[key] / max(teacher[key], 1e-12):.3f}")
            for name, key in (
                ("zero-shot top-1", "top1_accuracy"),
                ("zero-shot top-5", "top5_accuracy"),
                ("segmentation mIoU", "mean_iou"),
            )
        ],
        ("vision parameters", f"{teacher['vision_parameters']:,}", f"{student['vision_parameters']:,}", ""),
    ]
    timings = _table([("step", "seconds"), *[(k, f"{v:.1f}") for k, v in summary["timings_s"].items()]])
    text = "\n\n".join(
        [
            "# C-GSPN offline demo",
            summary["description"],
            _table(rows),
            f"Chance level: top-1 {summary['chance_top1']:.4f}. Data: {summary['data']}.",
            "## Loss curves\n\n![losses](" + figures["losses"].name + ")",
            "## Accuracy and mIoU\n\n![metrics](" + figures["metrics"].name + ")",
            "## Example segmentations (test split)\n\n![predictions](" + figures["predictions"].name + ")",
            "## Timings\n\n" + timings,
        ]
    )
    path = output_dir / "report.md"
    path.write_text(text + "\n")
    return path
