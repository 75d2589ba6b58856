"""Resume safety (issue 16): no unpickling, epoch-boundary resume, fall-back to older checkpoints, refused setting
changes, atomic and verified exports, portable model cards. Kills at every write are in test_fault_injection.py."""

import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from cgspn.data import build_image_processor, prepare_dataset
from cgspn.training import TrainingArguments, distill_curriculum, distill_stage1, distill_stage2, latest_checkpoint
from cgspn.training.cli import main
from tests.test_training_utils import image_dataset, single_thread, tiny_pair

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def _dataset(size=16):
    return prepare_dataset(image_dataset(16, seed=4), build_image_processor(image_size=size), size)


def _args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        max_steps=8,
        per_device_batch_size=4,  # 16 images: 4 steps per epoch
        learning_rate=1e-3,
        warmup_steps=1,
        save_steps=4,
        save_total_limit=2,
        report_to="none",
        cpu=True,  # bit-identical comparisons: CPU kernels are deterministic
    )
    return TrainingArguments(**{**values, **overrides})


def _stage1(output_dir, **overrides):
    teacher, student = tiny_pair(num_layers=2)
    return distill_stage1(teacher, student, _dataset(), _args(output_dir, **overrides))


def _assert_same_weights(folder_a, folder_b):
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_at_an_epoch_boundary(tmp_path):
    _stage1(tmp_path / "full")
    stopped = _stage1(tmp_path / "split", stop_after_steps=4)  # checkpoint on the epoch's last batch
    assert stopped.global_step == 4 and not stopped.finished
    resumed = _stage1(tmp_path / "split", resume=True)
    assert resumed.finished and len(resumed.losses) == 4
    _assert_same_weights(tmp_path / "full", tmp_path / "split")


class _Payload:
    """Unpickling this creates a folder: proof that a pickle in a checkpoint was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_resume_never_unpickles_code(tmp_path, caplog):
    _stage1(tmp_path, max_steps=4)
    checkpoint = latest_checkpoint(tmp_path)
    assert (checkpoint / "train_state.json").is_file() and not list(checkpoint.glob("custom_checkpoint_*"))
    marker = tmp_path / "pwned"
    # a crafted loop position (what --resume used to unpickle) and a crafted optimizer state
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    torch.save({"state": _Payload(str(marker))}, checkpoint / "optimizer.bin")
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="can be loaded"):
        _stage1(tmp_path, max_steps=4, resume=True)
    assert not marker.exists()
    assert "Cannot load" in caplog.text


@pytest.mark.parametrize("damaged", ["model.safetensors", "random_states_0.pkl", "train_state.json"])
def test_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, damaged):
    _stage1(tmp_path / "full")
    _stage1(tmp_path / "split", save_steps=2, stop_after_steps=6)  # checkpoints 4 and 6 kept
    newest = latest_checkpoint(tmp_path / "split")
    assert newest.name == "checkpoint_6"
    file = newest / damaged
    file.write_bytes(file.read_bytes()[:60])
    with caplog.at_level(logging.WARNING):
        resumed = _stage1(tmp_path / "split", save_steps=2, resume=True)
    assert "checkpoint_6" in caplog.text and "trying an older checkpoint" in caplog.text
    assert resumed.global_step - len(resumed.losses) == 4
    _assert_same_weights(tmp_path / "full", tmp_path / "split")


def test_checkpoint_of_an_earlier_version_is_refused(tmp_path):
    legacy = tmp_path / "checkpoints" / "checkpoint_3"
    legacy.mkdir(parents=True)
    (legacy / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"global_step": 3}))
    with pytest.raises(ValueError, match="earlier cgspn version"):
        _stage1(tmp_path, resume=True)
    with pytest.raises(FileExistsError, match="pass --resume"):
        _stage1(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 5e-3}, "learning_rate 0.001 -> 0.005"),
        ({"per_device_batch_size": 2}, "per_device_batch_size 4 -> 2"),
    ],
)
def test_resume_refuses_changed_settings(tmp_path, change, message):
    _stage1(tmp_path, stop_after_steps=4)
    with pytest.raises(ValueError, match=message):
        _stage1(tmp_path, resume=True, **change)


def test_resume_with_a_longer_run_warns_and_uses_it(tmp_path, caplog):
    _stage1(tmp_path, stop_after_steps=4)
    with caplog.at_level(logging.WARNING):
        result = _stage1(tmp_path, resume=True, max_steps=10)
    assert "schedule is recomputed" in caplog.text and result.global_step == 10


def test_resume_of_another_stage_is_refused(tmp_path):
    _stage1(tmp_path, stop_after_steps=4)
    teacher, student = tiny_pair(num_layers=2)
    with pytest.raises(ValueError, match="holds a stage1 run and this is stage2"):
        distill_stage2(teacher, student, _dataset(), _args(tmp_path, resume=True), distill_every=2)


def test_unreadable_phase_export_is_redone(tmp_path, caplog):
    def curriculum(output_dir, **overrides):
        teacher, student = tiny_pair(num_layers=2)
        args = _args(output_dir, max_steps=4, **overrides)
        return distill_curriculum(teacher, student, _dataset, args, resolutions=[8, 16], distill_every=2)

    curriculum(tmp_path / "full")
    curriculum(tmp_path / "split")
    phase = tmp_path / "split" / "phase0_res8" / "model.safetensors"
    phase.write_bytes(phase.read_bytes()[:200])  # e.g. a disk error after the run
    with caplog.at_level(logging.WARNING):
        curriculum(tmp_path / "split", resume=True)
    assert "phase0_res8" in caplog.text and "cannot be loaded" in caplog.text
    _assert_same_weights(tmp_path / "full" / "phase0_res8", tmp_path / "split" / "phase0_res8")
    _assert_same_weights(tmp_path / "full", tmp_path / "split")


def test_model_card_holds_no_local_paths(tmp_path):
    teacher, student = tiny_pair(num_layers=2)
    info = {"teacher": str(tmp_path / "teachers" / "my-teacher"), "data": str(tmp_path), "student_init": None}
    args = _args(tmp_path / "out", max_steps=1, save_steps=0)
    result = distill_stage1(teacher, student, _dataset(), args, card_info=info)
    card = (tmp_path / "out" / "README.md").read_text()
    assert result.export_dir and str(tmp_path) not in card and "/tmp" not in card
    assert "my-teacher" in card
    assert not (tmp_path / "out" / ".export.tmp").exists()


@pytest.fixture
def folders(tmp_path):
    teacher, student = tiny_pair(num_layers=2)
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    return tmp_path


def _cli_flags(folders, output_dir, *extra):
    teacher, student = str(folders / "teacher"), str(folders / "student")
    return ["stage1", "--teacher", teacher, "--student", student, "--data", "unused", "--output-dir", str(output_dir),
            "--image-mean", "0.5,0.5,0.5", "--image-std", "0.5,0.5,0.5", *extra]  # fmt: skip


@pytest.mark.parametrize("flag", ["student", "teacher"])
def test_output_dir_equal_to_an_input_model_is_refused(folders, flag):
    before = (folders / flag / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=f"is the --{flag} folder"):
        main(_cli_flags(folders, folders / flag / "."))
    assert (folders / flag / "model.safetensors").read_bytes() == before


def test_hub_token_flag_warns(folders, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit):
        main(_cli_flags(folders, folders / "student", "--hub-token", "hf_secret"))
    assert "--hub-token is visible" in caplog.text and "HF_TOKEN" in caplog.text


def test_runs_with_other_accelerate_settings_in_one_process(tmp_path):
    """A run after another whose accelerate state differs (here bf16 then fp32; on a GPU machine a CUDA run then a
    --cpu curriculum phase) gets a fresh state instead of "AcceleratorState has already been initialized"."""
    first = _stage1(tmp_path / "bf16", max_steps=1, save_steps=0, mixed_precision="bf16")
    second = _stage1(tmp_path / "fp32", max_steps=1, save_steps=0, mixed_precision="no")
    assert first.finished and second.finished


def test_export_moves_weights_last(tmp_path, monkeypatch):
    """A present weights file (or shard index) means every other exported file is already in place."""
    from cgspn.training.checkpointing import export_atomically

    moved, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moved.append(os.path.basename(src)), replace(src, dst)))
    names = ["model-00002-of-00002.safetensors", "config.json", "model.safetensors.index.json", "README.md"]
    names.append("model-00001-of-00002.safetensors")

    def write(folder):
        for name in names:
            (folder / name).write_text(name)

    export_atomically(tmp_path, write)
    assert moved == [
        "README.md",
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert not (tmp_path / ".export.tmp").exists() and (tmp_path / "config.json").read_text() == "config.json"
