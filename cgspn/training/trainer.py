"""Accelerate training loop shared by every distillation stage.

Runs unchanged on one CPU, one GPU or under ``accelerate launch`` (DDP, FSDP, DeepSpeed from ``accelerate
config``): mixed precision, gradient accumulation, AdamW with a warm-up schedule from transformers, tqdm on the
main process, Accelerate trackers, crash-safe ``save_state`` checkpoints keeping the last K
(:mod:`~cgspn.training.checkpointing`), bit-exact ``resume`` and an atomic ``save_pretrained`` export with a model
card (tap adaptors are not exported).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..model_card import write_model_card
from .checkpointing import (
    CHECKPOINT_DIR,
    EXPORT_TMP,
    checkpoints_to_try,
    complete_checkpoints,
    export_atomically,
    legacy_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .defaults import RECIPE_NAMES, check_recipe, stage_defaults

logger = logging.getLogger(__name__)

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
EXPORT_IGNORE = [f"{CHECKPOINT_DIR}/**", "logs/**", "phase*/**", f"{EXPORT_TMP}/**"]
# Settings a checkpoint fixes: the restored optimizer and schedule keep theirs, and the data order depends on them.
RESUME_SETTINGS = (
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "seed",
)


class DistillationTask(Protocol):
    """What the trainer needs from a stage (see :mod:`cgspn.training.stages`)."""

    name: str
    teacher: nn.Module
    student_model: nn.Module
    module: nn.Module

    def loss(self, module: nn.Module, pixel_values: torch.Tensor, step: int, autocast) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch and its detached parts; ``module`` is the prepared ``self.module``."""


@dataclass
class TrainingArguments:
    """Optimization, checkpointing and export settings. ``None`` fields take the default of the stage in ``recipe``
    (:mod:`cgspn.training.defaults`: ``"cgspn"``, the measured best, or ``"paper"``); a default warm-up longer than a
    tenth of ``max_steps`` is shortened to that.

    ``stop_after_steps`` ends a run early (checkpointed, schedule still that of ``max_steps``: for time-sliced
    jobs); ``save_outputs=False`` writes no checkpoint and no export (benchmarks)."""

    output_dir: str
    max_steps: int = 1000
    per_device_batch_size: int = 32
    recipe: str = "cgspn"
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = 500
    save_total_limit: int = 3
    logging_steps: int = 10
    report_to: str = "auto"
    resume: bool = False
    stop_after_steps: int | None = None
    num_workers: int = 0
    cpu: bool = False
    save_outputs: bool = True
    push_to_hub: str | None = None
    hub_private: bool = False
    hub_token: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Raise a clear error for settings that cannot run."""
        positive = ("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_steps < 0 or self.save_total_limit < 1:
            raise ValueError("save_steps must be >= 0 (0 = only at the end) and save_total_limit >= 1")
        if self.lr_scheduler is not None and self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {SCHEDULERS}, got {self.lr_scheduler!r}")
        check_recipe(self.recipe)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {self.stop_after_steps}")

    def resolved(self, stage: str, width: int | None = None) -> TrainingArguments:
        """A copy with the defaults of ``stage`` in ``self.recipe`` filled in, for a student of ``width`` channels."""
        defaults = stage_defaults(self.recipe, stage)
        values = asdict(self)
        if values["learning_rate"] is None:
            values["learning_rate"] = defaults.learning_rate_for(width)
        if values["lr_scheduler"] is None:
            values["lr_scheduler"] = defaults.lr_scheduler
        if values["warmup_steps"] is None:
            values["warmup_steps"] = min(defaults.warmup_steps, self.max_steps // 10)
        return TrainingArguments(**values)


@dataclass
class TrainState:
    """Loop position, saved as JSON in every checkpoint's ``train_state.json``."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


@dataclass
class TrainResult:
    """Summary of a run: steps done, per-step losses (mean over processes), throughput, wall-clock time at the
    end of each step (seconds since the loop started) and where things are."""

    global_step: int
    losses: list[float]
    images_per_second: float
    output_dir: str
    export_dir: str | None = None
    finished: bool = True
    step_times: list[float] = field(default_factory=list)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/checkpoint_<step>`` folder of a run, or ``None``."""
    return next(iter(complete_checkpoints(output_dir)), None)


def _trackers(report_to: str) -> list[str] | None:
    from accelerate.utils import is_tensorboard_available

    if report_to == "none":
        return None
    if report_to == "auto":
        return ["tensorboard"] if is_tensorboard_available() else None
    return [name.strip() for name in report_to.split(",") if name.strip()]


def release_conflicting_state(cpu: bool, mixed_precision: str) -> None:
    """Forget the accelerate state of an earlier single-process run in this process when its device or precision
    differs from this run's (e.g. a GPU run, then a ``--cpu`` one): accelerate refuses to change an initialized state
    ("AcceleratorState has already been initialized"), or keeps a ``--cpu`` run's CPU device for a later GPU run.
    Distributed states are kept (accelerate then explains the conflict itself)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    state = AcceleratorState._shared_state
    if not state or state.get("distributed_type") != DistributedType.NO:
        return
    wants_cpu = cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    on_cpu = state["device"].type == "cpu"
    other_device = (wants_cpu and not on_cpu) or (not wants_cpu and on_cpu and torch.accelerator.is_available())
    if other_device or state.get("_mixed_precision") != mixed_precision:
        logger.info("Resetting the accelerate state of an earlier run (device %s)", state["device"])
        AcceleratorState._reset_state(reset_partial_state=True)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of every block (hooks and taps inside blocks keep their grads)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def keep_present_wrap_classes(fsdp_plugin: Any, module: nn.Module) -> None:
    """Drop the FSDP shard-unit classes ``module`` does not contain (a student without hybrid attention has no
    ``CGSPNAttention``): accelerate refuses any listed class it cannot find, so one config serves every student."""
    names = getattr(fsdp_plugin, "transformer_cls_names_to_wrap", None)
    if not names:
        return
    names = names.split(",") if isinstance(names, str) else list(names)
    present = {type(submodule).__name__ for submodule in module.modules()}
    fsdp_plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]


class DistillationTrainer:
    """Trains ``task.module`` on ``dataset`` (items ``{"pixel_values": (3, H, W)}``) and exports the student.

    Args:
        task: A stage (:class:`~cgspn.training.stages.SublayerTask` or :class:`~cgspn.training.stages.FeatureTask`).
        dataset: A map-style or iterable torch/``datasets`` dataset of pixel values.
        args: Training arguments (stage defaults filled in from ``task.name``).
        collate_fn: Batch collation (default: stack ``pixel_values``).
        card_info: Extra lines for the model card (teacher, data, ...).
        processor: Saved with the exported student (its image processor + tokenizer, e.g. from
            ``cgspn.data.resized_processor``), so that the export is a complete model folder.
        trackers: Extra Accelerate trackers (``GeneralTracker`` instances) next to those named by ``report_to``.
    """

    def __init__(
        self,
        task: DistillationTask,
        dataset: Dataset | IterableDataset,
        args: TrainingArguments,
        collate_fn=None,
        card_info: dict[str, Any] | None = None,
        trackers: list | None = None,
        processor=None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        args.validate()
        self.task = task
        from .stages import vision_tower

        width = vision_tower(task.student_model).config.hidden_size
        self.args = args.resolved("stage1" if task.name == "stage1" else "stage2", width)
        self.card_info = card_info or {}
        self.processor = processor
        output_dir = Path(self.args.output_dir)
        self.trackers = [*(_trackers(self.args.report_to) or []), *(trackers or [])]
        release_conflicting_state(self.args.cpu, self.args.mixed_precision)
        self.accelerator = Accelerator(
            cpu=self.args.cpu,
            mixed_precision=self.args.mixed_precision,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            log_with=self.trackers or None,
            # Checkpoint naming and rotation are ours (atomic, rotation after the new one is complete).
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=self.args.seed),
            # One scheduler step per optimizer step, whatever the number of processes.
            step_scheduler_with_optimizer=False,
        )
        set_seed(self.args.seed)
        if self.args.gradient_checkpointing and hasattr(task.module, "student"):
            enable_gradient_checkpointing(task.module.student)
        self.dataloader = self._dataloader(dataset, collate_fn)

    def _dataloader(self, dataset, collate_fn) -> DataLoader:
        from ..data import collate_pixel_values

        iterable = isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__")
        if not iterable and len(dataset) < self.args.per_device_batch_size * self.accelerator.num_processes:
            raise ValueError(
                f"Dataset of {len(dataset)} images is smaller than one global batch "
                f"({self.args.per_device_batch_size} x {self.accelerator.num_processes} processes)"
            )
        return DataLoader(
            dataset,
            batch_size=self.args.per_device_batch_size,
            shuffle=not iterable,
            drop_last=True,
            collate_fn=collate_fn or collate_pixel_values,
            num_workers=self.args.num_workers,
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    def _optimizer_and_scheduler(self, module: nn.Module):
        from transformers import get_scheduler

        parameters = [p for p in module.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"{self.task.name}: nothing to train (no parameter requires grad)")
        args = self.args
        optimizer = torch.optim.AdamW(
            parameters,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        scheduler = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps
        )
        return optimizer, scheduler

    def _run_settings(self) -> dict[str, Any]:
        settings = {name: getattr(self.args, name) for name in RESUME_SETTINGS}
        return {**settings, "num_processes": self.accelerator.num_processes}

    def _save(self, state: TrainState) -> None:
        record = {**asdict(state), "stage": self.task.name, "max_steps": self.args.max_steps}
        record["settings"] = self._run_settings()
        save_checkpoint(self.accelerator, self.args.output_dir, record, self.args.save_total_limit)
        self._last_saved_step = state.global_step

    def _check_resumable(self, checkpoint: Path, saved: dict[str, Any]) -> None:
        """Refuse a checkpoint of another stage, or one whose fixed settings (:data:`RESUME_SETTINGS`) differ."""
        if saved.get("stage") != self.task.name:
            raise ValueError(
                f"--resume: {checkpoint} holds a {saved.get('stage')} run and this is {self.task.name}; "
                "resume it with the same stage, or choose another --output-dir"
            )
        changed = [
            f"{name} {saved['settings'].get(name)!r} -> {value!r}"
            for name, value in self._run_settings().items()
            if saved["settings"].get(name) != value
        ]
        if changed:
            raise ValueError(
                f"--resume continues {checkpoint} with its own optimizer, schedule and data order, but these "
                f"settings differ from it: {', '.join(changed)}. Pass the saved values, or start a new run in another "
                "--output-dir"
            )
        if saved["max_steps"] != self.args.max_steps:
            logger.warning(
                "--resume with max_steps %d (the checkpointed run had %d): the %s schedule is recomputed for %d steps",
                self.args.max_steps,
                saved["max_steps"],
                self.args.lr_scheduler,
                self.args.max_steps,
            )

    def _resume(self, state: TrainState) -> bool:
        """Load the newest loadable complete checkpoint (models, optimizer, scheduler, RNG; loop position from JSON);
        False if there is none."""
        output_dir = self.args.output_dir
        tried = []
        for checkpoint in checkpoints_to_try(output_dir):
            tried.append(checkpoint.name)
            saved = load_checkpoint(self.accelerator, checkpoint, self._check_resumable)
            if saved is None:
                continue
            for name in ("global_step", "epoch", "batches_in_epoch"):
                setattr(state, name, int(saved[name]))
            logger.info("Resumed from %s at step %d", checkpoint, state.global_step)
            return True
        if tried:
            raise RuntimeError(
                f"--resume: none of the checkpoints {tried} in {output_dir} can be loaded (see the warnings above)"
            )
        if legacy_checkpoints(output_dir):
            raise ValueError(
                f"--resume: {output_dir} holds only checkpoints of an earlier cgspn version, whose pickled loop "
                "position is never loaded; start a new run in another --output-dir"
            )
        logger.warning("--resume: no complete checkpoint under %s; starting from scratch", output_dir)
        return False

    def train(self) -> TrainResult:
        """Run until ``max_steps`` (or ``stop_after_steps`` more steps), checkpoint, export, push."""
        accelerator, args = self.accelerator, self.args
        optimizer, scheduler = self._optimizer_and_scheduler(self.task.module)
        # The whole student (a dual encoder's text tower too) on the training device: it stays usable as one model,
        # except under FSDP2, which shards its tower in place (the export is whole; see `with_tower_state`).
        if sharded_in_place(self.task.module):
            raise RuntimeError(
                "The student was sharded in place by an earlier FSDP run in this process: load it from that run's "
                "export (from_pretrained) before training it again"
            )
        self.task.student_model.to(accelerator.device)
        keep_present_wrap_classes(getattr(accelerator.state, "fsdp_plugin", None), self.task.module)
        module, optimizer, dataloader, scheduler = accelerator.prepare(
            self.task.module, optimizer, self.dataloader, scheduler
        )
        self.task.teacher.to(accelerator.device)
        state = TrainState()
        self._last_saved_step = -1
        if args.resume and self._resume(state):
            self._last_saved_step = state.global_step
        elif args.save_outputs and (complete_checkpoints(args.output_dir) or legacy_checkpoints(args.output_dir)):
            raise FileExistsError(
                f"{args.output_dir} already holds checkpoints of an earlier run: pass --resume to continue it, "
                "or choose another --output-dir"
            )
        if self.trackers:
            config = {
                k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"
            }
            accelerator.init_trackers(f"cgspn-{self.task.name}", config={**config, "stage": self.task.name})
        global_batch = args.per_device_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        accelerator.print(
            f"{self.task.name}: {accelerator.num_processes} process(es) ({accelerator.distributed_type}), "
            f"global batch {global_batch}, steps {state.global_step}->{args.max_steps}, lr {args.learning_rate}, "
            f"{args.lr_scheduler} schedule with {args.warmup_steps} warm-up steps"
        )
        stop_at = args.max_steps
        if args.stop_after_steps is not None:
            stop_at = min(stop_at, state.global_step + args.stop_after_steps)
        losses = self._loop(module, optimizer, dataloader, scheduler, state, stop_at)
        finished = state.global_step >= args.max_steps
        export_dir = None
        if args.save_outputs:
            if self._last_saved_step != state.global_step:
                self._save(state)
            export_dir = self.export(module, state.global_step, losses) if finished else None
        accelerator.end_training()
        return TrainResult(
            global_step=state.global_step,
            losses=losses,
            images_per_second=self._throughput,
            output_dir=args.output_dir,
            export_dir=export_dir,
            finished=finished,
            step_times=self._step_times,
        )

    def _loop(self, module, optimizer, dataloader, scheduler, state: TrainState, stop_at: int) -> list[float]:
        from tqdm.auto import tqdm

        accelerator, args = self.accelerator, self.args
        module.train()
        parameters = [p for p in module.parameters() if p.requires_grad]
        progress = tqdm(
            total=args.max_steps,
            initial=state.global_step,
            desc=self.task.name,
            disable=not accelerator.is_local_main_process,
        )
        losses: list[float] = []
        step_loss = torch.zeros((), device=accelerator.device)
        micro_batches = images = 0
        start = time.perf_counter()
        self._throughput = 0.0
        self._step_times: list[float] = []
        while state.global_step < stop_at:
            dataloader.set_epoch(state.epoch)
            batches = dataloader
            if state.batches_in_epoch:
                batches = accelerator.skip_first_batches(dataloader, state.batches_in_epoch)
            seen_any = False
            for batch in batches:
                seen_any = True
                pixel_values = batch["pixel_values"]
                with accelerator.accumulate(module):
                    loss, parts = self.task.loss(module, pixel_values, state.global_step, accelerator.autocast)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                step_loss += loss.detach().float()
                micro_batches += 1
                images += pixel_values.shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.global_step += 1
                mean_loss = accelerator.reduce(step_loss / micro_batches, "mean").item()
                losses.append(mean_loss)
                step_loss.zero_()
                micro_batches = 0
                self._step_times.append(time.perf_counter() - start)
                self._throughput = images / self._step_times[-1]
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.4g}", img_s=f"{self._throughput:.1f}")
                if state.global_step % args.logging_steps == 0 or state.global_step == stop_at:
                    logs = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "images_per_second": self._throughput}
                    logs.update({k: accelerator.reduce(v.float(), "mean").item() for k, v in parts.items()})
                    accelerator.log(logs, step=state.global_step)
                if args.save_outputs and args.save_steps and state.global_step % args.save_steps == 0:
                    self._save(state)
                if state.global_step >= stop_at:
                    break
            else:
                # Nothing left after the skipped batches: the checkpoint was saved on the epoch's last batch.
                if not seen_any and not state.batches_in_epoch:
                    raise ValueError("The data loader yielded no batch (dataset smaller than one batch?)")
                state.epoch += 1
                state.batches_in_epoch = 0
        progress.close()
        return losses

    def export(self, module: nn.Module, global_step: int, losses: list[float]) -> str:
        """``save_pretrained`` the student (without adaptors) and the processor atomically into ``output_dir`` with a
        model card; push if asked."""
        from .stages import vision_tower

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state = accelerator.get_state_dict(module)
        output_dir = Path(self.args.output_dir)
        if accelerator.is_main_process:
            tower_state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
            student = with_tower_state(self.task.student_model, vision_tower, tower_state)
            export_student(
                student, output_dir, self.task.name, self.args, global_step, losses, self.card_info, self.processor
            )
            if self.args.push_to_hub:
                push_folder_to_hub(output_dir, self.args.push_to_hub, self.args.hub_private, self.args.hub_token)
        accelerator.wait_for_everyone()
        return str(output_dir)


def sharded_in_place(module: nn.Module) -> bool:
    """Whether FSDP2 turned ``module``'s parameters into DTensors."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in module.parameters())


def with_tower_state(
    student: nn.Module, vision_tower: Callable[[nn.Module], nn.Module], tower_state: dict[str, torch.Tensor]
) -> nn.Module:
    """``student`` with its vision tower set to the gathered ``tower_state``. Under FSDP2 the tower's parameters are
    sharded in place (DTensors) and take no full tensors: the export is then a fresh unsharded copy, in the trained
    weights' dtype, holding ``tower_state`` and the student's other weights."""
    tower = vision_tower(student)
    if not sharded_in_place(tower):
        tower.load_state_dict(tower_state)
        return student
    prefix = next(name for name, module in student.named_modules() if module is tower)
    prefix = f"{prefix}." if prefix else ""
    state = {k: v for k, v in student.state_dict().items() if prefix and not k.startswith(prefix)}
    state.update({prefix + k: v.cpu() for k, v in tower_state.items()})
    dtype = next(value.dtype for value in tower_state.values() if value.is_floating_point())
    copy = type(student)(student.config).to(dtype)
    copy.load_state_dict({k: v.cpu() for k, v in state.items()})
    return copy


def export_student(
    student: nn.Module,
    output_dir: str | Path,
    stage: str,
    args: TrainingArguments,
    global_step: int,
    losses: list[float],
    info: dict[str, Any],
    processor=None,
) -> Path:
    """``save_pretrained`` the student and its ``processor`` into ``output_dir`` atomically (see
    ``export_atomically``), with a model card (`cgspn.model_card`) saying how it was distilled; adaptors are not
    exported. Local paths (teacher, data, ...) appear in the card as their folder names only."""
    settings = {
        "distillation": f"`cgspn-train {stage}` (SPEC §4); tap adaptors not included",
        "steps": global_step,
        "learning rate / schedule / warm-up": f"{args.learning_rate} / {args.lr_scheduler} / {args.warmup_steps}",
        "batch per device x accumulation": f"{args.per_device_batch_size} x {args.gradient_accumulation_steps}",
        "mixed precision": args.mixed_precision,
        "final loss": f"{losses[-1]:.6g}" if losses else "n/a",
        **{
            k: _portable(v) if isinstance(v, str) else str(v)
            for k, v in info.items()
            if k != "teacher" and isinstance(v, (str, int, float, bool, list))
        },
    }
    teacher = _portable(info["teacher"]) if isinstance(info.get("teacher"), str) else None
    repo_id = args.push_to_hub or Path(args.output_dir).name

    def write(folder: Path) -> None:
        student.save_pretrained(str(folder), safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(str(folder))
        write_model_card(student, folder, repo_id=repo_id, teacher=teacher, extra_rows=settings)

    return export_atomically(output_dir, write)


def _portable(value: str) -> str:
    """A local path as its last component (files for users hold no local paths); other values unchanged."""
    return Path(value).name if os.path.isabs(value) or os.path.exists(value) else value


def push_folder_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload the exported folder (checkpoints and logs stay local)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        ignore_patterns=EXPORT_IGNORE,
        commit_message="Upload C-GSPN student distilled with cgspn-train",
    )
    logger.info("Pushed %s to %s", folder, repo_id)
    return getattr(commit, "commit_url", str(commit))


__all__ = [
    "RECIPE_NAMES",
    "DistillationTrainer",
    "TrainResult",
    "TrainState",
    "TrainingArguments",
    "enable_gradient_checkpointing",
    "export_student",
    "latest_checkpoint",
    "push_folder_to_hub",
]
