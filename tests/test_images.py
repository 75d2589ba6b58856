"""Image decoding (issue 16): high-bit-depth grayscale keeps its brightness, damaged files are named."""

import io

import numpy as np
import pytest
from PIL import Image

from cgspn.data import build_image_processor, load_image_dataset, prepare_dataset
from cgspn.data.decoding import decode_image, to_rgb
from tests.test_training_utils import random_images


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("I;16", 40000, 156), ("I", 40000, 156), ("I", 200, 200), ("F", 0.5, 128), ("L", 77, 77)],
)
def test_to_rgb_rescales_high_bit_depth_grayscale(mode, value, expected):
    image = Image.new(mode, (4, 3), value)
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (3, 4, 3) and (rgb == expected).all()


def test_sixteen_bit_png_trains_at_its_brightness(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    gray = np.full((32, 32), 20000, dtype=np.uint16)  # 30% grey: convert("RGB") alone made it 255 (white)
    Image.fromarray(gray).save(folder / "gray16.png")
    random_images(1)[0].save(folder / "rgb.png")
    processor = build_image_processor(image_size=32, mean=[0.0] * 3, std=[1.0] * 3)
    dataset = prepare_dataset(load_image_dataset(str(folder)), processor, 32)
    pixels = {float(dataset[i]["pixel_values"].mean()) for i in range(2)}
    assert any(abs(value - 20000 / 65535) < 0.01 for value in pixels), pixels


def test_truncated_image_error_names_the_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    random_images(1)[0].save(folder / "good.jpg")
    random_images(1, seed=1)[0].save(folder / "broken.jpg")
    data = (folder / "broken.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])
    dataset = prepare_dataset(load_image_dataset(str(folder)), build_image_processor(image_size=32), 32)
    with pytest.raises(ValueError, match=r"Cannot decode image .*broken\.jpg"):
        [dataset[i] for i in range(len(dataset))]


def test_decode_image_accepts_stored_bytes_and_images():
    image = random_images(1)[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_image({"bytes": buffer.getvalue(), "path": None})
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert decode_image(image) is image
    with pytest.raises(ValueError, match="an image stored without a file name"):
        decode_image({"bytes": b"not an image", "path": None})
