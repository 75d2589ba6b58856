"""The GPU training benchmark script parses its arguments and completes a 2-step run at a tiny shape on CPU."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_training_utils import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(bench, monkeypatch, tmp_path):
    options = bench.parse_args([])
    assert (options.steps, options.batch_size, options.mixed_precision, options.gradient_checkpointing) == (
        200,
        32,
        "bf16",
        True,
    )
    assert options.stages == ["stage1", "stage2"]
    assert bench.SO400M["hidden_size"] == 1152 and bench.SO400M["num_hidden_layers"] == 27
    with pytest.raises(SystemExit):
        bench.parse_args(["--stages", "stage3"])
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.output_path(options) == tmp_path / "bench_training.json"


def test_tiny_cpu_run(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    report = bench.main(["--tiny", "--steps", "2", "--skip", "1", "--num-workers", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["shape_name"] == "tiny" and [row["stage"] for row in saved["stages"]] == ["stage1", "stage2"]
    for row in report["stages"]:
        assert "error" not in row, row.get("error")
        assert row["steps"] == 2 and row["images_per_second"] > 0
    assert "img/s" in capsys.readouterr().out
