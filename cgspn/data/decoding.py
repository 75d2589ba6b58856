"""Decoding of stored images into RGB PIL images, with errors that name the file.

`datasets` decodes ``Image`` columns lazily and reports a damaged file without its name, and PIL's ``convert("RGB")``
clips 16-bit and 32-bit grayscale (``I;16``, ``I``) at 255, turning most such images white. `decode_image` opens
the file itself and `to_rgb` rescales high-bit-depth grayscale to 8 bits first.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB; 16-bit (``I;16*``, and ``I`` holding values above 255) and float (``F``, 0..1) grayscale
    are rescaled to 0..255 instead of clipped."""
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0  # 65535 -> 255
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(value: Any) -> Image.Image:
    """A PIL image from what an undecoded `datasets` ``Image`` column holds (``{"bytes", "path"}``), a path, or an
    image; damaged files raise a ``ValueError`` naming the file."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = None, str(value)
    name = path or "an image stored without a file name"
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # PIL: truncated, corrupt or unknown formats
        raise ValueError(f"Cannot decode image {name}: {error}") from error
    return image


__all__ = ["decode_image", "to_rgb"]
