"""A transformers-saved teacher goes through the whole CLI with no hand work: convert -> stage 1 -> stage 2 ->
curriculum -> ``cgspn eval zero-shot`` -> ``pipeline("zero-shot-image-classification")``.

The teachers are tiny random ``SiglipModel`` / ``CLIPModel`` folders written with ``save_pretrained`` plus their
processor, which transformers 5 saves as ``processor_config.json`` (no ``preprocessor_config.json``).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoProcessor, pipeline

from cgspn.cli import main
from cgspn.demo import make_shapes_dataset
from cgspn.pipelines import CGSPNZeroShotImageClassificationPipeline
from tests.helpers import save_tiny_transformers_teacher
from tests.test_training_utils import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__, "fresh_accelerator_state")
TRAIN_FLAGS = ["--max-steps", "2", "--batch-size", "4", "--save-steps", "0", "--report-to", "none", "--cpu"]


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A labelled image set saved with its class names and prompt templates (`cgspn.data` metadata)."""
    folder = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(num_train=8, num_validation=1, num_test=8, image_size=32, seed=0).save_to_disk(folder)
    return folder


def _image():
    return make_shapes_dataset(1, 1, 1, image_size=40, seed=1).dataset["test"][0]["image"]


def _is_complete_model_folder(folder) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.tokenizer is not None and processor.image_processor is not None, folder
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_transformers_teacher_end_to_end(tmp_path, demo_data, capsys, family):
    teacher = tmp_path / "teacher"
    save_tiny_transformers_teacher(teacher, family)
    assert not (teacher / "preprocessor_config.json").exists()  # transformers 5 wrote processor_config.json

    assert main(["convert", "--teacher", f"hf:{teacher}", "--out", str(tmp_path / "converted")]) == 0
    assert "FAIL" not in capsys.readouterr().out
    common = ["--teacher", f"hf:{teacher}", "--data", str(demo_data), *TRAIN_FLAGS]
    s1, s2, hires = tmp_path / "s1", tmp_path / "s2", tmp_path / "hires"
    assert main(["train", "stage1", *common, "--student", str(tmp_path / "converted"), "--output-dir", str(s1)]) == 0
    assert (
        main(["train", "stage2", *common, "--student", str(s1), "--output-dir", str(s2), "--distill-every", "1"]) == 0
    )
    curriculum = ["train", "curriculum", "--student", str(s2), "--data", str(demo_data), *TRAIN_FLAGS]
    assert main([*curriculum, "--resolutions", "32,48", "--output-dir", str(hires), "--distill-every", "1"]) == 0
    for export in (s1, s2, hires, hires / "phase1_res48"):
        _is_complete_model_folder(export)
    image = _image()
    pixels = AutoImageProcessor.from_pretrained(hires)(image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 48, 48)  # the curriculum's final resolution

    capsys.readouterr()
    argv = ["eval", "zero-shot", "--model", str(s2), "--data", str(demo_data), "--no-progress"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["num_examples"] == 8 and 0.0 <= results["top1_accuracy"] <= 1.0

    classifier = pipeline("zero-shot-image-classification", model=str(s2), device="cpu")
    labels = ["red circle", "blue square", "green triangle"]
    ranked = classifier(image, candidate_labels=labels)
    assert sorted(entry["label"] for entry in ranked) == sorted(labels)
    assert sum(entry["score"] for entry in ranked) == pytest.approx(1.0, abs=1e-5)  # the stock pipeline: softmax


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_exact_conversion_scores_like_the_teacher_in_the_pipeline(tmp_path, family):
    """The exact conversion (every block attention, position embeddings kept) with the saved processor gives the
    teacher's own pipeline scores: same tokenizer output (ids and attention mask) into the same text tower."""
    teacher = tmp_path / "teacher"
    model, _ = save_tiny_transformers_teacher(teacher, family)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # spread the scores so that a wrong text input shows
    model.save_pretrained(teacher)
    exact = tmp_path / "exact"
    argv = ["convert", "--teacher", f"hf:{teacher}", "--out", str(exact), "--attention-layers", "all"]
    assert main([*argv, "--keep-position-embeddings"]) == 0
    labels = ["red circle", "a blue square on a textured background", "x"]
    image = _image()
    expected = pipeline("zero-shot-image-classification", model=str(teacher), device="cpu")(image, labels)
    # the stock pipeline treats only model_type "siglip" as sigmoid + 64-token padding; C-GSPN's pipeline does so too
    pipeline_class = CGSPNZeroShotImageClassificationPipeline if family == "siglip" else None
    student = pipeline("zero-shot-image-classification", model=str(exact), device="cpu", pipeline_class=pipeline_class)
    got = student(image, labels)
    assert [entry["label"] for entry in got] == [entry["label"] for entry in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert len({round(entry["score"], 3) for entry in expected}) == len(labels)  # the scores do differ

    # a C-GSPN folder is a teacher source too, and gives the student the source teacher gives (one builder)
    for source, out in ((f"hf:{teacher}", "from_teacher"), (f"hf:{exact}", "from_exact")):
        assert main(["convert", "--teacher", source, "--out", str(tmp_path / out), "--propagation-channels", "2"]) == 0
    direct = load_file(tmp_path / "from_teacher" / "model.safetensors")
    via_exact = load_file(tmp_path / "from_exact" / "model.safetensors")
    assert sorted(direct) == sorted(via_exact) and all(torch.equal(via_exact[k], v) for k, v in direct.items())


def test_teacher_without_processor_needs_explicit_normalization(tmp_path, demo_data, capsys):
    """A transformers teacher saved without a processor: training does not guess its normalization, and the
    export (image processor only) is refused by zero-shot evaluation with the reason."""
    model, _ = save_tiny_transformers_teacher(tmp_path / "with_processor", "clip")
    model.save_pretrained(tmp_path / "bare")
    argv = ["train", "stage1", "--teacher", f"hf:{tmp_path / 'bare'}", "--data", str(demo_data), *TRAIN_FLAGS]
    with pytest.raises(SystemExit, match="--image-mean and --image-std"):
        main([*argv, "--output-dir", str(tmp_path / "refused")])
    normalization = ["--image-mean", "0.5,0.5,0.5", "--image-std", "0.5,0.5,0.5"]
    assert main([*argv, *normalization, "--output-dir", str(tmp_path / "s1")]) == 0
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "s1").image_std) == [0.5] * 3
    capsys.readouterr()
    assert main(["eval", "zero-shot", "--model", str(tmp_path / "s1"), "--data", str(demo_data)]) == 2
    assert "ships no tokenizer" in capsys.readouterr().err
