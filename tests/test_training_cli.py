"""``cgspn-train``: argument and config parsing, and a 2-process ``accelerate launch`` (gloo, CPU) run that
matches a 1-process run with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cgspn.data import build_image_processor
from cgspn.training.cli import main, parse_args, training_arguments
from tests.test_training_utils import saved_dataset, single_thread, tiny_pair

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
REPO = Path(__file__).resolve().parents[1]


def test_flags_and_config_file(tmp_path):
    config = tmp_path / "stage2.yaml"
    config.write_text("max-steps: 7\nbatch_size: 3\nlearning_rate: 1.0e-3\nbatch-resolutions: 24,32\ndata: d\n")
    namespace = parse_args(["stage2", "--config", str(config), "--teacher", "t", "--output-dir", "o", "--seed", "4"])
    args = training_arguments(namespace)
    assert (args.max_steps, args.per_device_batch_size, args.learning_rate, args.seed) == (7, 3, 1e-3, 4)
    assert namespace.batch_resolutions == [24, 32] and namespace.data == "d"
    assert (
        parse_args(
            ["stage2", "--config", str(config), "--teacher", "t", "--output-dir", "o", "--max-steps", "9"]
        ).max_steps
        == 9
    )
    resolved = args.resolved("stage2")
    assert (resolved.lr_scheduler, resolved.warmup_steps) == ("cosine", 0)
    stage1 = parse_args(["stage1", "--teacher", "t", "--data", "d", "--output-dir", "o", "--max-steps", "5000"])
    resolved = training_arguments(stage1).resolved("stage1")
    assert (resolved.recipe, resolved.learning_rate, resolved.lr_scheduler, resolved.warmup_steps) == (
        "cgspn",
        2e-3,
        "linear",
        300,
    )
    assert training_arguments(stage1).resolved("stage2", width=1024).learning_rate == pytest.approx(2.5e-4)
    paper = parse_args(["stage1", "--teacher", "t", "--data", "d", "--output-dir", "o", "--recipe", "paper"])
    resolved = training_arguments(paper).resolved("stage1", width=1152)
    assert (resolved.learning_rate, resolved.lr_scheduler) == (4e-5, "linear")  # the paper's rates are not scaled
    with pytest.raises(SystemExit):
        parse_args(["stage1", "--teacher", "t", "--data", "d", "--output-dir", "o", "--recipe", "nope"])
    curriculum = parse_args(["curriculum", "--student", "s", "--data", "d", "--output-dir", "o"])
    assert curriculum.resolutions == [378, 518, 756, 1036] and curriculum.teacher is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_flag": 1}))
    with pytest.raises(SystemExit):
        parse_args(["stage1", "--config", str(bad), "--teacher", "t", "--data", "d", "--output-dir", "o"])
    with pytest.raises(SystemExit):
        parse_args(["stage1", "--data", "d", "--output-dir", "o"])  # --teacher is required
    with pytest.raises(ValueError, match="per_device_batch_size"):
        training_arguments(
            parse_args(["stage1", "--teacher", "t", "--data", "d", "--output-dir", "o", "--batch-size", "0"])
        ).validate()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    teacher, student = tiny_pair()
    teacher.save_pretrained(root / "teacher")
    build_image_processor(image_size=32).save_pretrained(root / "teacher")  # as `cgspn convert` writes it
    student.save_pretrained(root / "student")
    saved_dataset(root / "data", count=16, seed=5)
    return root


def _flags(folders, output_dir, batch_size, stage="stage2"):
    return [
        stage,
        "--teacher", str(folders / "teacher"),
        "--student", str(folders / "student"),
        "--data", str(folders / "data"),
        "--output-dir", str(output_dir),
        "--batch-size", str(batch_size),
        "--max-steps", "3",
        "--learning-rate", "1e-3",
        "--warmup-steps", "1",
        "--save-steps", "2",
        "--report-to", "none",
        "--cpu",
    ] + (["--distill-every", "2"] if stage != "stage1" else [])  # fmt: skip


def assert_launch_matches_one_process(
    folders, tmp_path, stage, launch_options, cpu=True, env=None, extra=(), rtol=1e-4, launched_batch_size=2
):
    """``accelerate launch LAUNCH_OPTIONS`` (2 processes of batch 2, or ``launched_batch_size``) reaches the weights of
    1 plain process of batch 4."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **(env or {}),
    }

    def flags(output_dir, batch_size):
        return [f for f in _flags(folders, output_dir, batch_size, stage) if cpu or f != "--cpu"] + list(extra)

    with socket.socket() as probe:  # a free port: launches in parallel test workers must not share 29500
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launch = [accelerate, "launch", "--main_process_port", port, *launch_options, "-m", "cgspn.training.cli"]
    launch += flags(tmp_path / "two", launched_batch_size)
    process = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    assert main(flags(tmp_path / "one", 4)) == 0
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    initial = load_file(folders / "student" / "model.safetensors")
    assert any(not torch.equal(one[key], initial[key]) for key in one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=rtol, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_3"]
    assert (tmp_path / "two" / "README.md").is_file()


@pytest.mark.parametrize(
    ("stage", "extra"),
    [("stage2", []), ("stage1", ["--streaming", "--shuffle-buffer", "8"])],
    ids=["stage2-map-style", "stage1-streaming"],
)
def test_two_processes_match_one_process(folders, tmp_path, stage, extra):
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no"]
    assert_launch_matches_one_process(
        folders, tmp_path, stage, launch, env={"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}, extra=extra
    )


def test_curriculum_command_with_teacher(folders, tmp_path):
    output = tmp_path / "curriculum"
    flags = _flags(folders, output, 4)
    flags[0] = "curriculum"
    flags += ["--resolutions", "16,32", "--max-steps", "2", "--batch-resolutions", "16,24,32", "--image-size", "30"]
    assert main(flags) == 0
    assert (output / "phase0_res16" / "model.safetensors").is_file()
    assert (output / "phase1_res32" / "model.safetensors").is_file()
    assert (output / "model.safetensors").is_file() and "curriculum" in (output / "README.md").read_text()
    # a resumed curriculum skips finished phases and re-exports
    assert main([*flags, "--resume"]) == 0


def test_missing_image_processor_needs_explicit_normalization(folders, tmp_path):
    flags = _flags(folders, tmp_path / "out", 4, "stage1")
    flags[flags.index("--teacher") + 1] = str(folders / "student")  # a folder without any processor
    with pytest.raises(SystemExit, match="--image-mean and --image-std"):
        main(flags)
