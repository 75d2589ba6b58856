"""Real handwritten digits shipped with the package: the demo's data and the fidelity benchmark's.

The UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), the copy
scikit-learn bundles as ``load_digits``: 1797 scans of 43 writers, each 8x8 pixels of 0..16 ink, 10 classes. Stored in
``digits.u8.gz`` as rows of 65 bytes (label, then the 64 pixels row by row).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_FILE = Path(__file__).with_name("digits.u8.gz")
DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES: tuple[str, ...] = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.")
NUM_DIGITS_TEST = 500  # held out, stratified by class


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(ink, labels)``: (1797, 8, 8) uint8 ink in 0..16 and (1797,) int64 labels."""
    rows = np.frombuffer(gzip.decompress(DIGITS_FILE.read_bytes()), dtype=np.uint8).reshape(-1, 65)
    return rows[:, 1:].reshape(-1, 8, 8), rows[:, 0].astype(np.int64)


def digits_split(num_test: int = NUM_DIGITS_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of a class-stratified ``train``/``test`` split (``num_test`` test images, the same share per class)."""
    _, labels = load_digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(len(DIGIT_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = round(num_test * len(members) / len(labels))
        test.append(members[:count])
        train.append(members[count:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def digit_image(ink: np.ndarray, image_size: int) -> Image.Image:
    """One scan as an RGB image of ``image_size`` px (bicubic upsampling; white ink on black, as scanned)."""
    gray = Image.fromarray((ink.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    return gray.resize((image_size, image_size), Image.BICUBIC).convert("RGB")


__all__ = [
    "DIGITS_FILE",
    "DIGIT_NAMES",
    "DIGIT_TEMPLATES",
    "NUM_DIGITS_TEST",
    "digit_image",
    "digits_split",
    "load_digits",
]
