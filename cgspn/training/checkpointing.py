"""Crash-safe checkpoints and exports: a kill at any moment leaves every complete file set readable.

- A checkpoint is written by ``accelerator.save_state`` into ``checkpoints/checkpoint_<step>.tmp``, completed by
  ``train_state.json`` (the loop position and the run's settings, plain JSON: nothing is unpickled on resume),
  flushed to disk, and only then renamed to ``checkpoints/checkpoint_<step>``. Older checkpoints beyond the limit are
  removed after that, by renaming them away first, so a folder named ``checkpoint_<step>`` is always complete.
- ``load_checkpoint`` takes the newest complete checkpoint; when it cannot be read it warns and falls back to the
  next one. Leftovers of an interrupted write (``*.tmp``, ``*.deleting``) are ignored with a warning and removed at
  the next save.
- An export is written into ``<output_dir>/.export.tmp``, flushed, then moved file by file into ``output_dir`` with
  ``os.replace`` (the weights last), so each exported file is either the previous one or the new one, never torn.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "train_state.json"
EXPORT_TMP = ".export.tmp"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders themselves, to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _remove(path: Path) -> None:
    """Delete a folder so that a kill midway leaves no half-deleted folder under its name."""
    trash = path.with_name(path.name + ".deleting")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash)


def _step(folder: Path) -> int | None:
    match = _CHECKPOINT_NAME.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints (``checkpoint_<step>`` folders holding ``train_state.json``), newest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=_step, reverse=True)


def incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Leftovers of interrupted writes or deletions (``*.tmp``, ``*.deleting``) under ``checkpoints/``."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    found = folder.iterdir() if folder.is_dir() else ()
    return sorted(p for p in found if p.name.endswith((".tmp", ".deleting")))


def legacy_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint_<step>`` folders without ``train_state.json``, written by an earlier cgspn (pickled position)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    found = folder.iterdir() if folder.is_dir() else ()
    return sorted(p for p in found if _step(p) is not None and not (p / STATE_FILE).is_file())


def save_checkpoint(accelerator, output_dir: str | Path, state: dict[str, Any], total_limit: int) -> Path:
    """Write ``checkpoints/checkpoint_<state["global_step"]>`` atomically and keep the newest ``total_limit``.

    Every process calls this (``save_state`` writes per-process random states); the main process renames and rotates.
    """
    folder = Path(output_dir) / CHECKPOINT_DIR
    final = folder / f"checkpoint_{state['global_step']}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        fsync_tree(partial)
        if final.exists():  # an unreadable checkpoint of this step, from before a fall-back
            _remove(final)
        os.replace(partial, final)
        _fsync(folder)
        for stale in incomplete_checkpoints(output_dir):
            shutil.rmtree(stale)
        for old in complete_checkpoints(output_dir)[total_limit:]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def checkpoints_to_try(output_dir: str | Path) -> Iterator[Path]:
    """Complete checkpoints, newest first, after warning about leftovers that resume ignores."""
    for leftover in incomplete_checkpoints(output_dir):
        logger.warning("Ignoring %s, left by a run interrupted while writing or deleting it", leftover)
    for legacy in legacy_checkpoints(output_dir):
        logger.warning("Ignoring %s: an earlier format, whose pickled loop position is never loaded", legacy)
    yield from complete_checkpoints(output_dir)


def load_checkpoint(
    accelerator, checkpoint: Path, check: Callable[[Path, dict[str, Any]], None]
) -> dict[str, Any] | None:
    """Read ``train_state.json``, let ``check`` refuse it (by raising), then ``load_state`` with tensors-only
    (``weights_only``) loads. Returns the train state, or ``None`` with a warning when a file cannot be read."""
    from accelerate.utils import RNG_STATE_NAME, load

    try:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        logger.warning("Cannot read %s (%s); trying an older checkpoint", checkpoint / STATE_FILE, error)
        return None
    check(checkpoint, saved)
    try:
        # load_state only logs an unreadable random-state file and resumes with other random numbers: read it first
        load(checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
        accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
    except Exception as error:  # any unreadable or missing file: fall back to an older checkpoint
        logger.warning("Cannot load %s (%s: %s); trying an older checkpoint", checkpoint, type(error).__name__, error)
        return None
    return saved


def export_atomically(output_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a temporary folder, then move its files into ``output_dir`` (weights last)."""
    output_dir = Path(output_dir)
    staging = output_dir / EXPORT_TMP
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write(staging)
    fsync_tree(staging)
    # weights last (shards before their index), so a present weights file means a complete export
    entries = sorted(staging.iterdir(), key=lambda p: (".safetensors" in p.name, p.name))
    folders = [p.name for p in entries if not p.is_file()]
    if folders:
        raise RuntimeError(f"Export wrote sub-folders {folders}; only flat model folders can be exported atomically")
    for entry in entries:
        os.replace(entry, output_dir / entry.name)
    _fsync(output_dir)
    staging.rmdir()
    return output_dir


__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "checkpoints_to_try",
    "complete_checkpoints",
    "export_atomically",
    "fsync_tree",
    "incomplete_checkpoints",
    "legacy_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]
