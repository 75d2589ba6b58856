"""Offline metrics, zero-shot and segmentation evaluation, and the cgspn-eval CLI."""

import json
import math
from types import SimpleNamespace

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    pipeline,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, SemanticSegmenterOutput

from cgspn import CGSPNVisionConfig, CGSPNVisionModel
from cgspn.data import load_image_dataset
from cgspn.demo import make_shapes_dataset
from cgspn.evaluation import evaluate_segmentation, evaluate_zero_shot, load_metric
from cgspn.evaluation.cli import main
from cgspn.evaluation.metrics import metric_path
from cgspn.evaluation.segmentation import find_mask_column
from cgspn.evaluation.zero_shot import as_embeddings, zero_shot_classifier
from cgspn.tokenization import build_processor, small_clip_tokenizer

# ----------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo():
    return make_shapes_dataset(num_train=8, num_validation=4, num_test=24, image_size=32, seed=0)


@pytest.fixture(scope="module")
def processor(demo):
    prompts = [t.format(c) for c in demo.class_names for t in demo.templates]
    return build_processor(small_clip_tokenizer(prompts), image_size=32)


@pytest.fixture(scope="module")
def tiny_clip(processor):
    tokenizer = processor.tokenizer
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    text.update(num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id)
    text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    vision.update(num_attention_heads=2)
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


@pytest.fixture(scope="module")
def tiny_segformer():
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
        decoder_hidden_size=16, patch_sizes=[7, 3], strides=[4, 2], num_labels=5,
        id2label={0: "background", 1: "circle", 2: "square", 3: "triangle", 4: "cross"},
    )  # fmt: skip
    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(config).eval()


# ------------------------------------------------------------------------------------------------------------ metrics


def test_metrics_load_offline_by_path():
    for name in ("top_k_accuracy", "mean_iou"):
        assert isinstance(evaluate.load(str(metric_path(name))), evaluate.Metric)
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("bleu")


def test_top_k_accuracy_by_hand():
    metric = load_metric("top_k_accuracy")
    ranked = [[2, 0, 1], [0, 1, 2], [1, 2, 0]]
    result = metric.compute(predictions=ranked, references=[0, 0, 0], k=[1, 2, 3, 5])
    assert result == pytest.approx(
        {"accuracy": 1 / 3, "top1_accuracy": 1 / 3, "top2_accuracy": 2 / 3, "top3_accuracy": 1.0, "top5_accuracy": 1.0}
    )
    assert metric.compute(predictions=[[1, 0]], references=[0], k=2) == {"top2_accuracy": 1.0}
    with pytest.raises(ValueError, match="positive"):
        metric.compute(predictions=[[0]], references=[0], k=[0])


def test_mean_iou_by_hand_with_ignore_index():
    metric = load_metric("mean_iou")
    metric.add_batch(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 0], [1, 255]])])
    result = metric.compute(num_labels=3, ignore_index=255)
    # class 0: I=1, U=2; class 1: I=1, U=2; class 2 absent everywhere -> NaN and left out of the mean.
    np.testing.assert_allclose(result["per_category_iou"], [0.5, 0.5, np.nan])
    np.testing.assert_allclose(result["per_category_accuracy"], [0.5, 1.0, np.nan])
    assert result["mean_iou"] == pytest.approx(0.5)
    assert result["mean_accuracy"] == pytest.approx(0.75)
    assert result["overall_accuracy"] == pytest.approx(2 / 3)

    # Areas are summed over the dataset (not averaged per image); images may have different sizes.
    predictions = [np.array([[0, 1], [1, 1]]), np.array([[2, 2, 0]])]
    references = [np.array([[0, 0], [1, 255]]), np.array([[2, 2, 2]])]
    result = metric.compute(predictions=predictions, references=references, num_labels=3)
    # class 0: I=1, U=3; class 1: I=1, U=2; class 2: I=2, U=3.
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 1 / 2, 2 / 3])
    assert result["overall_accuracy"] == pytest.approx(4 / 6)


def test_mean_iou_reduce_labels_and_errors():
    metric = load_metric("mean_iou")
    result = metric.compute(
        predictions=[np.array([[0, 0, 1]])], references=[np.array([[0, 1, 2]])], num_labels=2, reduce_labels=True
    )
    assert result["mean_iou"] == 1.0 and result["overall_accuracy"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        metric.compute(predictions=[np.zeros((2, 2))], references=[np.zeros((2, 3))], num_labels=2)
    with pytest.raises(ValueError, match="reference labels"):
        metric.compute(predictions=[np.zeros((1, 1))], references=[np.full((1, 1), 7)], num_labels=2)


def test_as_embeddings_accepts_tensors_and_model_outputs():
    x = torch.randn(3, 4)
    assert as_embeddings(x) is x
    assert as_embeddings(BaseModelOutputWithPooling(pooler_output=x)) is x
    assert as_embeddings((x, None)) is x
    with pytest.raises(TypeError):
        as_embeddings({"foo": x})
    with pytest.raises(ValueError, match="batch, dim"):
        as_embeddings(torch.randn(3))


# ---------------------------------------------------------------------------------------------------------- zero-shot

COLOUR_CLASSES = {
    "crimson": (255, 0, 0),
    "emerald": (0, 255, 0),
    "azure": (0, 0, 255),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "amber": (255, 255, 0),
}


class SolidColourDualEncoder(torch.nn.Module):
    """A rigged dual encoder: an image embeds as its mean normalized pixel; a prompt as the vector of its class word.

    With ``vectors[k]`` = the normalized pixel value of class ``k``'s colour, every solid-colour image is closest to
    its own class, so the zero-shot accuracy must be exactly 1.
    """

    def __init__(self, token_ids: list[int], vectors: torch.Tensor):
        super().__init__()
        self.token_ids = token_ids
        self.register_buffer("vectors", vectors)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device and dtype

    def get_image_features(self, pixel_values):
        return pixel_values.mean(dim=(2, 3))

    def get_text_features(self, input_ids, attention_mask=None):
        rows = []
        for row in input_ids.tolist():
            hits = [k for k, token in enumerate(self.token_ids) if token in row]
            assert len(hits) == 1, "every prompt names exactly one class"
            rows.append(self.vectors[hits[0]])
        return BaseModelOutputWithPooling(pooler_output=torch.stack(rows))


@pytest.fixture(scope="module")
def colour_setup():
    names = list(COLOUR_CLASSES)
    tokenizer = small_clip_tokenizer([f"a photo of a {n}." for n in names])
    processor = build_processor(tokenizer, image_size=16)
    solid = [Image.new("RGB", (24, 20), rgb) for rgb in COLOUR_CLASSES.values()]
    vectors = processor.image_processor(images=solid, return_tensors="pt")["pixel_values"].mean(dim=(2, 3))
    token_ids = [tokenizer.convert_tokens_to_ids(f"{n}</w>") for n in names]
    assert tokenizer.unk_token_id not in token_ids
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    labels = [k % len(names) for k in range(18)]
    dataset = Dataset.from_dict({"image": [solid[k] for k in labels], "label": labels}, features=features)
    return SimpleNamespace(names=names, processor=processor, vectors=vectors, token_ids=token_ids, dataset=dataset)


def test_zero_shot_is_perfect_on_a_rigged_model(colour_setup):
    s = colour_setup
    model = SolidColourDualEncoder(s.token_ids, s.vectors)
    templates = ["a photo of a {}.", "{}"]
    result = evaluate_zero_shot(model, s.processor, s.dataset, templates=templates, batch_size=4, progress=False)
    assert result == {
        "accuracy": 1.0, "top1_accuracy": 1.0, "top5_accuracy": 1.0, "num_examples": 18, "num_classes": 6,
        "num_templates": 2,
    }  # fmt: skip
    # The class weights are unit vectors in class order.
    weights = zero_shot_classifier(model, s.processor.tokenizer, s.names, templates)
    torch.testing.assert_close(weights, F.normalize(s.vectors, dim=-1))

    # Shifting every class vector by one class makes every top-1 prediction wrong.
    shifted = SolidColourDualEncoder(s.token_ids, s.vectors.roll(1, dims=0))
    result = evaluate_zero_shot(shifted, s.processor, s.dataset, templates=templates, top_k=[1], progress=False)
    assert result["top1_accuracy"] == 0.0 and "top5_accuracy" not in result


def test_zero_shot_on_a_tiny_random_clip(tiny_clip, processor, demo):
    test = demo.dataset["test"]
    result = evaluate_zero_shot(tiny_clip, processor, test, templates=demo.templates, batch_size=10, progress=False)
    assert result["num_examples"] == 24 and result["num_classes"] == 16
    assert 0.0 <= result["top1_accuracy"] <= result["top5_accuracy"] <= 1.0
    assert result["accuracy"] == result["top1_accuracy"]
    # Streaming (IterableDataset) and a truncated run agree with the in-memory dataset.
    streamed = evaluate_zero_shot(
        tiny_clip, processor, test.to_iterable_dataset(), templates=demo.templates, progress=False
    )
    assert streamed == result
    partial = evaluate_zero_shot(tiny_clip, processor, test, templates=demo.templates, max_examples=7, progress=False)
    assert partial["num_examples"] == 7


def test_zero_shot_on_a_tiny_random_siglip_pads_to_max_length(processor, demo):
    from transformers import SiglipConfig, SiglipModel

    tokenizer = processor.tokenizer
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    text.update(num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    vision.update(num_attention_heads=2)
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    lengths = []
    original = model.get_text_features
    model.get_text_features = lambda **kw: lengths.append(kw["input_ids"].shape[1]) or original(**kw)
    result = evaluate_zero_shot(model, processor, demo.dataset["test"], templates=demo.templates, progress=False)
    assert set(lengths) == {64}  # SigLIP text towers expect max-length padding, as in the transformers pipeline
    assert 0.0 <= result["top1_accuracy"] <= result["top5_accuracy"] <= 1.0


def test_zero_shot_rejects_bad_input(tiny_clip, processor, demo):
    test = demo.dataset["test"]
    with pytest.raises(ValueError, match="not found"):
        evaluate_zero_shot(tiny_clip, processor, test, label_column="category", progress=False)
    with pytest.raises(ValueError, match="class_names is empty"):
        evaluate_zero_shot(tiny_clip, processor, test, class_names=[], progress=False)
    with pytest.raises(ValueError, match="ClassLabel"):
        evaluate_zero_shot(tiny_clip, processor, test, label_column="caption", progress=False)
    with pytest.raises(ValueError, match="placeholder"):
        evaluate_zero_shot(tiny_clip, processor, test, templates=["a photo"], progress=False)
    unlabelled = test.cast_column("label", Value("int64")).map(lambda ex: {"label": -1})
    with pytest.raises(ValueError, match="unlabelled"):
        evaluate_zero_shot(tiny_clip, processor, unlabelled, class_names=demo.class_names, progress=False)
    with pytest.raises(ValueError, match="processor has no tokenizer"):
        evaluate_zero_shot(tiny_clip, processor.image_processor, test, progress=False)


def test_saved_processor_serves_the_zero_shot_pipeline(tiny_clip, processor, demo, tmp_path):
    tiny_clip.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    ranked = classifier(demo.dataset["test"][0]["image"], candidate_labels=demo.class_names[:4])
    assert sorted(r["label"] for r in ranked) == sorted(demo.class_names[:4])
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------------- segmentation


class RedDetector(torch.nn.Module):
    """Rigged segmenter: class 1 where the (4x4-pooled) red channel is positive, at 1/4 of the input resolution."""

    config = SimpleNamespace(num_labels=2, id2label={0: "background", 1: "red"})

    def forward(self, pixel_values):
        red = F.avg_pool2d(pixel_values[:, :1], 4)
        return SemanticSegmenterOutput(logits=torch.cat([torch.zeros_like(red), red], dim=1))


def _red_split_dataset(band_label: int):
    """Images red in columns [0, split), masks 1 there, except a band [split - 4, split) labelled ``band_label``."""
    images, masks = [], []
    for split in (4, 12, 16, 28):  # vertical boundaries on the 4-pixel grid of the logits: upsampling is exact
        image = np.zeros((32, 32, 3), dtype=np.uint8)
        image[:, :split, 0] = 255
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[:, :split] = 1
        mask[:, split - 4 : split] = band_label
        images.append(Image.fromarray(image))
        masks.append(Image.fromarray(mask))
    return Dataset.from_dict({"image": images, "annotation": masks}).cast_column("annotation", ImageFeature())


def test_segmentation_is_perfect_on_a_rigged_model():
    processor = SegformerImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # The red band is predicted as class 1; a reference that says 255 there must not count it.
    dataset = _red_split_dataset(band_label=255)
    assert find_mask_column(dataset) == "annotation"
    result = evaluate_segmentation(RedDetector(), processor, dataset, batch_size=3, progress=False)
    assert result["mean_iou"] == 1.0 and result["overall_accuracy"] == 1.0 and result["mean_accuracy"] == 1.0
    assert result["per_category_iou"] == {"background": 1.0, "red": 1.0}
    assert result["num_examples"] == 4 and result["num_labels"] == 2
    # The same band labelled background is wrong: 4 columns x 32 rows x 4 images out of 32 x 32 x 4 pixels.
    result = evaluate_segmentation(RedDetector(), processor, _red_split_dataset(band_label=0), progress=False)
    assert result["overall_accuracy"] == pytest.approx(1 - 4 / 32)
    # red: reference columns 0+8+12+24 = 44, predicted 4+12+16+28 = 60 (a superset): IoU = 44 / 60.
    assert result["per_category_iou"]["red"] == pytest.approx(44 / 60)


def test_segmentation_on_an_ade20k_style_image_folder(tmp_path):
    """imagefolder with metadata.jsonl pairing each image with an annotation PNG (ADE20K layout)."""
    folder = tmp_path / "ade" / "validation"
    folder.mkdir(parents=True)
    rows = []
    for index, example in enumerate(_red_split_dataset(band_label=255)):
        example["image"].save(folder / f"img_{index}.png")
        example["annotation"].save(folder / f"ann_{index}.png")
        rows.append(json.dumps({"file_name": f"img_{index}.png", "annotation_file_name": f"ann_{index}.png"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = load_image_dataset(tmp_path / "ade", "validation")
    assert len(dataset) == 4 and find_mask_column(dataset) == "annotation"
    processor = SegformerImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    result = evaluate_segmentation(RedDetector(), processor, dataset, progress=False)
    assert result["mean_iou"] == 1.0 and result["num_examples"] == 4


def test_segmentation_on_tiny_segformer_with_crop_processor(tiny_segformer, processor, demo):
    # A CLIP processor center-crops; evaluation must squash instead so predictions line up with the masks.
    result = evaluate_segmentation(tiny_segformer, processor.image_processor, demo.dataset["test"], progress=False)
    assert 0.0 <= result["mean_iou"] <= 1.0 and 0.0 <= result["overall_accuracy"] <= 1.0
    assert list(result["per_category_iou"]) == ["background", "circle", "square", "triangle", "cross"]
    assert result["num_examples"] == 24
    with pytest.raises(ValueError, match="not found"):
        evaluate_segmentation(tiny_segformer, processor.image_processor, demo.dataset["test"], mask_column="gt")


# ------------------------------------------------------------------------------------------------- data loading / CLI


def test_load_image_dataset_from_folders_and_files(demo, tmp_path):
    demo.save_to_disk(tmp_path / "saved")
    assert len(load_image_dataset(tmp_path / "saved", "validation")) == 4
    with pytest.raises(ValueError, match="available"):
        load_image_dataset(tmp_path / "saved", "dev")
    demo.dataset["test"].to_parquet(str(tmp_path / "test.parquet"))
    from_parquet = load_image_dataset(tmp_path / "test.parquet", "test")
    assert np.array_equal(np.asarray(from_parquet[3]["image"]), np.asarray(demo.dataset["test"][3]["image"]))
    with pytest.raises(FileNotFoundError):
        load_image_dataset(tmp_path / "nothing" / "here", "test")


def _imagenet_style_folder(demo, root):
    """root/val/<class folder>/<n>.png, the ImageNet layout."""
    test = demo.dataset["test"]
    for index, example in enumerate(test):
        folder = root / "val" / f"class_{example['label']:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        example["image"].save(folder / f"{index}.png")
    return sorted(p.name for p in (root / "val").iterdir())


def test_cli_zero_shot_end_to_end(tiny_clip, processor, demo, tmp_path, capsys):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_clip.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    demo.save_to_disk(data_dir)
    output = tmp_path / "results" / "zero_shot.json"
    argv = ["zero-shot", "--model", str(model_dir), "--data", str(data_dir), "--split", "test", "--no-progress"]
    assert main([*argv, "--output", str(output), "--batch-size", "7"]) == 0
    written = json.loads(output.read_text())
    printed = json.loads(capsys.readouterr().out)
    assert written == printed
    assert written["num_examples"] == 24 and written["num_classes"] == 16
    assert written["num_templates"] == len(demo.templates)  # templates came from the demo metadata
    assert 0.0 <= written["top1_accuracy"] <= written["top5_accuracy"] <= 1.0
    expected = evaluate_zero_shot(tiny_clip, processor, demo.dataset["test"], templates=demo.templates, progress=False)
    assert written["top1_accuracy"] == pytest.approx(expected["top1_accuracy"])

    # ImageNet-style folder with class names from a file and templates on the command line.
    folders = _imagenet_style_folder(demo, tmp_path / "imagenet")
    names_file = tmp_path / "classnames.txt"
    names_file.write_text("\n".join(demo.class_names[int(f[-2:])] for f in folders))
    argv = ["zero-shot", "--model", str(model_dir), "--data", str(tmp_path / "imagenet"), "--split", "validation"]
    assert main([*argv, "--class-names", str(names_file), "--templates", "a photo of a {}.", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 24 and result["num_templates"] == 1

    # Bad input: a clear message and exit code 2.
    assert (
        main([*argv[:-2], "--split", "test", "--data", str(data_dir), "--label-column", "nope", "--no-progress"]) == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["zero-shot", "--model", str(model_dir), "--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["zero-shot", "--model", str(tmp_path / "no_model"), "--data", str(data_dir), "--no-progress"]) == 2
    assert "model folder" in capsys.readouterr().err
    assert main(["zero-shot", "--model", str(data_dir), "--data", str(data_dir), "--no-progress"]) == 2
    assert "config.json" in capsys.readouterr().err
    vision = CGSPNVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    CGSPNVisionModel(vision).save_pretrained(tmp_path / "vision_only")
    assert main(["zero-shot", "--model", str(tmp_path / "vision_only"), "--data", str(data_dir), "--no-progress"]) == 2
    assert "vision-only model (cgspn_vision_model)" in capsys.readouterr().err
    # A hub id with HF_HUB_OFFLINE=1 (set in conftest) and no cached copy: a clear message, no retries.
    assert main(["zero-shot", "--model", str(model_dir), "--data", "nobody/no-such-dataset", "--no-progress"]) == 2
    assert "Offline" in capsys.readouterr().err


def test_cli_segmentation_end_to_end(tiny_segformer, demo, tmp_path, capsys):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_segformer.save_pretrained(model_dir)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    demo.save_to_disk(data_dir)
    argv = ["segmentation", "--model", str(model_dir), "--data", str(data_dir), "--split", "test", "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "seg.json")]) == 0
    result = json.loads((tmp_path / "seg.json").read_text())
    assert result["task"] == "segmentation" and result["num_examples"] == 24 and result["num_labels"] == 5
    assert 0.0 <= result["mean_iou"] <= 1.0
    assert all(v is None or 0.0 <= v <= 1.0 for v in result["per_category_iou"].values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in result.values())
    capsys.readouterr()


# --------------------------------------------------------------------------------------- the C-GSPN models themselves


def test_cli_on_saved_cgspn_models(processor, demo, tmp_path, capsys):
    """`cgspn-eval` loads saved C-GSPN CLIP and segmentation models through the Auto classes."""
    from cgspn import CGSPNConfig, CGSPNForSemanticSegmentation, CGSPNModel, CGSPNVisionConfig

    tokenizer = processor.tokenizer
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, patch_size=8)
    vision.update(image_size=32, pooling="mean")
    text = dict(model_type="clip_text_model", hidden_size=32, intermediate_size=48, num_hidden_layers=1)
    text.update(num_attention_heads=4, vocab_size=len(tokenizer), max_position_embeddings=32)
    text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    text.update(pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CGSPNModel(CGSPNConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(
        tmp_path / "clip"
    )
    processor.save_pretrained(tmp_path / "clip")
    seg_config = CGSPNVisionConfig(**vision, num_labels=5, id2label=demo.segmentation_labels)
    CGSPNForSemanticSegmentation(seg_config).save_pretrained(tmp_path / "seg")
    processor.image_processor.save_pretrained(tmp_path / "seg")
    demo.save_to_disk(tmp_path / "data")

    common = ["--data", str(tmp_path / "data"), "--split", "test", "--no-progress"]
    assert main(["zero-shot", "--model", str(tmp_path / "clip"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 24 and 0.0 <= result["top1_accuracy"] <= result["top5_accuracy"] <= 1.0
    assert main(["segmentation", "--model", str(tmp_path / "seg"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["per_category_iou"]) == ["background", "circle", "square", "triangle", "cross"]
    assert 0.0 <= result["mean_iou"] <= 1.0


def test_one_data_layer_and_one_set_of_templates():
    """Evaluation and training load without the demo; the demo's captions and zero-shot prompts are the same
    templates as evaluation's default (defined once, in `cgspn.data`)."""
    import subprocess
    import sys

    code = "import sys, cgspn.evaluation, cgspn.training, cgspn.conversion; print('cgspn.demo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    import cgspn.data
    import cgspn.demo
    import cgspn.evaluation

    assert cgspn.demo.DEFAULT_TEMPLATES is cgspn.evaluation.DEFAULT_TEMPLATES is cgspn.data.DEFAULT_TEMPLATES
    demo = cgspn.demo.make_shapes_dataset(num_train=4, num_validation=1, num_test=1, image_size=16)
    assert demo.templates == list(cgspn.data.DEFAULT_TEMPLATES)
