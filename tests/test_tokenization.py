"""Offline CLIP tokenizers and processors."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, CLIPProcessor, CLIPTokenizer

from cgspn import tokenization
from cgspn.tokenization import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_processor,
    bytes_to_unicode,
    clip_tokenizer_from_open_clip_vocab,
    small_clip_tokenizer,
)

SENTENCES = [
    "a photo of a cat.",
    "A RED Circle   on a striped background!",
    "It's 3.14 o'clock, isn't it?",
    "naïve café déjà vu",
    "x" * 5 + " supercalifragilistic " + "word " * 90,  # longer than the context: truncated
]
CAPTIONS = [f"a photo of a {c} {s}." for c in ("red", "green", "blue") for s in ("circle", "square", "triangle")]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return clip_tokenizer_from_open_clip_vocab()


def test_full_clip_tokenizer_matches_open_clip(clip_tokenizer):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.get_tokenizer("ViT-B-32")(SENTENCES)  # (N, 77), padded with 0
    ours = clip_tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    mask = ours["attention_mask"].bool()
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.bos_token_id == 49406 and clip_tokenizer.eos_token_id == 49407
    assert torch.equal(ours["input_ids"][mask], reference[mask])
    assert bool((reference[~mask] == 0).all())  # open_clip pads with 0, we pad with <|endoftext|>
    assert bool((ours["input_ids"][~mask] == clip_tokenizer.pad_token_id).all())
    assert mask[-1].all()  # the long sentence fills the whole context and still ends with EOS
    assert ours["input_ids"][-1, -1].item() == 49407


def test_byte_table_matches_open_clip():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    table = bytes_to_unicode()
    assert list(table.items()) == list(open_clip_tokenizer.bytes_to_unicode().items())
    assert len(set(table.values())) == 256


def test_full_clip_tokenizer_round_trips_through_auto_tokenizer(clip_tokenizer, tmp_path):
    clip_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, CLIPTokenizer)
    assert loaded(SENTENCES)["input_ids"] == clip_tokenizer(SENTENCES)["input_ids"]
    assert loaded.decode(loaded("a photo of a cat.")["input_ids"], skip_special_tokens=True) == "a photo of a cat ."
    assert loaded.model_max_length == 77


def test_missing_open_clip_gives_a_clear_error(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        tokenization.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "open_clip" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        clip_tokenizer_from_open_clip_vocab()
    with pytest.raises(FileNotFoundError):
        clip_tokenizer_from_open_clip_vocab(bpe_path=tmp_path / "missing.txt.gz")


def test_small_tokenizer_has_clip_format_and_whole_word_tokens(tmp_path):
    tokenizer = small_clip_tokenizer(CAPTIONS)
    assert 514 < len(tokenizer) < 600
    vocab = tokenizer.get_vocab()
    assert vocab[BOS_TOKEN] == len(tokenizer) - 2 and vocab[EOS_TOKEN] == len(tokenizer) - 1
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.tokenize("a photo of a red circle.") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "red</w>",
        "circle</w>",
        ".</w>",
    ]
    # Lowercased, and unseen words/characters still encode (byte fallback, no unknown tokens in the middle).
    assert tokenizer("A RED Circle")["input_ids"] == tokenizer("a red circle")["input_ids"]
    ids = tokenizer("zebra ☃")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1] and len(ids) > 4
    batch = tokenizer(["a red circle", "a photo of a blue square."], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["attention_mask"][0, -1] == 0

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(CAPTIONS)["input_ids"] == tokenizer(CAPTIONS)["input_ids"]
    assert loaded.model_max_length == 32


def test_small_tokenizer_respects_vocab_size_and_rejects_bad_input():
    assert len(small_clip_tokenizer(CAPTIONS, vocab_size=520)) == 520
    with pytest.raises(ValueError, match="non-empty"):
        small_clip_tokenizer(["", "   "])
    with pytest.raises(ValueError, match="vocab_size"):
        small_clip_tokenizer(CAPTIONS, vocab_size=100)


def test_processor_saves_and_loads_with_auto_classes(tmp_path):
    processor = build_processor(small_clip_tokenizer(CAPTIONS), image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert isinstance(processor, CLIPProcessor)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.full((48, 80, 3), 255, dtype=np.uint8))  # non-square, white
    loaded = AutoProcessor.from_pretrained(tmp_path)
    out = loaded(images=[image, image], text=["a red circle", "a blue square"], return_tensors="pt", padding=True)
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert torch.allclose(out["pixel_values"], torch.ones(()))  # (1 - 0.5) / 0.5
    assert out["input_ids"].shape[0] == 2
    assert AutoImageProcessor.from_pretrained(tmp_path).crop_size == {"height": 32, "width": 32}
    assert (
        AutoTokenizer.from_pretrained(tmp_path)("a red circle")["input_ids"]
        == processor.tokenizer("a red circle")["input_ids"]
    )


def test_processor_squash_mode_keeps_the_whole_image():
    processor = build_processor(small_clip_tokenizer(CAPTIONS), image_size=16, resize_mode="squash")
    left_red = np.zeros((20, 60, 3), dtype=np.uint8)
    left_red[:, :30, 0] = 255
    pixels = processor(images=Image.fromarray(left_red), return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, 16, 16)
    assert pixels[0, :, :7].mean() > 1 and pixels[0, :, 9:].mean() < -1  # both halves survive: no crop


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"resize_mode": "pad"}, "resize_mode"), ({"image_size": 0}, "image_size"), ({"mean": (0.5, 0.5)}, "3 channels")],
)
def test_processor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_processor(CLIPTokenizer(), **kwargs)
