"""The offline end-to-end demo: data -> CLIP teacher -> C-GSPN student (stage 1 + 2) -> evaluation -> report."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer
from transformers import TrainingArguments as HFTrainingArguments

from ..conversion import build_model, transformers_teacher_spec
from ..evaluation import evaluate_segmentation, evaluate_zero_shot, predict_masks
from ..model_card import write_model_card
from ..modeling_cgspn import CGSPNForSemanticSegmentation
from ..training import TrainingArguments, distill_stage1, distill_stage2
from .data import DemoData, make_digits_dataset
from .report import plot_loss_curves, plot_metric_bars, plot_predictions, write_report
from .teacher import TeacherSettings, TensorDictDataset, encode_pairs, train_teacher

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes and schedules of the demo; the defaults run in minutes on 2 CPU cores."""

    num_validation: int = 100
    num_test: int = 500
    image_size: int = 32
    seed: int = 0
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    propagation_channels: int | None = 16  # None: the converter's default, width / 18 (3 for this teacher)
    stage1_steps: int = 300
    stage2_steps: int = 600
    # None: the default recipe's rates for the student's width (`cgspn.training.defaults`), as the CLI uses them
    stage1_learning_rate: float | None = None
    stage2_learning_rate: float | None = None
    distill_batch_size: int = 64
    distill_every: int = 2
    segmentation_steps: int = 120
    segmentation_batch_size: int = 32
    segmentation_learning_rate: float = 1e-3
    num_examples_shown: int = 4

    @classmethod
    def quick(cls) -> DemoSettings:
        """A seconds-long run for tests: same code path, tiny sizes."""
        return cls(
            num_validation=16,
            num_test=50,
            image_size=16,
            teacher=replace(TeacherSettings(), hidden_size=32, num_hidden_layers=2, text_hidden_size=32, epochs=1),
            propagation_channels=8,
            stage1_steps=3,
            stage2_steps=3,
            distill_batch_size=16,
            segmentation_steps=3,
            segmentation_batch_size=16,
            num_examples_shown=2,
        )


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        logger.info("demo: %s", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _masks(dataset) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.array(mask), dtype=torch.long) for mask in dataset["mask"]])


def _distill_args(
    output_dir: Path, steps: int, learning_rate: float | None, settings: DemoSettings
) -> TrainingArguments:
    shutil.rmtree(output_dir, ignore_errors=True)  # a rerun of the demo starts over
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        learning_rate=learning_rate,
        per_device_batch_size=settings.distill_batch_size,
        save_steps=0,
        save_total_limit=1,
        logging_steps=max(1, steps // 30),
        report_to="none",
        seed=settings.seed,
        cpu=not torch.cuda.is_available(),
    )


def finetune_segmentation(
    vision_model, train: TensorDictDataset, num_labels: int, output_dir: Path, settings: DemoSettings
) -> tuple[CGSPNForSemanticSegmentation, list[dict]]:
    """A linear segmentation head on a copy of ``vision_model``, fine-tuned end to end with `Trainer`."""
    config = vision_model.config.__class__(**{**vision_model.config.to_diff_dict(), "num_labels": num_labels})
    torch.manual_seed(settings.seed)
    model = CGSPNForSemanticSegmentation(config)
    model.vision_model.load_state_dict(vision_model.state_dict())
    args = HFTrainingArguments(
        output_dir=str(output_dir),
        max_steps=settings.segmentation_steps,
        per_device_train_batch_size=settings.segmentation_batch_size,
        learning_rate=settings.segmentation_learning_rate,
        lr_scheduler_type="cosine",
        logging_steps=max(1, settings.segmentation_steps // 30),
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    return model.eval(), trainer.state.log_history


def _curve(log: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    return [(entry["step"], entry[key]) for entry in log if key in entry]


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run_demo(output_dir: str | Path, settings: DemoSettings | None = None) -> dict:
    """Run the whole demo and write ``report.md``, ``results.json``, plots, the teacher and the student."""
    settings = settings or DemoSettings()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    torch.manual_seed(settings.seed)

    with timer("prepare data"):
        data: DemoData = make_digits_dataset(
            settings.image_size, settings.num_validation, settings.num_test, seed=settings.seed
        )
        data.save_to_disk(output_dir / "data")
    with timer("train teacher"):
        teacher, processor, teacher_log = train_teacher(data, output_dir / "teacher", settings.teacher, settings.seed)

    with timer("convert teacher to C-GSPN"):
        spec = transformers_teacher_spec(teacher, processor, name="demo SigLIP-style teacher")
        exact_teacher = build_model(spec, attention_layers="all", keep_position_embeddings=True).model
        student = build_model(spec, propagation_channels=settings.propagation_channels).model
    train_pairs = encode_pairs(processor, data.dataset["train"], settings.teacher.max_text_length)
    images = TensorDictDataset({"pixel_values": train_pairs.tensors["pixel_values"]})
    with timer("distill stage 1"):
        args = _distill_args(output_dir / "stage1", settings.stage1_steps, settings.stage1_learning_rate, settings)
        stage1 = distill_stage1(exact_teacher, student, images, args)
    with timer("distill stage 2"):
        args = _distill_args(output_dir / "stage2", settings.stage2_steps, settings.stage2_learning_rate, settings)
        stage2 = distill_stage2(exact_teacher, student, images, args, distill_every=settings.distill_every)
    student.eval()
    student.save_pretrained(output_dir / "student")
    processor.save_pretrained(output_dir / "student")

    test = data.dataset["test"]
    with timer("zero-shot evaluation"):
        zero_shot = {
            name: evaluate_zero_shot(model, processor, test, data.class_names, data.templates, progress=False)
            for name, model in (("teacher", teacher), ("student", student))
        }

    segmentation_train = TensorDictDataset(
        {"pixel_values": train_pairs.tensors["pixel_values"], "labels": _masks(data.dataset["train"])}
    )
    num_labels = len(data.segmentation_labels)
    segmenters, segmentation, segmentation_logs = {}, {}, {}
    with timer("segmentation fine-tuning + mIoU"):
        for name, model in (("teacher", exact_teacher), ("student", student)):
            segmenter, log = finetune_segmentation(
                model.vision_model, segmentation_train, num_labels, output_dir / f"segmentation_{name}", settings
            )
            segmenters[name], segmentation_logs[name] = segmenter, log
            segmentation[name] = evaluate_segmentation(
                segmenter, processor.image_processor, test, num_labels=num_labels, progress=False
            )

    summary = {
        "description": (
            f"A {settings.teacher.num_hidden_layers}-block ViT SigLIP-style teacher "
            f"(width {settings.teacher.hidden_size}, patch {settings.teacher.patch_size}) trained contrastively on "
            "real handwritten digits (UCI optical digits, shipped with the package); its C-GSPN student "
            f"replaces every attention sublayer by propagation ({student.config.vision_config.propagation_channels} "
            f"latent channels) and was distilled with stage 1 ({settings.stage1_steps} steps) and stage 2 "
            f"({settings.stage2_steps} steps). Segmentation: a linear head fine-tuned {settings.segmentation_steps} "
            "steps on each backbone."
        ),
        "data": f"{len(data.dataset['train'])} train / {len(test)} test digit scans (8x8, upsampled to "
        f"{settings.image_size} px), "
        f"{len(data.class_names)} classes",
        "chance_top1": 1 / len(data.class_names),
        "settings": asdict(settings),
        "timings_s": timer.seconds,
    }
    for name, model in (("teacher", exact_teacher), ("student", student)):
        summary[name] = {
            **zero_shot[name],
            "mean_iou": segmentation[name]["mean_iou"],
            "vision_parameters": _parameters(model.vision_model),
        }
    summary["student_over_teacher_top1"] = summary["student"]["top1_accuracy"] / max(
        summary["teacher"]["top1_accuracy"], 1e-12
    )

    shown = test.select(range(settings.num_examples_shown))
    predictions = {
        f"{name} prediction": predict_masks(
            model, processor.image_processor, shown["image"], [m.size[::-1] for m in shown["mask"]]
        )
        for name, model in segmenters.items()
    }
    figures = {
        "losses": plot_loss_curves(
            {
                "teacher (sigmoid CLIP loss)": _curve(teacher_log),
                "stage 1 (sublayer MSE)": list(enumerate(stage1.losses, 1)),
                "stage 2 (output distillation)": list(enumerate(stage2.losses, 1)),
                "segmentation (student)": _curve(segmentation_logs["student"]),
            },
            output_dir / "losses.png",
        ),
        "metrics": plot_metric_bars(
            {
                "zero-shot top-1": {n: summary[n]["top1_accuracy"] for n in ("teacher", "student")},
                "segmentation mIoU": {n: summary[n]["mean_iou"] for n in ("teacher", "student")},
            },
            output_dir / "metrics.png",
            chance={"zero-shot top-1": summary["chance_top1"]},
        ),
        "predictions": plot_predictions(shown["image"], shown["mask"], predictions, output_dir / "predictions.png"),
    }
    write_model_card(
        student,
        output_dir / "student",
        repo_id=f"{output_dir.name}/student",
        teacher="demo SigLIP-style teacher",
        results={"zero-shot top-1": summary["student"]["top1_accuracy"], "mIoU": summary["student"]["mean_iou"]},
        dataset_name="UCI optical handwritten digits",
    )
    write_report(output_dir, summary, figures)
    return summary
