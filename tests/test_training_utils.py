"""Shared helpers of the training tests: tiny teachers/students and small generated image datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cgspn import CGSPNVisionConfig, CGSPNVisionModel
from cgspn.conversion import student_from_teacher

IMAGE_SIZE = 32


@pytest.fixture
def single_thread():
    """One intra-op thread: tiny CPU models run 10x slower with 2 threads when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_teacher(num_layers: int = 4, hidden: int = 32, seed: int = 0, **overrides) -> CGSPNVisionModel:
    """A random all-attention teacher tower with position embeddings (what conversion's load_teacher returns)."""
    torch.manual_seed(seed)
    settings = {"pooling": "mean", **overrides}
    config = CGSPNVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        patch_size=4,
        image_size=IMAGE_SIZE,
        propagation_channels=8,
        attention_layer_indices=list(range(num_layers)),
        use_position_embeddings=True,
        initializer_range=0.2,  # O(1) features: random teachers with the default 0.02 give ~1e-5 targets
        **settings,
    )
    return CGSPNVisionModel(config).eval()


def tiny_pair(num_layers: int = 4, hidden: int = 32, seed: int = 0, keep_attention=(), **overrides):
    teacher = tiny_teacher(num_layers, hidden, seed, **overrides)
    torch.manual_seed(seed + 1)
    return teacher, student_from_teacher(teacher, keep_attention)


def random_images(count: int, size: int = 40, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
        smooth = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
        noise = rng.integers(0, 30, size=smooth.shape, dtype=np.uint8)
        images.append(Image.fromarray(smooth + noise))
    return images


def image_dataset(count: int = 32, seed: int = 0, captions: bool = True):
    from datasets import Dataset, Image

    data = {"image": random_images(count, seed=seed)}
    if captions:
        data["caption"] = [f"image {i}" for i in range(count)]
    return Dataset.from_dict(data).cast_column("image", Image())


def saved_dataset(path: Path, count: int = 32, seed: int = 0) -> Path:
    from datasets import DatasetDict

    DatasetDict({"train": image_dataset(count, seed)}).save_to_disk(str(path))
    return path
