"""Top-k classification accuracy as a local, offline `evaluate` metric (numpy only).

Load it by path: ``evaluate.load("<path>/top_k_accuracy")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose reference label is among the first k ranked predictions.
Each prediction is a list of class indices ranked from most to least likely (at least max(k) long, or all classes).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): ranked class indices per example, best first.
    references (`list` of `int`): the true class index per example.
    k (`int` or `list` of `int`, *optional*, defaults to `(1, 5)`): the k values to report. When a ranking is
        shorter than k (fewer classes than k), the whole ranking counts, so top-k is then 1.0 for a full ranking.
Returns:
    `dict`: ``top{k}_accuracy`` for every k, and ``accuracy`` (= top-1).
Examples:
    >>> metric = evaluate.load("cgspn/evaluation/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[2, 0, 1], [0, 1, 2]], references=[0, 0], k=[1, 2])
    {'accuracy': 0.5, 'top1_accuracy': 0.5, 'top2_accuracy': 1.0}
"""


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or any(int(v) < 1 for v in ks):
            raise ValueError(f"k must be positive integers, got {k}")
        references = np.asarray(references, dtype=np.int64)
        if references.size == 0:
            raise ValueError("no examples to score")
        results = {}
        for v in sorted({int(x) for x in ks}):
            hits = [ref in pred[:v] for pred, ref in zip(predictions, references.tolist(), strict=True)]
            results[f"top{v}_accuracy"] = float(np.mean(hits))
        if 1 in {int(x) for x in ks}:
            results = {"accuracy": results["top1_accuracy"], **results}
        return results
