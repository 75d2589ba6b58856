"""The offline demo, run as users run it (``cgspn demo``) several times in fresh folders: its figures, their spread
between runs (determinism) and its wall time.

Writes ``benchmarks/results/demo_runs.json`` (device, versions, each run's metrics and seconds, the largest
difference between runs) and copies the last run's report and plots to ``benchmarks/results/demo/``.

Usage::

    python benchmarks/bench_demo.py [--runs 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_facts

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("top1_accuracy", "top5_accuracy", "mean_iou")
REPORT_FILES = ("report.md", "results.json", "losses.png", "metrics.png", "predictions.png")


def run_demo(output_dir: Path, threads: int | None) -> dict:
    command = [sys.executable, "-m", "cgspn.cli", "demo", "--output-dir", str(output_dir)]
    if threads:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((output_dir / "results.json").read_text())
    return {
        "wall_seconds": time.perf_counter() - start,
        **{f"{model}_{metric}": summary[model][metric] for model in ("teacher", "student") for metric in METRICS},
        "student_over_teacher_top1": summary["student_over_teacher_top1"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        runs = [run_demo(Path(work) / f"run{index}", args.threads) for index in range(args.runs)]
        (RESULTS / "demo").mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copy2(Path(work) / f"run{args.runs - 1}" / name, RESULTS / "demo" / name)
    keys = [key for key in runs[0] if key != "wall_seconds"]
    results = {
        "benchmark": "demo",
        "command": "cgspn demo --output-dir <fresh folder>",
        **machine_facts(),
        "runs": runs,
        "max_difference_between_runs": {key: max(r[key] for r in runs) - min(r[key] for r in runs) for key in keys},
    }
    output = RESULTS / "demo_runs.json"
    output.write_text(json.dumps(results, indent=2))
    for index, run in enumerate(runs):
        print(
            f"run {index}: teacher {run['teacher_top1_accuracy']:.4f}, student {run['student_top1_accuracy']:.4f} "
            f"({run['student_over_teacher_top1']:.3f}), {run['wall_seconds']:.0f} s"
        )
    print(
        f"largest difference between runs: {max(results['max_difference_between_runs'].values()):.4g}; wrote {output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
