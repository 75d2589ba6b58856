"""Mean intersection-over-union for semantic segmentation as a local, offline `evaluate` metric (numpy only).

Load it by path: ``evaluate.load("<path>/mean_iou")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Mean IoU: for each class, |prediction ∩ reference| / |prediction ∪ reference| summed over all pixels of all images
(pixels whose reference is `ignore_index` are left out); the mean is taken over classes present in the prediction
or the reference. Also reports pixel accuracy and mean per-class accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays): predicted label maps.
    references (`list` of 2-D integer arrays): reference label maps, same shapes as the predictions.
    num_labels (`int`): number of classes (labels 0..num_labels-1).
    ignore_index (`int`, *optional*, defaults to 255): reference value to ignore.
    reduce_labels (`bool`, *optional*, defaults to `False`): map reference 0 to `ignore_index` and shift the other
        labels down by one (ADE20K convention where 0 is "other").
Returns:
    `dict`: ``mean_iou``, ``mean_accuracy``, ``overall_accuracy``, ``per_category_iou`` and
    ``per_category_accuracy`` (NaN for classes absent from both prediction and reference).
"""


def confusion_matrix(prediction, reference, num_labels, ignore_index=255, reduce_labels=False):
    """(num_labels, num_labels) counts, rows = reference class, columns = predicted class."""
    prediction = np.asarray(prediction, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    if reduce_labels:
        reference = np.where(reference == 0, ignore_index, reference - 1)
        reference = np.where(reference == ignore_index - 1, ignore_index, reference)
    valid = reference != ignore_index
    reference, prediction = reference[valid], prediction[valid]
    if reference.size and (reference.min() < 0 or reference.max() >= num_labels):
        raise ValueError(f"reference labels must be in [0, {num_labels}) or {ignore_index}")
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_labels):
        raise ValueError(f"predicted labels must be in [0, {num_labels})")
    return np.bincount(reference * num_labels + prediction, minlength=num_labels**2).reshape(num_labels, num_labels)


def scores_from_confusion(confusion):
    """IoU/accuracy summary of a confusion matrix (rows = reference, columns = prediction)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    area_reference = confusion.sum(axis=1)
    area_prediction = confusion.sum(axis=0)
    union = area_reference + area_prediction - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(area_reference > 0, intersection / area_reference, np.nan)
    total = confusion.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.any(area_reference > 0) else float("nan"),
        "overall_accuracy": float(intersection.sum() / total) if total > 0 else float("nan"),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, reduce_labels=False):
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if len(predictions) == 0:
            raise ValueError("no examples to score")
        total = np.zeros((num_labels, num_labels), dtype=np.int64)
        for prediction, reference in zip(predictions, references, strict=True):
            total += confusion_matrix(prediction, reference, num_labels, ignore_index, reduce_labels)
        return scores_from_confusion(total)
