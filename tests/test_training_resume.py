"""Interrupted-and-resumed runs reach the same parameters as uninterrupted ones; checkpoints rotate."""

import datasets
import pytest
import torch
from safetensors.torch import load_file

from cgspn.data import build_image_processor, prepare_dataset
from cgspn.training import TrainingArguments, distill_stage1, distill_stage2, latest_checkpoint
from tests.test_training_utils import image_dataset, single_thread, tiny_pair

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _run(output_dir, **overrides):
    teacher, student = tiny_pair()
    dataset = prepare_dataset(image_dataset(16, seed=4), build_image_processor(image_size=32), 32)
    values = dict(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,  # 8 micro-batches = 4 steps per epoch: the run crosses an epoch
        learning_rate=2e-3,
        warmup_steps=2,
        save_steps=2,
        save_total_limit=2,
        report_to="none",
        seed=7,
    )
    args = TrainingArguments(**{**values, **overrides})
    return distill_stage2(teacher, student, dataset, args, distill_every=2, batch_resolutions=[24, 32])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = _run(tmp_path / "full")
    stopped = _run(tmp_path / "split", stop_after_steps=3)
    assert not stopped.finished and stopped.global_step == 3 and stopped.export_dir is None
    assert not (tmp_path / "split" / "model.safetensors").exists()
    resumed = _run(tmp_path / "split", resume=True)
    assert resumed.finished and resumed.global_step == 6 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-5, abs=1e-7)
    expected = load_file(tmp_path / "full" / "model.safetensors")
    actual = load_file(tmp_path / "split" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    # checkpoints: saved at steps 2, 3 (stop), 4, 6 (named by step) with the last two kept
    names = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert names == ["checkpoint_4", "checkpoint_6"]
    assert latest_checkpoint(tmp_path / "split").name == "checkpoint_6"
    assert (latest_checkpoint(tmp_path / "split") / "model.safetensors").is_file()
    # resuming a finished run trains nothing and writes no new checkpoint
    again = _run(tmp_path / "split", resume=True)
    assert again.finished and again.global_step == 6 and again.losses == []
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == names


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    result = _run(tmp_path, resume=True, max_steps=1, gradient_accumulation_steps=1)
    assert result.finished and result.global_step == 1


def test_streaming_resume_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)  # datasets 5+

    def run(output_dir, **overrides):
        teacher, student = tiny_pair(num_layers=2)
        stream = image_dataset(12, seed=6).to_iterable_dataset(num_shards=3)
        dataset = prepare_dataset(stream, build_image_processor(image_size=32), 32, seed=3, shuffle_buffer=6)
        values = dict(output_dir=str(output_dir), max_steps=5, per_device_batch_size=4, learning_rate=1e-2)
        values.update(warmup_steps=1, save_steps=0, report_to="none")
        return distill_stage1(teacher, student, dataset, TrainingArguments(**{**values, **overrides}))

    full = run(tmp_path / "full")  # 3 batches per epoch: crosses two epoch boundaries
    assert run(tmp_path / "split", stop_after_steps=2).global_step == 2
    resumed = run(tmp_path / "split", resume=True)
    assert resumed.losses == pytest.approx(full.losses[2:], rel=1e-5)
    expected = load_file(tmp_path / "full" / "model.safetensors")
    actual = load_file(tmp_path / "split" / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)


def test_rerun_into_a_used_output_dir_asks_for_resume(tmp_path):
    _run(tmp_path, max_steps=1, gradient_accumulation_steps=1)
    with pytest.raises(FileExistsError, match="pass --resume"):
        _run(tmp_path, max_steps=1, gradient_accumulation_steps=1)
