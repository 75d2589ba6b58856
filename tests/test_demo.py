"""The demo end to end in its quick mode: every stage runs and the report is complete and consistent."""

import json

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModel

from cgspn import CGSPNModel
from cgspn.cli import main as cgspn_main


def test_quick_demo_writes_a_complete_report(tmp_path):
    output = tmp_path / "demo"
    assert cgspn_main(["demo", "--quick", "--output-dir", str(output)]) == 0
    summary = json.loads((output / "results.json").read_text())
    for name in ("teacher", "student"):
        for key in ("top1_accuracy", "top5_accuracy", "mean_iou"):
            assert 0.0 <= summary[name][key] <= 1.0, (name, key)
        assert summary[name]["top1_accuracy"] <= summary[name]["top5_accuracy"]
        assert summary[name]["num_examples"] == 32
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
