"""The README's commands and first usage example run as written (offline parts)."""

import re
from pathlib import Path

import pytest

from cgspn.cli import main as cgspn_main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_install_demo_and_test_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert 'pip install -e ".[dev]"' in blocks[0]
    assert blocks[1].strip().startswith("cgspn demo")
    assert blocks[2].strip() == "python -m pytest -n 2"
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[dev]"' in ci and "python -m pytest -n 2" in ci


def test_readme_model_usage_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippet = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert tuple(namespace["outputs"].last_hidden_state.shape) == (1, 14 * 20, 384)
    assert (tmp_path / "my-cgspn" / "model.safetensors").exists()


def test_kernels_info_command(capsys):
    assert cgspn_main(["kernels-info"]) == 0
    assert "cpu: torch" in capsys.readouterr().out


def test_unknown_subcommand_is_rejected():
    with pytest.raises(SystemExit):
        cgspn_main(["bogus"])
