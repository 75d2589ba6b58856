"""`cgspn demo` / `cgspn-demo`: the offline end-to-end demo."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from .pipeline import DemoSettings, run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgspn demo",
        description="Prepare the shipped digits, train a small CLIP teacher, convert and distill a C-GSPN student, "
        "evaluate zero-shot accuracy and segmentation mIoU of both, and write a report. Offline, CPU-friendly.",
    )
    parser.add_argument("--output-dir", default="demo_output", help="where the report, plots and models go")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in well under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = replace(DemoSettings.quick() if args.quick else DemoSettings(), seed=args.seed)
    summary = run_demo(args.output_dir, settings)
    teacher, student = summary["teacher"], summary["student"]
    print(f"\nReport: {args.output_dir}/report.md")
    print(
        f"zero-shot top-1  teacher {teacher['top1_accuracy']:.4f}  student {student['top1_accuracy']:.4f}  "
        f"(student/teacher {summary['student_over_teacher_top1']:.3f}, chance {summary['chance_top1']:.4f})"
    )
    print(f"segmentation mIoU teacher {teacher['mean_iou']:.4f}  student {student['mean_iou']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
