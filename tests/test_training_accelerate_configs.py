"""Stage 1 and stage 2 under the accelerate configs kept in configs/accelerate/ (FSDP2, DeepSpeed ZeRO-2).

accelerate runs FSDP and DeepSpeed only on accelerators: a multi-process FSDP launch on CPU becomes DDP
(``MULTI_CPU``) whatever the config says, and DeepSpeed on CPU processes is an accident of old accelerate releases
(1.10 ran it; 1.16 counts one process and DeepSpeed's batch check fails). So on CPU, FSDP2 is applied the way
accelerate's plugin applies it (tests/fsdp_worker.py, torchrun, gloo) in the config's shard units, and the configs
are checked; launches of both configs on 2 CUDA devices are marked ``gpu``.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cgspn.training import TrainingArguments
from cgspn.training.stages import SublayerDistiller, vision_tower
from tests.test_training_cli import assert_launch_matches_one_process, folders  # noqa: F401  (a fixture)
from tests.test_training_utils import single_thread, tiny_pair

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_fsdp_config_wraps_classes_that_stage1_calls_directly():
    """Stage 1 calls each propagation mixer on its own: FSDP gathers a unit only in that unit's forward,
    so each mixer must be a unit of its own (wrapping whole CGSPNLayers would leave the mixers sharded)."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    fsdp = load_config("fsdp.yaml")["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    names = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
    _, student = tiny_pair(keep_attention=(1,))
    classes = {name: get_module_class_from_name(student, name) for name in names}
    assert None not in classes.values(), classes
    tower = vision_tower(student)
    called = {type(tower.encoder.layers[index].mixer) for index in SublayerDistiller(tower).layers}
    assert called and called <= set(classes.values())


def test_fsdp_units_missing_from_a_student_are_dropped():
    """fsdp.yaml names CGSPNAttention, which an all-propagation student lacks (accelerate raised "Could not find the
    transformer layer class CGSPNAttention in the model" on the H200); the trainer keeps only the present classes."""
    from types import SimpleNamespace

    from cgspn.training.trainer import keep_present_wrap_classes

    units = load_config("fsdp.yaml")["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    for keep_attention, expected in (((), ["CGSPNPropagation", "CGSPNMLP"]), ((1,), units.split(","))):
        plugin = SimpleNamespace(transformer_cls_names_to_wrap=units)
        keep_present_wrap_classes(plugin, tiny_pair(num_layers=2, keep_attention=keep_attention)[1])
        assert plugin.transformer_cls_names_to_wrap == expected
    keep_present_wrap_classes(None, tiny_pair(num_layers=2)[1])  # no FSDP: nothing to do


def test_sharded_export_copy_keeps_the_trained_dtype_and_weights(monkeypatch):
    """Under FSDP2 the export is a fresh copy (tests/fsdp_worker.py runs the sharded case): it holds the gathered
    tower and the student's other weights, in the trained weights' dtype (a bf16 student is not exported as fp32)."""
    from cgspn.training import trainer

    _, student = tiny_pair(num_layers=2)
    student = student.to(torch.bfloat16)
    tower = vision_tower(student)
    tower_state = {key: value + 1 for key, value in tower.state_dict().items()}  # "trained" weights
    monkeypatch.setattr(trainer, "sharded_in_place", lambda module: True)
    exported = trainer.with_tower_state(student, vision_tower, tower_state)
    assert exported is not student
    assert {value.dtype for value in exported.state_dict().values() if value.is_floating_point()} == {torch.bfloat16}
    for key, value in vision_tower(exported).state_dict().items():
        torch.testing.assert_close(value, tower_state[key], rtol=0, atol=0, msg=key)


def test_deepspeed_config_agrees_with_the_trainer_defaults():
    """DeepSpeed clips and accumulates itself, from its config: the values must be the trainer's defaults."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    config = load_config("deepspeed_zero2.yaml")
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 2
    assert config["deepspeed_config"]["gradient_clipping"] == defaults["max_grad_norm"]
    assert config["deepspeed_config"]["gradient_accumulation_steps"] == defaults["gradient_accumulation_steps"]


def deepspeed_installed() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


STAGES = [("stage2", []), ("stage1", ["--streaming", "--shuffle-buffer", "8"])]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.usefixtures(single_thread.__name__)
@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero2.yaml"])
@pytest.mark.parametrize(("stage", "extra"), STAGES, ids=["stage2", "stage1"])
def test_gpu_two_processes_match_one_process(folders, tmp_path, config, stage, extra):  # noqa: F811
    if config.startswith("deepspeed") and not deepspeed_installed():
        pytest.skip("deepspeed is not installed")
    launch = ["--config_file", str(CONFIGS / config), "--num_processes", "2", "--mixed_precision", "no"]
    # cuDNN's TF32 convolutions (torch's default) round differently for other batch sizes
    assert_launch_matches_one_process(folders, tmp_path, stage, launch, cpu=False, extra=extra, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.usefixtures(single_thread.__name__)
@pytest.mark.parametrize(("stage", "extra"), STAGES, ids=["stage2", "stage1"])
def test_gpu_fsdp_config_on_one_gpu_matches_plain_training(folders, tmp_path, stage, extra):  # noqa: F811
    """fsdp.yaml on one GPU: accelerate's FSDP2 wrapping, full-state checkpoints and export give the weights of plain
    training (the sharding itself needs 2 GPUs: the test above)."""
    launch = ["--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "1", "--mixed_precision", "no"]
    assert_launch_matches_one_process(
        folders, tmp_path, stage, launch, cpu=False, extra=extra, rtol=1e-3, launched_batch_size=4
    )


@pytest.mark.usefixtures(single_thread.__name__)
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fsdp2_units_train_like_one_process_on_cpu(tmp_path, stage):
    """Two gloo processes sharded as fsdp.yaml says reach the weights of one process on the whole batch."""
    from tests import fsdp_worker

    units = load_config("fsdp.yaml")["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tests.fsdp_worker",
        stage,
        units,
        str(tmp_path / "two.st"),
    ]
    process = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-4000:]
    task = fsdp_worker.build(stage)
    initial = {name: parameter.detach().clone() for name, parameter in task.module.named_parameters()}
    one = fsdp_worker.train(task, task.module, fsdp_worker.pixel_values())
    two = load_file(tmp_path / "two.st")
    assert sorted(two) == sorted(one) and any(not torch.equal(one[name], initial[name]) for name in one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
    # the export of the sharded student (an unsharded copy with the gathered tower) holds the trained weights
    exported = load_file(tmp_path / "two.st.export")
    student = task.student_model
    prefix = next(name for name, module in student.named_modules() if module is vision_tower(student))
    assert sorted(exported) == sorted(student.state_dict())
    for name in (n for n in one if n.startswith("student.")):
        key = f"{prefix}.{name.removeprefix('student.')}" if prefix else name.removeprefix("student.")
        torch.testing.assert_close(exported[key], one[name], rtol=1e-4, atol=1e-6, msg=key)
