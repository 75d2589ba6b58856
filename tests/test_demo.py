"""The demo end to end in its quick mode: every stage runs and the report is complete and consistent."""

import json

import numpy as np
import pytest
from huggingface_hub import ModelCard
from transformers import AutoModel

from cgspn import CGSPNModel
from cgspn.cli import main as cgspn_main
from cgspn.data.digits import DIGIT_NAMES, digits_split, load_digits
from cgspn.demo import make_digits_dataset
from cgspn.demo.pipeline import DemoSettings


def test_quick_demo_writes_a_complete_report(tmp_path):
    output = tmp_path / "demo"
    assert cgspn_main(["demo", "--quick", "--output-dir", str(output)]) == 0
    summary = json.loads((output / "results.json").read_text())
    for name in ("teacher", "student"):
        for key in ("top1_accuracy", "top5_accuracy", "mean_iou"):
            assert 0.0 <= summary[name][key] <= 1.0, (name, key)
        assert summary[name]["top1_accuracy"] <= summary[name]["top5_accuracy"]
        assert summary[name]["num_examples"] == DemoSettings.quick().num_test
    # the student replaces attention by propagation: fewer vision parameters than the teacher
    assert summary["student"]["vision_parameters"] < summary["teacher"]["vision_parameters"]
    assert set(summary["timings_s"]) >= {"train teacher", "distill stage 1", "distill stage 2"}
    report = (output / "report.md").read_text()
    for figure in ("losses.png", "metrics.png", "predictions.png"):
        assert (output / figure).stat().st_size > 1000
        assert f"({figure})" in report
    assert f"{summary['student']['top1_accuracy']:.4f}" in report
    student = AutoModel.from_pretrained(output / "student")
    assert isinstance(student, CGSPNModel)
    assert student.config.vision_config.attention_layer_indices == []
    # the README's evaluation command on the demo's own outputs reproduces the report's student figure independently
    evaluation = output / "eval.json"
    command = ["eval", "zero-shot", "--model", str(output / "student"), "--data", str(output / "data")]
    assert cgspn_main([*command, "--output", str(evaluation)]) == 0
    assert json.loads(evaluation.read_text())["top1_accuracy"] == pytest.approx(summary["student"]["top1_accuracy"])
    card = ModelCard.load(output / "student" / "README.md")
    assert (
        card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"]
        == summary["student"]["top1_accuracy"]
    )


def test_digits_dataset_is_stratified_masked_and_deterministic():
    data = make_digits_dataset(image_size=16, num_validation=20, num_test=100, seed=3)
    splits = data.dataset
    assert sum(len(splits[name]) for name in ("train", "validation", "test")) == 1797
    assert len(splits["test"]) == 100 and len(splits["validation"]) == 20
    for name, per_class in (("test", 10), ("validation", 2)):  # stratified: each class's share, within one image
        counts = np.bincount(splits[name]["label"], minlength=10)
        assert counts.min() >= per_class - 1 and counts.max() <= per_class + 1, (name, counts)
    for row in splits["test"].select(range(20)):
        mask = np.asarray(row["mask"])
        assert row["image"].size == row["mask"].size == (16, 16)
        assert set(np.unique(mask)) == {0, row["label"] + 1}  # background and the digit's ink
        assert DIGIT_NAMES[row["label"]] in row["caption"]
    again = make_digits_dataset(image_size=16, num_validation=20, num_test=100, seed=3).dataset["test"]
    assert again["label"] == splits["test"]["label"]
    assert np.array_equal(np.asarray(again[7]["image"]), np.asarray(splits["test"][7]["image"]))


def test_digits_split_sizes_and_errors():
    splits = digits_split({"test": 37, "validation": 0}, seed=1)
    assert (len(splits["test"]), len(splits["validation"]), len(splits["train"])) == (37, 0, 1760)
    assert not set(splits["test"]) & set(splits["train"])
    with pytest.raises(ValueError, match='"train" is the rest'):
        digits_split({"train": 100})
    with pytest.raises(ValueError, match="split 'test': 1798 images asked, 1797 left"):
        digits_split({"test": 1798})
    _, labels = load_digits()
    with pytest.raises(ValueError, match="read-only"):
        labels[0] = 9
