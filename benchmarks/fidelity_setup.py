"""Real-image data and from-scratch teachers for the fidelity benchmark (``bench_fidelity.py``).

Data: the handwritten digits the package ships (`cgspn.data.digits`: UCI optical digits, 1797 real 8x8 scans of 10
classes, the copy scikit-learn bundles), split by scikit-learn, upsampled to the benchmark resolution, written as an
image folder (``train/<d>_<name>/*.png``, ``test/<d>_<name>/*.png``) that ``cgspn train --data`` and
``cgspn eval zero-shot --data`` read.

Teachers of the three pooling kinds, trained contrastively on (image, caption) pairs:

* ``siglip``: transformers ``SiglipModel`` (MAP head, sigmoid loss), saved with ``save_pretrained`` + its processor;
* ``clip``: transformers ``CLIPModel`` (class token, softmax loss), saved likewise;
* ``mean``: an open_clip ``CLIP`` with ``pool_type="avg"`` (mean of the patch tokens), saved as an open_clip
  ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel
from transformers.utils import ModelOutput

from cgspn.data.digits import DIGIT_NAMES, DIGIT_TEMPLATES, NUM_DIGITS_TEST, digit_image, load_digits
from cgspn.demo.teacher import contrastive_trainer
from cgspn.tokenization import build_processor, clip_tokenizer_from_open_clip_vocab, small_clip_tokenizer

CLASS_NAMES, TEMPLATES, NUM_TEST = DIGIT_NAMES, DIGIT_TEMPLATES, NUM_DIGITS_TEST
TEACHER_KINDS = ("siglip", "clip", "mean")
MAX_TEXT_LENGTH = 16


@dataclass(frozen=True)
class TeacherSize:
    """Teacher architecture and training budget (``steps * batch_size`` images)."""

    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    text_hidden_size: int
    text_layers: int
    steps: int
    batch_size: int
    learning_rate: float = 2e-3

    @property
    def budget(self) -> int:
        return self.steps * self.batch_size


SIZES = {
    "cpu": TeacherSize(32, 4, 64, 4, 4, 64, 2, steps=1200, batch_size=64),
    "gpu": TeacherSize(64, 8, 192, 6, 6, 128, 3, steps=1500, batch_size=128, learning_rate=1e-3),
    "smoke": TeacherSize(16, 4, 32, 2, 2, 32, 1, steps=4, batch_size=16),  # checks the pipeline runs, in a minute
}


def write_digits(folder: Path, image_size: int, seed: int = 0) -> dict[str, int]:
    """Write the digits as an image folder of ``image_size`` px RGB PNGs; returns the split sizes."""
    from sklearn.model_selection import train_test_split

    ink, labels = load_digits()
    train, test = train_test_split(np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=seed)
    for split, indices in (("train", train), ("test", test)):
        for index in indices:
            target = folder / split / class_folder(labels[index])
            target.mkdir(parents=True, exist_ok=True)
            digit_image(ink[index], image_size).save(target / f"{index:04d}.png")
    return {"train": len(train), "test": len(test)}


def class_folder(label: int) -> str:
    """``"3_three"``: folder names whose sorted order (the label order of ``datasets``' imagefolder) is the digits'."""
    return f"{label}_{CLASS_NAMES[label]}"


def load_split(folder: Path, split: str) -> tuple[list[Image.Image], list[int]]:
    images, labels = [], []
    for label in range(len(CLASS_NAMES)):
        for path in sorted((folder / split / class_folder(label)).glob("*.png")):
            images.append(Image.open(path).convert("RGB"))
            labels.append(label)
    return images, labels


def captions(labels: list[int], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(CLASS_NAMES[label]) for label in labels]


def teacher_tokenizer(kind: str):
    """A small BPE tokenizer for the transformers teachers; open_clip's own CLIP vocabulary for the open_clip one."""
    if kind == "mean":
        return clip_tokenizer_from_open_clip_vocab(model_max_length=MAX_TEXT_LENGTH)
    corpus = [template.format(name) for template in TEMPLATES for name in CLASS_NAMES] * 4
    return small_clip_tokenizer(corpus, vocab_size=600, model_max_length=MAX_TEXT_LENGTH)


class PairDataset(torch.utils.data.Dataset):
    """(pixel_values, input_ids, attention_mask) rows; a fresh caption template per epoch-independent draw."""

    def __init__(self, pixel_values: torch.Tensor, labels: list[int], tokenizer, seed: int):
        self.pixel_values = pixel_values
        self.labels = labels
        self.texts = {
            (label, template): tokenizer(
                template.format(CLASS_NAMES[label]),
                padding="max_length",
                max_length=MAX_TEXT_LENGTH,
                truncation=True,
                return_tensors="pt",
            )
            for label in range(len(CLASS_NAMES))
            for template in TEMPLATES
        }
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        text = self.texts[(self.labels[index], self.rng.choice(TEMPLATES))]
        return {
            "pixel_values": self.pixel_values[index],
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
        }


class OpenClipContrastive(nn.Module):
    """An open_clip ``CLIP`` with open_clip's own ``ClipLoss`` behind a transformers-style forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from open_clip.loss import ClipLoss

        self.model = model
        self.criterion = ClipLoss()

    def forward(self, pixel_values, input_ids, attention_mask=None, return_loss=True) -> ModelOutput:
        image, text, scale = self.model(pixel_values, input_ids)
        return ModelOutput(loss=self.criterion(image, text, scale))


def _text_config(size: TeacherSize, tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden_size,
        intermediate_size=4 * size.text_hidden_size,
        num_hidden_layers=size.text_layers,
        num_attention_heads=max(1, size.text_hidden_size // 32),
        max_position_embeddings=MAX_TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vision_config(size: TeacherSize) -> dict:
    return dict(
        hidden_size=size.hidden_size,
        intermediate_size=4 * size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )


def build_teacher(kind: str, size: TeacherSize, tokenizer) -> nn.Module:
    """A randomly initialized teacher of ``kind`` (see the module docstring)."""
    if kind == "siglip":
        text = {**_text_config(size, tokenizer), "projection_size": size.hidden_size}
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=_vision_config(size)))
        model.logit_scale.data.fill_(math.log(10.0))  # SigLIP's start (transformers initializes 0)
        model.logit_bias.data.fill_(-10.0)
        return model
    if kind == "clip":
        config = CLIPConfig(
            text_config=_text_config(size, tokenizer),
            vision_config=_vision_config(size),
            projection_dim=size.hidden_size,
        )
        return CLIPModel(config)
    if kind == "mean":
        import open_clip

        return OpenClipContrastive(open_clip.CLIP(**open_clip_config(size, tokenizer)))
    raise ValueError(f"Unknown teacher kind {kind!r}; choose one of {TEACHER_KINDS}")


def open_clip_config(size: TeacherSize, tokenizer) -> dict:
    """open_clip ``model_cfg`` of the mean-pooled teacher (a causal text tower pooled at the end token, argmax)."""
    return {
        "embed_dim": size.hidden_size,
        "vision_cfg": {
            "image_size": size.image_size,
            "patch_size": size.patch_size,
            "width": size.hidden_size,
            "layers": size.num_layers,
            "head_width": size.hidden_size // size.num_heads,
            "pool_type": "avg",
            "no_ln_pre": True,
        },
        "text_cfg": {
            "context_length": MAX_TEXT_LENGTH,
            "vocab_size": len(tokenizer),
            "width": size.text_hidden_size,
            "heads": max(1, size.text_hidden_size // 32),
            "layers": size.text_layers,
        },
    }


def train_teacher(kind: str, size: TeacherSize, data: Path, output_dir: Path, seed: int = 0) -> dict:
    """Train a teacher of ``kind`` on the digits' train split; save it to ``output_dir``; return its spec and log."""
    images, labels = load_split(data, "train")
    tokenizer = teacher_tokenizer(kind)
    mean, std = (0.5,) * 3, (0.5,) * 3
    processor = build_processor(tokenizer, image_size=size.image_size, mean=mean, std=std, resize_mode="squash")
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    torch.manual_seed(seed)
    model = build_teacher(kind, size, tokenizer)
    dataset = PairDataset(pixel_values, labels, tokenizer, seed)
    trainer = contrastive_trainer(
        model, dataset, output_dir / "trainer", size.batch_size, size.learning_rate, seed, max_steps=size.steps,
        logging_steps=50, disable_tqdm=True,
    )  # fmt: skip
    trainer.train()
    model.eval().cpu()
    output_dir.mkdir(parents=True, exist_ok=True)
    if kind == "mean":
        from safetensors.torch import save_file

        config = {
            "model_cfg": open_clip_config(size, tokenizer),
            "preprocess_cfg": {"mean": list(mean), "std": list(std), "resize_mode": "squash"},
        }
        (output_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in model.model.state_dict().items()}
        save_file(state, output_dir / "open_clip_model.safetensors")
        processor.save_pretrained(output_dir)  # the tokenizer the converter pairs with the text tower
        spec = f"open_clip:local-dir:{output_dir}"
    else:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        spec = f"hf:{output_dir}"
    return {"spec": spec, "size": asdict(size), "log": trainer.state.log_history}


def main(argv: list[str] | None = None) -> int:
    """``python fidelity_setup.py KIND SIZE DATA OUTPUT``: train one teacher in its own process (transformers'
    ``Trainer`` keeps process-wide accelerate state, so parallel teachers need separate processes); prints its spec."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("kind", choices=TEACHER_KINDS)
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("data", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    info = train_teacher(args.kind, SIZES[args.size], args.data, args.output)
    print(json.dumps({"spec": info["spec"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
