"""The procedural demo dataset: determinism, content, masks, save/load."""

import numpy as np
import pytest
from datasets import ClassLabel, load_from_disk
from datasets import Image as ImageFeature

from cgspn.demo import IGNORE_INDEX, class_names_for, load_demo_data, make_shapes_dataset, render_example
from cgspn.demo.data import COLOURS, SHAPES

SMALL = {"num_train": 24, "num_validation": 8, "num_test": 16, "image_size": 40}


@pytest.fixture(scope="module")
def demo():
    return make_shapes_dataset(seed=3, **SMALL)


def _arrays(split):
    return [(np.asarray(ex["image"]), np.asarray(ex["mask"]), ex["label"], ex["caption"]) for ex in split]


def test_same_seed_same_data_other_seed_other_data(demo):
    again = make_shapes_dataset(seed=3, **SMALL)
    for name in ("train", "validation", "test"):
        for a, b in zip(_arrays(demo.dataset[name]), _arrays(again.dataset[name]), strict=True):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    other = make_shapes_dataset(seed=4, **SMALL)
    first, second = _arrays(demo.dataset["train"]), _arrays(other.dataset["train"])
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_features_splits_and_vocabulary(demo):
    assert {k: len(v) for k, v in demo.dataset.items()} == {"train": 24, "validation": 8, "test": 16}
    features = demo.dataset["train"].features
    assert isinstance(features["image"], ImageFeature) and isinstance(features["mask"], ImageFeature)
    assert isinstance(features["label"], ClassLabel) and features["label"].names == demo.class_names
    assert demo.class_names == class_names_for(
        ["circle", "square", "triangle", "cross"], ["red", "green", "blue", "yellow"]
    )
    assert len(set(demo.class_names)) == 16
    assert demo.segmentation_labels == {0: "background", 1: "circle", 2: "square", 3: "triangle", 4: "cross"}
    assert all(t.count("{}") == 1 for t in demo.templates)
    # Labels are balanced: 24 train examples over 16 classes -> every class once or twice.
    counts = np.bincount(demo.dataset["train"]["label"], minlength=16)
    assert counts.min() == 1 and counts.max() == 2


def test_examples_are_consistent(demo):
    names = demo.class_names
    shapes = demo.dataset["train"].features["shape"].names
    colours = demo.dataset["train"].features["colour"].names
    for ex in demo.dataset["train"]:
        image, mask = np.asarray(ex["image"]), np.asarray(ex["mask"])
        assert image.shape == (40, 40, 3) and image.dtype == np.uint8
        assert mask.shape == (40, 40) and ex["mask"].mode == "L"
        # The mask holds background and exactly the labelled shape; 255 (ignore) never appears.
        assert set(np.unique(mask).tolist()) == {0, ex["shape"] + 1}
        assert IGNORE_INDEX not in mask
        assert 0.03 < (mask > 0).mean() < 0.7
        assert names[ex["label"]] == f"{colours[ex['colour']]} {shapes[ex['shape']]}"
        assert names[ex["label"]] in ex["caption"]
        # The object's mean colour is nearest to its class colour among all colours.
        mean_rgb = image[mask > 0].astype(float).mean(axis=0)
        nearest = min(COLOURS, key=lambda c: np.linalg.norm(mean_rgb - np.asarray(COLOURS[c])))
        assert nearest == colours[ex["colour"]]


@pytest.mark.parametrize("size", [16, 33, 128])
def test_render_any_size_and_every_shape(size):
    rng = np.random.default_rng(0)
    for value, shape in enumerate(SHAPES, start=1):
        image, mask = render_example(rng, shape, "blue", image_size=size, mask_value=value)
        assert image.size == (size, size) and mask.size == (size, size)
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values == {0, value}


def test_ring_has_a_hole():
    _, mask = render_example(np.random.default_rng(1), "ring", "red", image_size=64, scale_range=(0.4, 0.4))
    mask = np.asarray(mask)
    ys, xs = np.nonzero(mask)
    assert mask[int(ys.mean()), int(xs.mean())] == 0  # center of the ring is background


def test_save_load_round_trip(demo, tmp_path):
    demo.save_to_disk(tmp_path / "demo")
    loaded = load_demo_data(tmp_path / "demo")
    assert loaded.class_names == demo.class_names and loaded.templates == demo.templates
    assert loaded.segmentation_labels == demo.segmentation_labels
    for a, b in zip(_arrays(demo.dataset["test"]), _arrays(loaded.dataset["test"]), strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    # Plain datasets can read it too, and image bytes are embedded (no paths to external files).
    plain = load_from_disk(str(tmp_path / "demo"))
    raw = plain["test"].cast_column("image", ImageFeature(decode=False))[0]["image"]
    assert raw["bytes"] and raw["path"] is None


def test_load_demo_data_needs_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cgspn_demo\.json"):
        load_demo_data(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shapes": ["circle", "blob"]}, "unknown shape"),
        ({"colours": ["red", "mauve"]}, "unknown colours"),
        ({"shapes": []}, "non-empty"),
        ({"colours": ["red", "red"]}, "duplicate"),
        ({"templates": ["no placeholder"]}, "placeholder"),
        ({"templates": []}, "placeholder"),
        ({"num_test": -1}, ">= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes_dataset(**{"num_train": 1, "num_validation": 1, "num_test": 1, **kwargs})


def test_render_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="image_size"):
        render_example(rng, "circle", "red", image_size=4)
    with pytest.raises(ValueError, match="mask_value"):
        render_example(rng, "circle", "red", mask_value=255)
