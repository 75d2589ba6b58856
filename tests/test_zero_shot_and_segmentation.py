"""Issue 5: zero-shot pipeline, segmentation fine-tuning with Trainer, backbone for transformers heads."""

import json
import os
import subprocess
import sys

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoModelForSemanticSegmentation,
    SegformerImageProcessor,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    pipeline,
)

from cgspn import CGSPNBackbone, CGSPNConfig, CGSPNForSemanticSegmentation, CGSPNModel, CGSPNVisionConfig
from cgspn.demo.data import make_shapes_dataset
from cgspn.pipelines import CGSPNZeroShotImageClassificationPipeline
from cgspn.tokenization import build_processor, small_clip_tokenizer
from tests.helpers import tiny_text_config
from tests.test_modeling_cgspn import run_remote_code

LABELS = ["a woman in uniform", "a cat", "a red circle", "a city at night"]


def real_images() -> list[Image.Image]:
    """Real photographs that ship with matplotlib (no downloads)."""
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
    return [Image.open(matplotlib.cbook.get_sample_data(name)).convert("RGB") for name in names]


def tiny_vision(**overrides) -> dict:
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=8,
        image_size=32,
        pooling="mean",
        attention_layer_indices=[1],
    )
    return {**vision, **overrides}


@pytest.fixture(scope="module")
def zero_shot_folder(tmp_path_factory):
    """A saved tiny C-GSPN CLIP (softmax loss) with its processor and an offline tokenizer."""
    tokenizer = small_clip_tokenizer([*LABELS, "this is a photo of"], vocab_size=600)
    text = tiny_text_config(tokenizer, num_hidden_layers=2)
    config = CGSPNConfig(
        vision_config=tiny_vision(),
        text_config=text,
        projection_dim=16,
        loss_type="softmax",
        logit_scale_init_value=2.6592,
        logit_bias_init_value=None,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("zero_shot")
    CGSPNModel(config).save_pretrained(folder)
    build_processor(tokenizer, image_size=32).save_pretrained(folder)
    return folder


def check_ranked(result, labels, sums_to_one=True):
    assert sorted(entry["label"] for entry in result) == sorted(labels)
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    if sums_to_one:
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_stock_zero_shot_pipeline_on_real_images(zero_shot_folder):
    classifier = pipeline("zero-shot-image-classification", model=str(zero_shot_folder))
    assert isinstance(classifier.model, CGSPNModel)
    for image in real_images():
        check_ranked(classifier(image, candidate_labels=LABELS), LABELS)


def test_pipeline_scores_match_the_model(zero_shot_folder):
    classifier = pipeline("zero-shot-image-classification", model=str(zero_shot_folder))
    image = real_images()[0]
    result = classifier(image, candidate_labels=LABELS, hypothesis_template="{}")
    inputs = classifier.tokenizer(LABELS, padding=True, return_tensors="pt").to(classifier.device)
    pixel_values = classifier.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = classifier.model(**inputs, pixel_values=pixel_values.to(classifier.device)).logits_per_image[0]
    expected = dict(zip(LABELS, logits.softmax(-1).tolist(), strict=True))
    for entry in result:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-6)


def test_cgspn_pipeline_validates_labels_and_uses_sigmoid_for_sigmoid_models(zero_shot_folder, tmp_path):
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(zero_shot_folder),
        pipeline_class=CGSPNZeroShotImageClassificationPipeline,
    )
    image = real_images()[0]
    check_ranked(classifier(image, candidate_labels=LABELS), LABELS)
    with pytest.raises(ValueError, match="non-empty list"):
        classifier(image, candidate_labels=[])
    with pytest.raises(ValueError, match="non-blank strings"):
        classifier(image, candidate_labels=["a cat", "  "])
    classifier.model.config.loss_type = "sigmoid"
    result = classifier(image, candidate_labels=LABELS)
    check_ranked(result, LABELS, sums_to_one=False)


def test_zero_shot_pipeline_from_remote_code_without_cgspn(zero_shot_folder, tmp_path):
    config = json.loads((zero_shot_folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_cgspn.CGSPNModel"
    script = tmp_path / "pipe.py"
    script.write_text(
        "import importlib.abc, json, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cgspn': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import matplotlib.cbook\n"
        "from PIL import Image\n"
        "from transformers import pipeline\n"
        "pipe = pipeline('zero-shot-image-classification', model=sys.argv[1], trust_remote_code=True)\n"
        "image = Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg'))\n"
        "result = pipe(image, candidate_labels=sys.argv[2:])\n"
        "print(json.dumps({'module': type(pipe.model).__module__, 'result': result}))\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), str(zero_shot_folder), *LABELS],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    check_ranked(report["result"], LABELS)


# --- segmentation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmentation_data():
    data = make_shapes_dataset(num_train=48, num_validation=16, num_test=0, image_size=32, seed=1)
    processor = SegformerImageProcessor(
        size={"height": 32, "width": 32}, do_reduce_labels=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )

    def transform(batch):
        encoded = processor(images=batch["image"], segmentation_maps=batch["mask"], return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}

    dataset = data.dataset
    for split in ("train", "validation"):
        dataset[split].set_transform(transform)
    return dataset, len(data.segmentation_labels)


def mean_loss(model, dataset) -> float:
    model.eval()
    batch = {key: torch.stack([example[key] for example in dataset]) for key in ("pixel_values", "labels")}
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("head", ["linear", "multiscale"])
def test_segmentation_finetuning_with_trainer_decreases_loss_and_reloads(segmentation_data, tmp_path, head):
    dataset, num_labels = segmentation_data
    config = CGSPNVisionConfig(**tiny_vision(num_labels=num_labels, segmentation_head=head, out_indices=[1, 2]))
    torch.manual_seed(0)
    model = CGSPNForSemanticSegmentation(config)
    before = mean_loss(model, dataset["train"])
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        logging_steps=5,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset["train"], eval_dataset=dataset["validation"])
    trainer.train()
    after = mean_loss(model, dataset["train"])
    assert after < 0.8 * before, (before, after)
    assert np.isfinite(trainer.evaluate()["eval_loss"])
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "final").eval()
    pixel_values = dataset["validation"][0]["pixel_values"][None]
    torch.testing.assert_close(reloaded(pixel_values).logits, model.eval()(pixel_values).logits)


def test_segmentation_logits_are_upsampled_and_ignore_index_is_ignored():
    config = CGSPNVisionConfig(**tiny_vision(num_labels=3))
    model = CGSPNForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 24, 40)
    labels = torch.randint(0, 3, (2, 24, 40))
    outputs = model(pixel_values, labels=labels)
    assert outputs.logits.shape == (2, 3, 24, 40)
    ignored = labels.clone()
    ignored[:, :12] = 255
    expected = torch.nn.functional.cross_entropy(outputs.logits[:, :, 12:], labels[:, 12:])
    torch.testing.assert_close(model(pixel_values, labels=ignored).loss, expected)
    with pytest.raises(ValueError, match="labels must have the image's size"):
        model(pixel_values, labels=labels[:, :8])


# --- backbone ------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_indices", [[0, 2], [1], [0, 1, 2]])
@pytest.mark.parametrize("height, width", [(32, 32), (16, 48)])
def test_backbone_feature_maps(out_indices, height, width):
    config = CGSPNVisionConfig(**tiny_vision(out_indices=out_indices, num_prefix_tokens=1))
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, CGSPNBackbone)
    assert backbone.out_features == [f"stage{i}" if i else "stem" for i in out_indices]
    outputs = backbone(torch.randn(2, 3, height, width), output_hidden_states=True)
    assert len(outputs.feature_maps) == len(out_indices)
    for feature_map in outputs.feature_maps:
        assert feature_map.shape == (2, 32, height // 8, width // 8)
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    # each map is the final LayerNorm of that stage's patch tokens
    last = backbone.post_layernorm(outputs.hidden_states[out_indices[-1]])[:, 1:]
    torch.testing.assert_close(outputs.feature_maps[-1].flatten(2).transpose(1, 2), last)


def test_backbone_drives_transformers_upernet():
    backbone_config = CGSPNVisionConfig(**tiny_vision(num_hidden_layers=4, out_indices=[1, 2, 3, 4]))
    config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=16,
        num_labels=3,
        auxiliary_in_channels=32,
        use_auxiliary_head=False,
    )
    model = UperNetForSemanticSegmentation(config).eval()
    assert isinstance(model.backbone, CGSPNBackbone)
    pixel_values = torch.randn(1, 3, 32, 48)
    outputs = model(pixel_values, labels=torch.randint(0, 3, (1, 32, 48)))
    assert outputs.logits.shape == (1, 3, 32, 48)
    assert torch.isfinite(outputs.loss)


def test_clip_model_rejects_empty_text_batch():
    text = dict(
        model_type="clip_text_model",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=50,
        max_position_embeddings=16,
    )
    model = CGSPNModel(CGSPNConfig(vision_config=tiny_vision(), text_config=text, projection_dim=8)).eval()
    with pytest.raises(ValueError, match="at least one text"):
        model(input_ids=torch.zeros(0, 5, dtype=torch.long), pixel_values=torch.randn(1, 3, 32, 32))


def test_remote_code_segmentation_model(tmp_path):
    config = CGSPNVisionConfig(**tiny_vision(num_labels=3))
    model = CGSPNForSemanticSegmentation(config).eval()
    folder = tmp_path / "seg"
    model.save_pretrained(folder)
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values).logits
    report = run_remote_code(
        tmp_path, folder, "AutoModelForSemanticSegmentation", {"pixel_values": pixel_values}, "logits", expected
    )
    assert report["class"] == "CGSPNForSemanticSegmentation"
    assert report["max_diff"] == 0.0


@pytest.mark.parametrize("context", [16, 64, 128])
def test_cgspn_pipeline_pads_text_for_siglip_text_towers(tmp_path, context):
    tokenizer = small_clip_tokenizer([*LABELS, "this is a photo of"], vocab_size=600, model_max_length=context)
    text = tiny_text_config(tokenizer, model_type="siglip_text_model")
    torch.manual_seed(0)
    model = CGSPNModel(CGSPNConfig(vision_config=tiny_vision(), text_config=text)).eval()
    model.save_pretrained(tmp_path)
    build_processor(tokenizer, image_size=32).save_pretrained(tmp_path)
    classifier = pipeline(
        "zero-shot-image-classification", model=str(tmp_path), pipeline_class=CGSPNZeroShotImageClassificationPipeline
    )
    image = real_images()[0]
    result = classifier(image, candidate_labels=LABELS, hypothesis_template="{}")
    # SigLIP text pools the last token: the pipeline must pad to the tower's own context, and score with sigmoids
    inputs = classifier.tokenizer(LABELS, padding="max_length", max_length=context, return_tensors="pt")
    pixel_values = classifier.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = classifier.model(**inputs.to(classifier.device), pixel_values=pixel_values.to(classifier.device))
    expected = dict(zip(LABELS, torch.sigmoid(outputs.logits_per_image[0]).tolist(), strict=True))
    for entry in result:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-6)


def test_cgspn_pipeline_rejects_a_template_without_placeholder(zero_shot_folder):
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(zero_shot_folder),
        pipeline_class=CGSPNZeroShotImageClassificationPipeline,
    )
    with pytest.raises(ValueError, match="hypothesis_template needs exactly one"):
        classifier(real_images()[0], candidate_labels=LABELS, hypothesis_template="a photo")
