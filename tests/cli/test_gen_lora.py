"""labs-gen with a LoRA adapter folder as the model: it runs on the base its folder names."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from labs.cli.gen import app
from tests.engine.test_lora import make_adapter

runner = CliRunner()


def test_an_adapter_folder_runs_on_the_base_it_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "tone", 1, r=4, lora_alpha=8, target_modules="all-linear")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    args = ["--prompt", "Tell me a story.", "--no-rag", "--max-new-tokens", "12", "--temperature", "0", "--json"]
    with_adapter = runner.invoke(app, ["--model", str(adapter), *args])
    assert with_adapter.exit_code == 0, with_adapter.output
    base = runner.invoke(app, ["--model", str(tiny_model_dir), *args])
    assert base.exit_code == 0, base.output
    adapted, plain = json.loads(with_adapter.stdout), json.loads(base.stdout)
    assert adapted["completion_tokens"] == plain["completion_tokens"] == 12
    assert adapted["text"] != plain["text"]
    assert json.loads(runner.invoke(app, ["--model", str(adapter), *args]).stdout)["text"] == adapted["text"]


def test_an_adapter_that_does_not_fit_its_base_is_refused_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "tone", 1, r=32, target_modules=["q_proj"])
    result = runner.invoke(app, ["--model", str(adapter), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code != 0
    assert "rank 32" in result.output and "LABS_MAX_LORA_RANK" in result.output and "Traceback" not in result.output
