"""Train the demo's small CLIP-style teacher (a transformers `SiglipModel`: ViT with a MAP pooling head, sigmoid
contrastive loss, as the paper's SigLIP teachers) with `Trainer`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from transformers import CLIPProcessor, SiglipConfig, SiglipModel, Trainer, TrainingArguments

from ..tokenization import build_processor, small_clip_tokenizer
from .data import DemoData


@dataclass
class TeacherSettings:
    """Size and schedule of the demo teacher (a 4-block SigLIP-style CLIP at 32 px, patch 4: 64 patches)."""

    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    text_hidden_size: int = 64
    text_layers: int = 2
    patch_size: int = 4
    epochs: float = 80.0
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_text_length: int = 16  # SigLIP text towers pool the last token: always pad to this length


class ContrastiveTrainer(Trainer):
    """`Trainer` for dual encoders: the loss is the model's own contrastive loss (`return_loss=True`)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, return_loss=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


def contrastive_trainer(
    model, train_dataset, output_dir: str | os.PathLike, batch_size: int, learning_rate: float, seed: int, **schedule
) -> ContrastiveTrainer:
    """A `ContrastiveTrainer` with AdamW (weight decay 0.05), 10% warm-up and cosine decay, no checkpoints;
    ``schedule`` sets ``num_train_epochs`` or ``max_steps`` (and any other `TrainingArguments` field)."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.05,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_drop_last=True,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
    )
    args = TrainingArguments(**{**settings, **schedule})
    return ContrastiveTrainer(model=model, args=args, train_dataset=train_dataset)


def demo_processor(data: DemoData, image_size: int, max_text_length: int) -> CLIPProcessor:
    """A CLIP processor whose small tokenizer is trained on the demo's captions and prompts."""
    corpus = list(data.dataset["train"]["caption"])
    corpus += [template.format(name) for template in data.templates for name in data.class_names]
    tokenizer = small_clip_tokenizer(corpus, vocab_size=1024, model_max_length=max_text_length)
    return build_processor(tokenizer, image_size=image_size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")


class TensorDictDataset(torch.utils.data.Dataset):
    """Rows of a dict of equal-length tensors (the demo's images are tiny: encode once, index fast)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


def encode_pairs(processor: CLIPProcessor, dataset, max_text_length: int) -> TensorDictDataset:
    """Pixel values, token ids and attention masks of a whole (image, caption) split."""
    encoded = processor(
        images=list(dataset["image"]),
        text=list(dataset["caption"]),
        padding="max_length",
        max_length=max_text_length,
        truncation=True,
        return_tensors="pt",
    )
    return TensorDictDataset({key: encoded[key] for key in ("pixel_values", "input_ids", "attention_mask")})


class CaptionSampler(torch.utils.data.Dataset):
    """Images with a caption drawn afresh at every access (a seeded random template filled with the class name):
    the text tower learns the class, not one fixed sentence per image."""

    def __init__(
        self, pixel_values: torch.Tensor, labels: list[int], processor: CLIPProcessor, data: DemoData, seed: int
    ):
        self.pixel_values, self.labels = pixel_values, labels
        length = processor.tokenizer.model_max_length
        texts = [template.format(name) for name in data.class_names for template in data.templates]
        encoded = processor.tokenizer(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        shape = (len(data.class_names), len(data.templates), -1)
        self.input_ids, self.attention_mask = (encoded[key].view(shape) for key in ("input_ids", "attention_mask"))
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        label = self.labels[index]
        template = int(torch.randint(self.input_ids.shape[1], (), generator=self.generator))
        return {
            "pixel_values": self.pixel_values[index],
            "input_ids": self.input_ids[label, template],
            "attention_mask": self.attention_mask[label, template],
        }


def build_teacher(processor: CLIPProcessor, image_size: int, settings: TeacherSettings) -> SiglipModel:
    tokenizer = processor.tokenizer
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=settings.text_hidden_size,
            intermediate_size=4 * settings.text_hidden_size,
            projection_size=settings.hidden_size,
            num_hidden_layers=settings.text_layers,
            num_attention_heads=settings.num_attention_heads,
            max_position_embeddings=settings.max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=settings.hidden_size,
            intermediate_size=4 * settings.hidden_size,
            num_hidden_layers=settings.num_hidden_layers,
            num_attention_heads=settings.num_attention_heads,
            image_size=image_size,
            patch_size=settings.patch_size,
        ),
    )
    model = SiglipModel(config)
    # SigLIP's own starting point (temperature 10, bias -10); transformers initializes both to 0
    model.logit_scale.data.fill_(math.log(10.0))
    model.logit_bias.data.fill_(-10.0)
    return model


def train_teacher(
    data: DemoData, output_dir: str | os.PathLike, settings: TeacherSettings, seed: int = 0
) -> tuple[SiglipModel, CLIPProcessor, list[dict]]:
    """Train the teacher on (image, caption) pairs, a caption drawn per access (`CaptionSampler`); returns the
    model, its processor and the Trainer log."""
    image_size = data.dataset["train"][0]["image"].size[0]
    processor = demo_processor(data, image_size, settings.max_text_length)
    torch.manual_seed(seed)
    model = build_teacher(processor, image_size, settings)

    split = data.dataset["train"]
    pixel_values = processor.image_processor(list(split["image"]), return_tensors="pt")["pixel_values"]
    train = CaptionSampler(pixel_values, list(split["label"]), processor, data, seed)
    trainer = contrastive_trainer(
        model, train, output_dir, settings.batch_size, settings.learning_rate, seed, num_train_epochs=settings.epochs
    )
    trainer.train()
    model.eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model, processor, trainer.state.log_history
