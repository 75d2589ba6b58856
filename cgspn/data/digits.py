"""Real handwritten digits shipped with the package: the demo's data and the fidelity benchmark's.

The UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), the copy
scikit-learn bundles as ``load_digits``: 1797 scans of 43 writers, each 8x8 pixels of 0..16 ink, 10 classes. Stored in
``digits.u8.gz`` as rows of 65 bytes (label, then the 64 pixels row by row).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_FILE = Path(__file__).with_name("digits.u8.gz")
DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES: tuple[str, ...] = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.")
NUM_DIGITS_TEST = 500  # the held-out test images of the demo and the fidelity benchmark


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(ink, labels)``: (1797, 8, 8) uint8 ink in 0..16 and (1797,) int64 labels (read-only arrays)."""
    rows = np.frombuffer(gzip.decompress(DIGITS_FILE.read_bytes()), dtype=np.uint8).reshape(-1, 65)
    labels = rows[:, 0].astype(np.int64)
    labels.setflags(write=False)  # cached: a caller's edit must not change the next call's result
    return rows[:, 1:].reshape(-1, 8, 8), labels


def digits_split(sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted indices of class-stratified held-out splits of exactly ``sizes`` images each, plus ``"train"`` (the
    rest). Each split takes every class's share of its size, the leftover places going to the largest remainders."""
    if "train" in sizes:
        raise ValueError('digits_split: "train" is the rest of the images; give only the held-out splits\' sizes')
    _, labels = load_digits()
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == label)) for label in range(len(DIGIT_NAMES))]
    splits = {}
    for name, size in sizes.items():
        available = np.array([len(pool) for pool in pools])
        if not 0 <= size <= available.sum():
            raise ValueError(f"split {name!r}: {size} images asked, {available.sum()} left")
        shares = size * available / available.sum()
        counts = np.floor(shares).astype(int)
        counts[np.argsort(counts - shares, kind="stable")[: size - counts.sum()]] += 1
        splits[name] = np.sort(np.concatenate([pool[:count] for pool, count in zip(pools, counts, strict=True)]))
        pools = [pool[count:] for pool, count in zip(pools, counts, strict=True)]
    splits["train"] = np.sort(np.concatenate(pools))
    return splits


def digit_image(ink: np.ndarray, image_size: int) -> Image.Image:
    """One digit as an RGB image of ``image_size`` px (bicubic upsampling; white ink on black). The UCI values count
    ink pixels in 4x4 blocks of a 32x32 bitmap."""
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
