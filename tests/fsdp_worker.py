"""FSDP2 training of a distillation stage in the units of configs/accelerate/fsdp.yaml, on CPU (gloo).

accelerate does not run FSDP on CPU processes, so this applies ``fully_shard`` the way its FSDP2 plugin does
(each named class a unit, then the root). ``torchrun --standalone --nproc_per_node 2 -m tests.fsdp_worker STAGE
UNITS OUT`` (from the repository root) trains each rank on its half of the batch and writes the gathered trainable
weights to OUT (safetensors), and to ``OUT.export`` the student the trainer's export would save (`with_tower_state`:
an unsharded copy holding the gathered tower).
"""

import contextlib
import os
import sys

import torch
from torch import nn

from cgspn.training.stages import FeatureTask, SublayerTask, vision_tower
from cgspn.training.trainer import with_tower_state
from tests.test_training_utils import tiny_pair

BATCH, STEPS = 4, 2


def build(stage: str):
    teacher, student = tiny_pair(keep_attention=(1,))
    return SublayerTask(teacher, student) if stage == "stage1" else FeatureTask(teacher, student, distill_every=2)


def pixel_values() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def train(task, module: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """STEPS SGD steps on ``images``; the trainable weights afterwards (full tensors).

    SGD, not AdamW: Adam turns gradients that are rounding noise (attention's key bias) into full-size steps.
    """
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    for step in range(STEPS):
        loss, _ = task.loss(module, images, step, contextlib.nullcontext)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = module.state_dict()
    weights = {}
    for name, parameter in module.named_parameters():  # the same order on every rank: gathers are collectives
        if parameter.requires_grad:
            weights[name] = state[name].full_tensor() if hasattr(state[name], "full_tensor") else state[name]
    return {name: tensor.detach() for name, tensor in weights.items()}


def main(stage: str, units: str, output: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    task = build(stage)
    names = set(units.split(","))
    for submodule in list(task.module.modules()):
        if type(submodule).__name__ in names:
            fully_shard(submodule, mesh=mesh)
    fully_shard(task.module, mesh=mesh)
    rank, world = dist.get_rank(), dist.get_world_size()
    weights = train(task, task.module, pixel_values().chunk(world)[rank])
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in task.module.state_dict().items()}
    if rank == 0:
        save_file({name: tensor.contiguous() for name, tensor in weights.items()}, output)
        tower_state = {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")}
        exported = with_tower_state(task.student_model, vision_tower, tower_state)
        save_file({k: v.contiguous() for k, v in exported.state_dict().items()}, f"{output}.export")
    dist.barrier()  # the gathers may still be in flight on ranks that never read them: finish before leaving
    # Everything is written. gloo's background threads can abort the interpreter's own teardown under load
    # ("terminate called without an active exception", seen in CI), so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
