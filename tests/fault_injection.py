"""Kill a training run (SIGKILL) at every file write of a checkpoint and of an export, resume it, compare.

Run as ``python -m tests.fault_injection SCENARIO WORKDIR REPORT`` (as ``tests/test_fault_injection.py`` does): this
process imports everything once, then forks one child per run, so each of the ~100 runs costs a fraction of a second. A
child installs a write hook: every call of ``torch.save``, ``safetensors`` ``save_file``, ``open`` for writing,
``os.replace``/``os.rename`` and ``shutil.rmtree`` on a path under the run's output folder is an *event*, labelled
with what the trainer was writing (``checkpoint`` at a step, or ``export``) and the folder of that trainer.

1. A reference run, uninterrupted, records the events.
2. For each event of the chosen checkpoint and exports (``_kill_points``), a run is killed just before that event, and
   once more right after a torn write where one is possible (half a data file, an empty file opened for writing, a
   folder with one file deleted). Then ``--resume`` runs to the end in the same folder.
3. The report (a JSON file) lists, per kill, the resume's exit code, whether the exported weights are
   bit-identical to the reference, the step each resumed trainer started from, and the leftovers.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)

import safetensors.torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from cgspn.data import build_image_processor  # noqa: E402
from cgspn.training import cli, trainer  # noqa: E402
from tests.test_training_utils import saved_dataset, tiny_pair  # noqa: E402

MAX_STEPS = 6
SAVE_STEPS = 2
KILLED_CHECKPOINT = 4  # the one on an epoch boundary (16 images, batch 4) that also rotates checkpoint_2 away
DATA_WRITERS = ("torch.save", "save_file", "open", "rmtree")
SCENARIOS = {
    "stage1": ["stage1"],
    "stage2": ["stage2", "--distill-every", "2"],
    "curriculum": ["curriculum", "--distill-every", "2", "--resolutions", "16,32"],
}


def _fork(function, *args) -> int:
    """Run ``function(*args)`` in a forked child; its exit code, or ``-signal`` when killed."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            function(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _make_fixtures(root: Path) -> None:
    teacher, student = tiny_pair()
    teacher.save_pretrained(root / "teacher")
    build_image_processor(image_size=32).save_pretrained(root / "teacher")
    student.save_pretrained(root / "student")
    saved_dataset(root / "data", count=16, seed=5)


def _warm_up(scenario: str, root: Path) -> None:
    """One untimed run in this process, so that forked children skip first-time work (lazy imports, regex
    compilation in model loading); then forget accelerate's process-wide state so each child builds its own."""
    from accelerate.state import AcceleratorState

    if cli.main(_flags(scenario, root, root / "warm-up")) != 0:
        raise RuntimeError("the warm-up run failed")
    AcceleratorState._reset_state(reset_partial_state=True)


def _flags(scenario: str, root: Path, output_dir: Path) -> list[str]:
    stage, *options = SCENARIOS[scenario]
    return [
        stage, *options,
        "--teacher", str(root / "teacher"),
        "--student", str(root / "student"),
        "--data", str(root / "data"),
        "--output-dir", str(output_dir),
        "--batch-size", "4",
        "--max-steps", str(MAX_STEPS),
        "--learning-rate", "1e-3",
        "--warmup-steps", "1",
        "--save-steps", str(SAVE_STEPS),
        "--save-total-limit", "1",
        "--report-to", "none",
        "--cpu",
    ]  # fmt: skip


class WriteHook:
    """Counts (and labels) file writes under ``root``; SIGKILLs the process at event ``kill_at``."""

    def __init__(self, root: Path, kill_at: int | None = None, torn: bool = False):
        self.root = root.resolve()
        self.kill_at = kill_at
        self.torn = torn
        self.events: list[dict] = []
        self.label: dict | None = None
        self.starts: dict[str, int] = {}

    def _inside(self, path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(self.root)

    def event(self, kind: str, path, call):
        if not self._inside(path):
            return call()
        index = len(self.events)
        self.events.append(
            {"kind": kind, "path": str(Path(path).resolve().relative_to(self.root)), **(self.label or {})}
        )
        if index != self.kill_at:
            return call()
        if not self.torn:
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "rmtree":  # deletion interrupted after the first file
            first = next(Path(r) / f for r, _, files in os.walk(path) for f in files)
            first.unlink()
        else:
            result = call()
            if kind != "open":  # a data file cut in half
                os.truncate(path, Path(path).stat().st_size // 2)
            del result
        os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        """Replace each writer everywhere it is bound (module attributes and ``from x import y`` names)."""
        original_open = builtins.open

        def hooked_open(file, mode="r", *args, **kwargs):
            call = lambda: original_open(file, mode, *args, **kwargs)  # noqa: E731
            return self.event("open", file, call) if any(c in mode for c in "wax+") else call()

        def wrap(kind, original, path_of):
            return lambda *a, **k: self.event(kind, path_of(*a, **k), lambda: original(*a, **k))

        replacements = {
            id(original_open): hooked_open,
            id(torch.save): wrap("torch.save", torch.save, lambda obj, f, *a, **k: f),
            id(safetensors.torch.save_file): wrap(
                "save_file", safetensors.torch.save_file, lambda tensors, filename, *a, **k: filename
            ),
            id(os.replace): wrap("replace", os.replace, lambda src, dst, *a, **k: src),
            id(os.rename): wrap("rename", os.rename, lambda src, dst, *a, **k: src),
            id(shutil.rmtree): wrap("rmtree", shutil.rmtree, lambda path, *a, **k: path),
        }
        for module in [builtins, *list(sys.modules.values())]:
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                if id(value) in replacements and not name.startswith("__"):
                    setattr(module, name, replacements[id(value)])
        self._label_trainer()

    def _label_trainer(self) -> None:
        save, export, resume = (
            trainer.DistillationTrainer._save,
            trainer.export_student,
            trainer.DistillationTrainer._resume,
        )
        hook = self

        def labelled_save(self, state):
            hook.label = {"folder": hook.folder(self.args.output_dir), "step": state.global_step}
            try:
                return save(self, state)
            finally:
                hook.label = None

        def labelled_export(student, output_dir, *args, **kwargs):
            hook.label = {"folder": hook.folder(output_dir), "step": "export"}
            try:
                return export(student, output_dir, *args, **kwargs)
            finally:
                hook.label = None

        def recorded_resume(self, state):
            resumed = resume(self, state)
            hook.starts[hook.folder(self.args.output_dir)] = state.global_step
            return resumed

        trainer.DistillationTrainer._save = labelled_save
        trainer.DistillationTrainer._resume = recorded_resume
        trainer.export_student = labelled_export
        sys.modules["cgspn.training.recipes"].export_student = labelled_export

    def folder(self, path) -> str:
        return str(Path(path).resolve().relative_to(self.root))


def _train(flags: list[str], output_dir: Path, record: Path, kill_at: int | None = None, torn: bool = False) -> None:
    hook = WriteHook(output_dir, kill_at, torn)
    hook.install()
    try:
        if cli.main(flags) != 0:
            raise SystemExit("cgspn-train failed")
    finally:
        record.write_text(json.dumps({"events": hook.events, "starts": hook.starts}))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _kill_points(events: list[dict]) -> list[tuple[int, bool]]:
    """Every event of checkpoint ``KILLED_CHECKPOINT`` of the last trainer, and of the first and the last export
    (in the curriculum: phase 0's, which a resume must verify and skip, and the final one), before and torn."""
    trainers = [e["folder"] for e in events if e.get("step") == KILLED_CHECKPOINT]
    exports = [e["folder"] for e in events if e.get("step") == "export"]
    chosen = [
        i
        for i, e in enumerate(events)
        if (e.get("step"), e.get("folder"))
        in {(KILLED_CHECKPOINT, trainers[-1]), ("export", exports[0]), ("export", exports[-1])}
    ]
    return [(i, torn) for i in chosen for torn in (False, True) if not torn or events[i]["kind"] in DATA_WRITERS]


def main(scenario: str, workdir: str) -> dict:
    root = Path(workdir)
    if _fork(_make_fixtures, root) != 0:
        raise RuntimeError("could not build the fixtures")
    _warm_up(scenario, root)
    reference = root / "reference"
    if _fork(_train, _flags(scenario, root, reference), reference, root / "reference.json") != 0:
        raise RuntimeError("the uninterrupted run failed")
    events = json.loads((root / "reference.json").read_text())["events"]
    expected = _weights(reference)
    trials = []
    for index, torn in _kill_points(events):
        output_dir = root / f"kill{index}{'torn' if torn else ''}"
        killed = _fork(_train, _flags(scenario, root, output_dir), output_dir, root / "killed.json", index, torn)
        resumed = _fork(_train, [*_flags(scenario, root, output_dir), "--resume"], output_dir, root / "resumed.json")
        identical = None
        if resumed == 0:
            actual = _weights(output_dir)
            identical = actual.keys() == expected.keys() and all(torch.equal(actual[k], expected[k]) for k in expected)
        trials.append(
            {
                "event": events[index],
                "torn": torn,
                "killed": killed,
                "resumed": resumed,
                "identical": identical,
                "starts": json.loads((root / "resumed.json").read_text())["starts"],
                "leftovers": sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*.tmp"))
                + sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*.deleting")),
            }
        )
        shutil.rmtree(output_dir)
    return {"events": events, "trials": trials, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS}


if __name__ == "__main__":
    scenario, workdir, report = sys.argv[1:]
    Path(report).write_text(json.dumps(main(scenario, workdir)))
