"""Loading evaluation datasets from local folders, files or the hub, through `datasets`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..demo.data import METADATA_FILE

# File suffix -> `datasets` packaged builder.
_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".tar": "webdataset",
}


def load_eval_dataset(
    data: str | os.PathLike,
    split: str = "test",
    config_name: str | None = None,
    streaming: bool = False,
):
    """Load one split of a dataset from wherever it lives.

    Args:
        data: one of
            * a folder written by ``save_to_disk`` (a `DatasetDict` with ``dataset_dict.json``, or a single
              `Dataset`, in which case ``split`` is not used);
            * any other local folder, handed to ``datasets.load_dataset`` (ImageNet-style ``split/class/*.jpg``
              image folders, ``imagefolder`` with ``metadata.jsonl``, parquet shards, ...);
            * a local ``.parquet``/``.arrow``/``.csv``/``.json(l)``/``.tar`` file;
            * a hub dataset id (``HF_HUB_OFFLINE=1`` is honoured by `datasets`: cached copies only).
        split: the split to return.
        config_name: dataset configuration name (hub datasets with several configs).
        streaming: stream instead of downloading/preparing (hub ids and local data files).

    Returns:
        A `datasets.Dataset` (or `IterableDataset` when streaming).
    """
    import datasets

    path = Path(data)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if split not in loaded:
                raise ValueError(f"split {split!r} not in {path}; available: {', '.join(loaded)}")
            return loaded[split]
        if (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return _checked_split(
            lambda: datasets.load_dataset(str(path), name=config_name, split=split, streaming=streaming), data, split
        )
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"cannot load {path}: unsupported file type (expected one of {', '.join(_FILE_BUILDERS)})")
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming)
    if str(data).startswith((".", "/", "~")) or str(data).count("/") > 1:  # a path, not an ``owner/name`` id
        raise FileNotFoundError(f"dataset path {data} does not exist")
    try:
        return _checked_split(
            lambda: datasets.load_dataset(str(data), name=config_name, split=split, streaming=streaming), data, split
        )
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot load hub dataset {data!r}: {error}. Offline (HF_HUB_OFFLINE=1) only datasets already in the "
            "local cache load; otherwise pass a local folder or file."
        ) from error


def _checked_split(load, data, split):
    try:
        return load()
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"cannot load split {split!r} of {data}: {error}") from error
        raise


def demo_metadata(data: str | os.PathLike) -> dict | None:
    """Class names/templates saved next to a demo dataset (`cgspn.demo.DemoData.save_to_disk`), if any."""
    meta = Path(data) / METADATA_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    return None


def require_columns(dataset, columns: Sequence[str]) -> None:
    """Raise a clear error when a column is missing (no-op when a streamed dataset does not know its columns)."""
    available = getattr(dataset, "column_names", None)
    if available is None:
        return
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"column(s) {missing} not found in the dataset; available columns: {available}")


__all__ = ["demo_metadata", "load_eval_dataset", "require_columns"]
