"""SIGKILL at every file write of a checkpoint and of an export (stage 1, stage 2, curriculum): ``--resume`` then
finishes bit-identical to an uninterrupted run and redoes no step before the last completed save interval.

The kills run in ``tests/fault_injection.py`` (one subprocess per scenario, forking a child per run)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks one child per run")
@pytest.mark.parametrize("scenario", ["stage1", "stage2", "curriculum"])
def test_kill_anywhere_then_resume(tmp_path, scenario):
    report = tmp_path / "report.json"
    # CPU only (the runs pass --cpu): forked children cannot use a CUDA context their parent created
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    command = [sys.executable, "-m", "tests.fault_injection", scenario, str(tmp_path / "work"), str(report)]
    process = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(report.read_text())
    written = {(event["kind"], Path(event["path"]).name) for event in result["events"]}
    # the hook sees the writes that matter (so the suite cannot pass by seeing nothing)
    assert {
        ("save_file", "model.safetensors"),
        ("torch.save", "optimizer.bin"),
        ("open", "train_state.json"),
    } <= written
    assert {("open", "config.json"), ("replace", "model.safetensors"), ("rmtree", "checkpoint_2.deleting")} <= written
    assert all("step" in event for event in result["events"]), "a write outside any checkpoint or export"
    trials = result["trials"]
    assert len(trials) >= 30
    for trial in trials:
        event = trial["event"]
        where = f"kill {'after a torn' if trial['torn'] else 'before'} {event['kind']} of {event['path']}"
        assert trial["killed"] == -signal.SIGKILL, where
        assert trial["resumed"] == 0, where
        assert trial["identical"], f"{where}: resumed weights differ from the uninterrupted run"
        assert trial["leftovers"] == [], where
        start = trial["starts"].get(event["folder"], result["max_steps"])  # absent: the phase's export was reused
        if event["step"] == "export":  # training had finished: nothing is redone
            assert start == result["max_steps"], where
        else:
            assert start >= event["step"] - result["save_steps"], where
