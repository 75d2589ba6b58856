"""Every supported data source loads offline and yields normalized pixel values."""

import io
import json
import tarfile

import datasets
import pytest
import torch

from cgspn.data import (
    build_image_processor,
    collate_pixel_values,
    find_image_column,
    load_image_dataset,
    prepare_dataset,
)
from tests.test_training_utils import image_dataset, random_images

COUNT = 6


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    dataset = image_dataset(COUNT, seed=1)
    dataset.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(root / "saved_dict"))
    (root / "parquet").mkdir()
    dataset.to_parquet(str(root / "parquet" / "part-0.parquet"))
    arrow_files = sorted((root / "saved").glob("*.arrow"))
    (root / "arrow").mkdir()
    (root / "arrow" / "data.arrow").write_bytes(arrow_files[0].read_bytes())
    folder = root / "images"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, image in enumerate(random_images(COUNT, seed=2)):
            image.save(folder / f"img{index}.png")
            metadata.write(json.dumps({"file_name": f"img{index}.png", "caption": f"c{index}"}) + "\n")
    (root / "shards").mkdir()
    for shard in range(2):
        with tarfile.open(root / "shards" / f"shard-{shard}.tar", "w") as tar:
            for index, image in enumerate(random_images(COUNT // 2, seed=3 + shard)):
                for name, payload in ((f"s{shard}_{index}.png", _png(image)), (f"s{shard}_{index}.txt", b"cap")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check(dataset, size=32):
    processor = build_image_processor(image_size=size)
    prepared = prepare_dataset(dataset, processor, size, seed=0, shuffle_buffer=4)
    items = [item for _, item in zip(range(COUNT), prepared, strict=False)]
    assert len(items) == COUNT
    batch = collate_pixel_values(items)
    assert batch["pixel_values"].shape == (COUNT, 3, size, size)
    assert batch["pixel_values"].dtype == torch.float32
    assert -1.0 - 1e-4 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0 + 1e-4
    assert list(items[0]) == ["pixel_values"]


@pytest.mark.parametrize(
    "relative", ["saved", "saved_dict", "parquet", "parquet/part-0.parquet", "arrow", "images", "shards"]
)
def test_each_format_loads(sources, relative):
    dataset = load_image_dataset(sources / relative)
    assert isinstance(dataset, datasets.Dataset)
    _check(dataset)


@pytest.mark.parametrize("relative", ["saved_dict", "parquet", "shards"])
def test_streaming(sources, relative, monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)  # datasets 5+
    dataset = load_image_dataset(sources / relative, streaming=True)
    assert isinstance(dataset, datasets.IterableDataset)
    _check(dataset, size=16)


def test_glob_and_errors(sources):
    assert len(load_image_dataset(str(sources / "shards" / "*.tar"))) == COUNT
    with pytest.raises(FileNotFoundError):
        load_image_dataset(sources / "missing" / "x.parquet")
    with pytest.raises(ValueError, match="Split"):
        load_image_dataset(sources / "saved_dict", split="validation")
    with pytest.raises(ValueError, match="No image column"):
        find_image_column(datasets.Dataset.from_dict({"text": ["a"]}))
    with pytest.raises(ValueError, match="not in the dataset"):
        find_image_column(image_dataset(2), "picture")


def test_path_and_bytes_columns_are_decoded(tmp_path):
    images = random_images(2, seed=9)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    by_path = datasets.Dataset.from_dict({"image": paths})
    by_bytes = datasets.Dataset.from_dict({"image": [{"bytes": _png(image), "path": None} for image in images]})
    for dataset in (by_path, by_bytes):
        item = prepare_dataset(dataset, build_image_processor(image_size=16), 16)[1]
        assert item["pixel_values"].shape == (3, 16, 16)


def test_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="someone/images"):
        load_image_dataset("someone/images")


def test_webdataset_image_column_is_detected(sources):
    assert find_image_column(load_image_dataset(sources / "shards")) == "png"


def test_teacher_processor_is_used_and_resized(tmp_path):
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}).save_pretrained(tmp_path)
    processor = build_image_processor(tmp_path, image_size=40, mean=[0.5] * 3)
    assert type(processor).__name__.startswith("CLIPImageProcessor") and list(processor.image_mean) == [0.5] * 3
    item = prepare_dataset(image_dataset(2), processor, image_size=16)[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="image size"):
        build_image_processor(None)


def test_processor_saved_as_processor_config_is_loaded_and_resized(tmp_path):
    """transformers 5 saves a processor as ``processor_config.json``; it is read with transformers' own loading."""
    from cgspn.data import load_processor, resized_processor
    from cgspn.tokenization import build_processor, small_clip_tokenizer

    tokenizer = small_clip_tokenizer(["a red circle", "a blue square"], vocab_size=600)
    build_processor(tokenizer, image_size=24, mean=(0.5,) * 3, std=(0.5,) * 3).save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and not (tmp_path / "preprocessor_config.json").exists()
    processor = load_processor(tmp_path)
    assert processor.tokenizer is not None
    image_processor = build_image_processor(tmp_path, mean=[0.25] * 3)  # no --image-size needed
    assert list(image_processor.image_mean) == [0.25] * 3 and list(processor.image_processor.image_mean) == [0.5] * 3
    resized = resized_processor(processor, 40, image_processor)
    assert resized.tokenizer is processor.tokenizer and list(resized.image_processor.image_mean) == [0.25] * 3
    image = random_images(1, size=60)[0]
    assert resized(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 40, 40)
    assert processor(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 24, 24)  # left unchanged
    assert load_processor(tmp_path / "nothing") is None
