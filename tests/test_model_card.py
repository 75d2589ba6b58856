"""Model cards: hub metadata parses offline and every usage snippet runs against a saved tiny model."""

import re

import pytest
import torch
from huggingface_hub import ModelCard

from cgspn import CGSPNConfig, CGSPNModel, CGSPNVisionConfig, CGSPNVisionModel
from cgspn.model_card import write_model_card
from cgspn.tokenization import build_processor, small_clip_tokenizer
from tests.helpers import tiny_text_config

VISION = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=8, image_size=32
)


def saved_clip(folder):
    tokenizer = small_clip_tokenizer(["a red square", "a blue circle"], vocab_size=560)
    text = tiny_text_config(tokenizer)
    config = CGSPNConfig(
        vision_config={**VISION, "attention_layer_indices": [1]},
        text_config=text,
        projection_dim=8,
        loss_type="softmax",
    )
    model = CGSPNModel(config)
    model.save_pretrained(folder)
    build_processor(tokenizer, image_size=32).save_pretrained(folder)
    return model


def python_snippets(card_text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


def run_snippets(card_text: str) -> dict:
    namespace: dict = {}
    for snippet in python_snippets(card_text):
        exec(compile(snippet, "<model card>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("kind", ["clip", "vision"])
def test_card_metadata_and_snippets_run(tmp_path, kind, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets load the folder by its name, as from the folder's parent
    folder = tmp_path / "model"
    if kind == "clip":
        model = saved_clip(folder)
    else:
        model = CGSPNVisionModel(CGSPNVisionConfig(**VISION))
        model.save_pretrained(folder)
    path = write_model_card(
        model, folder, teacher="timm/ViT-SO400M-14-SigLIP-384", datasets=["demo-shapes"], results={"top-1": 0.875}
    )
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == ("zero-shot-image-classification" if kind == "clip" else "image-feature-extraction")
    assert "cgspn" in data["tags"] and data["license"] == "apache-2.0"
    assert data["base_model"] == "timm/ViT-SO400M-14-SigLIP-384"
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.875
    snippets = python_snippets(card.text)
    assert len(snippets) == (3 if kind == "clip" else 2)
    namespace = run_snippets(card.text)
    printed = capsys.readouterr().out
    assert "torch.Size([1, " in printed
    assert type(namespace["segmenter"]).__name__ == "CGSPNForSemanticSegmentation"
    assert namespace["segmenter"].config.num_labels == 3
    vision = getattr(namespace["model"], "vision_model", namespace["model"])
    for name, tensor in vision.state_dict().items():
        assert torch.equal(namespace["segmenter"].vision_model.state_dict()[name], tensor), name
    if kind == "clip":
        assert "'label': 'a red square'" in printed or "'label': 'a blue circle'" in printed
