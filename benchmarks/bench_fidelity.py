"""Fidelity benchmark: how much of its teacher's accuracy a C-GSPN student keeps, on real images, with the CLI.

For each teacher kind (SigLIP-style MAP head, CLIP-style class token, open_clip mean pooling; see
``fidelity_setup.py``) it trains the teacher from scratch on the scikit-learn handwritten digits, then runs exactly what
a user runs: ``cgspn convert`` (defaults), ``cgspn train stage1``, ``cgspn train stage2`` (defaults: only the step
count and batch size are given) and ``cgspn eval zero-shot``; plus a linear probe (logistic regression) on frozen
pooled image embeddings, which measures the image tower apart from the text side. The teacher is evaluated through
its exact C-GSPN conversion (``--attention-layers all --keep-position-embeddings``, verified to 1e-5 by
``cgspn convert``), so teacher and student go through the same evaluation code.

``--ablation`` adds the variants of the README's ablation table (CLI flags on the same teachers).

    python benchmarks/bench_fidelity.py --size cpu                 # ~15 min on 2 CPU cores
    python benchmarks/bench_fidelity.py --size gpu --jobs 12 --ablation   # device run

Writes ``benchmarks/results/fidelity_<size>.json`` and ``fidelity_<size>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fidelity_setup as setup  # noqa: E402
from machine import machine_facts  # noqa: E402

# Distillation budgets (stage 1 + stage 2 steps at the teacher's batch size): at most the teacher's own budget.
DISTILL_STEPS = {"cpu": (300, 600), "gpu": (300, 900), "smoke": (2, 2)}
VARIANTS = {
    "default": [],
    "paper recipe": ["--recipe", "paper"],
    "paper recipe, rates 2e-3 / 1e-3": [
        "--recipe",
        "paper",
        "@stage1",
        "--learning-rate",
        "2e-3",
        "@stage2",
        "--learning-rate",
        "1e-3",
    ],
    "taps + output": ["@stage2", "--tap-weight", "1"],
    "rates / 3": ["@stage1", "--learning-rate", "STAGE1/3", "@stage2", "--learning-rate", "STAGE2/3"],
    "rates x 3": ["@stage1", "--learning-rate", "STAGE1*3", "@stage2", "--learning-rate", "STAGE2*3"],
    "16 propagation channels": ["@convert", "--propagation-channels", "16"],
}


def _cgspn(*args: str, log: Path) -> float:
    """Run ``cgspn ARGS`` as a user would (a fresh process); returns its wall time; raises with the log's tail."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"$ cgspn {' '.join(args)}\n")
        handle.flush()
        code = subprocess.call([sys.executable, "-m", "cgspn.cli", *args], stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"cgspn {' '.join(args[:2])} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def _split_flags(flags: list[str], defaults: dict[str, float]) -> dict[str, list[str]]:
    """Variant flags grouped by command (``@convert``, ``@stage1``, ``@stage2``; before any marker: every training
    stage); ``STAGE1/3``-style values are computed from the default rates of the student's width."""
    groups: dict[str, list[str]] = {"convert": [], "stage1": [], "stage2": []}
    targets = ["stage1", "stage2"]
    for flag in flags:
        if flag.startswith("@"):
            targets = [flag[1:]]
            continue
        for stage, rate in defaults.items():
            for op, apply in (("/3", lambda r: r / 3), ("*3", lambda r: r * 3)):
                if flag == f"{stage.upper()}{op}":
                    flag = f"{apply(rate):.3g}"
        for target in targets:
            groups[target].append(flag)
    return groups


def _zero_shot(model: Path, data: Path, work: Path, log: Path) -> dict:
    output = work / f"eval_{model.name}.json"
    _cgspn(
        "eval", "zero-shot", "--model", str(model), "--data", str(data), "--split", "test",
        "--class-names", ",".join(setup.CLASS_NAMES), "--templates", *setup.TEMPLATES,
        "--output", str(output), "--no-progress", log=log,
    )  # fmt: skip
    results = json.loads(output.read_text())
    return {"top1": results["top1_accuracy"], "top5": results["top5_accuracy"]}


@torch.no_grad()
def _linear_probe(model_dir: Path, data: Path) -> float:
    """Top-1 of a logistic regression on frozen, normalized pooled image embeddings (train -> test)."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoProcessor

    import cgspn  # noqa: F401  (registers the C-GSPN classes)

    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    features = {}
    for split in ("train", "test"):
        images, labels = setup.load_split(data, split)
        embeddings = []
        for start in range(0, len(images), 256):
            pixels = processor.image_processor(images[start : start + 256], return_tensors="pt")["pixel_values"]
            pooled = model.get_image_features(pixel_values=pixels).pooler_output
            embeddings.append(torch.nn.functional.normalize(pooled, dim=-1))
        features[split] = (torch.cat(embeddings).numpy(), labels)
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(*features["train"])
    return float(probe.score(*features["test"]))


def _width(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    return config.get("vision_config", config)["hidden_size"]


def prepare_teacher(kind: str, size_name: str, work: Path, data: Path) -> dict:
    """Train the teacher of ``kind``, convert it exactly and evaluate it."""
    size = setup.SIZES[size_name]
    folder = work / kind
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    start = time.perf_counter()
    with log.open("a") as handle:
        command = [sys.executable, str(HERE / "fidelity_setup.py"), kind, size_name, str(data), str(folder / "teacher")]
        output = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"training the {kind} teacher failed; see {log}:\n{log.read_text()[-3000:]}")
    teacher = json.loads(output.stdout.strip().splitlines()[-1])
    result = {
        "spec": teacher["spec"],
        "steps": size.steps,
        "batch_size": size.batch_size,
        "images_seen": size.budget,
        "train_seconds": time.perf_counter() - start,
    }
    exact = folder / "teacher_exact"
    _cgspn("convert", "--teacher", teacher["spec"], "--out", str(exact), "--attention-layers", "all",
           "--keep-position-embeddings", log=log)  # fmt: skip
    result.update(_zero_shot(exact, data, folder, log), linear_probe=_linear_probe(exact, data), width=_width(exact))
    print(f"{size_name} {kind} teacher: {json.dumps(result)}", flush=True)
    return result


def run_variant(kind: str, variant: str, teacher: dict, size_name: str, work: Path, data: Path) -> dict:
    """``cgspn convert`` -> ``train stage1`` -> ``train stage2`` -> ``eval zero-shot`` + linear probe, with the flags
    of ``variant``."""
    from cgspn.training.defaults import stage_defaults

    size = setup.SIZES[size_name]
    rates = {
        stage: stage_defaults("cgspn", stage).learning_rate_for(teacher["width"]) for stage in ("stage1", "stage2")
    }
    flags = _split_flags(VARIANTS[variant], rates)
    run = work / kind / variant.replace(" ", "_").replace("/", "").replace(",", "")
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    steps1, steps2 = DISTILL_STEPS[size_name]
    common = ["--batch-size", str(size.batch_size), "--report-to", "none", "--num-workers", "2"]
    seconds = {"convert": _cgspn("convert", "--teacher", teacher["spec"], "--out", str(run / "converted"),
                                 *flags["convert"], log=log)}  # fmt: skip
    for stage, steps, student in (("stage1", steps1, "converted"), ("stage2", steps2, "stage1")):
        seconds[stage] = _cgspn(
            "train", stage, "--teacher", teacher["spec"], "--student", str(run / student),
            "--data", str(data / "train"), "--output-dir", str(run / stage), "--max-steps", str(steps),
            *common, *flags[stage], log=log,
        )  # fmt: skip
    metrics = {name: _zero_shot(run / name, data, run, log) for name in ("converted", "stage1", "stage2")}
    config = json.loads((run / "stage2" / "config.json").read_text())
    result = {
        "flags": VARIANTS[variant],
        "propagation_channels": config["vision_config"]["propagation_channels"],
        "zero_shot": metrics,
        "linear_probe": _linear_probe(run / "stage2", data),
        "top1_ratio": metrics["stage2"]["top1"] / teacher["top1"],
        "steps": {"stage1": steps1, "stage2": steps2},
        "images_seen": (steps1 + steps2) * size.batch_size,
        "seconds": seconds,
    }
    print(f"{size_name} {kind} {variant}: top-1 ratio {result['top1_ratio']:.3f} {json.dumps(result)}", flush=True)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["teachers"])
    figure, axis = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for offset, (label, values) in enumerate(
        (
            ("teacher", [results["teachers"][k]["teacher"]["top1"] for k in kinds]),
            (
                "C-GSPN student",
                [results["teachers"][k]["variants"]["default"]["zero_shot"]["stage2"]["top1"] for k in kinds],
            ),
        )
    ):
        bars = axis.bar([i + (offset - 0.5) * width for i in range(len(kinds))], values, width, label=label)
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
    axis.set_xticks(range(len(kinds)), [f"{k} pooling" for k in ("MAP", "class token", "mean")][: len(kinds)])
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("zero-shot top-1 (digits test)")
    axis.set_title(f"Fidelity, {results['size']} size, CLI defaults")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(setup.SIZES), default="cpu")
    parser.add_argument("--kinds", default=",".join(setup.TEACHER_KINDS))
    parser.add_argument("--ablation", action="store_true", help="also run the ablation variants")
    parser.add_argument("--jobs", type=int, default=1, help="teachers / variants run in parallel")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/fidelity"))
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/fidelity_<size>.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir / args.size
    data = work / "data"
    if not (data / "test").is_dir():
        setup.write_digits(data, setup.SIZES[args.size].image_size)
    variants = list(VARIANTS) if args.ablation else ["default"]
    kinds = [kind for kind in args.kinds.split(",") if kind]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {kind: pool.submit(prepare_teacher, kind, args.size, work, data) for kind in kinds}
        teachers = {kind: future.result() for kind, future in futures.items()}
        runs = {
            (kind, variant): pool.submit(run_variant, kind, variant, teachers[kind], args.size, work, data)
            for variant in variants
            for kind in kinds
        }
        results_by_kind = {
            kind: {"teacher": teachers[kind], "variants": {v: runs[(kind, v)].result() for v in variants}}
            for kind in kinds
        }
    for result in results_by_kind.values():
        result["teacher"]["spec"] = result["teacher"]["spec"].replace(str(work), "<work>")
    import sklearn

    results = {
        "benchmark": "fidelity",
        "size": args.size,
        "data": "scikit-learn digits (UCI optical digits, 1797 real 8x8 scans, 10 classes): "
        f"{len(setup.load_split(data, 'train')[1])} train / {setup.NUM_TEST} test, upsampled to "
        f"{setup.SIZES[args.size].image_size} px",
        "runs": 1,
        "seed": 0,
        **machine_facts(**{"scikit-learn": sklearn.__version__}),
        "teacher_size": setup.SIZES[args.size].__dict__,
        "wall_seconds": time.perf_counter() - start,
        "teachers": results_by_kind,
    }
    output = args.output or HERE / "results" / f"fidelity_{args.size}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    plot(results, output.with_suffix(".png"))
    for kind, result in results_by_kind.items():
        default = result["variants"]["default"]
        print(
            f"{kind}: teacher top-1 {result['teacher']['top1']:.3f}, "
            f"student {default['zero_shot']['stage2']['top1']:.3f} ({default['top1_ratio']:.3f}); "
            f"linear probe {result['teacher']['linear_probe']:.3f} -> {default['linear_probe']:.3f}"
        )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
