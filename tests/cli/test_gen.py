"""`labs-gen` end to end: real models, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labs.cli.gen import app

runner = CliRunner()
QUESTION = "What is the capital of France?"


@pytest.fixture
def cache_env(labs_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABS_CACHE_DIR", str(labs_cache_dir))
    return labs_cache_dir


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    script = Path(sys.executable).with_name("labs-gen")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_default_model_answers_paris(cache_env: Path) -> None:
    result = run_cli(["--prompt", QUESTION, "--max-new-tokens", "32", "--temperature", "0"])
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_after_a_model_ran_the_script_exits_fast_with_its_code_and_all_output(cache_env: Path) -> None:
    """The one-shot skips Python's teardown once torch is loaded (os._exit): output must still be
    complete and the exit code the command's own, for an answer and for an error."""
    result = run_cli(["--prompt", QUESTION, "--max-new-tokens", "8", "--temperature", "0", "--json", "--no-rag"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completion_tokens"] == 8
    too_long = run_cli(["--prompt", "word " * 9000, "--max-new-tokens", "4", "--no-rag"])
    assert too_long.returncode == 2
    assert "context is 8192 tokens: shorten it" in too_long.stderr and too_long.stdout == ""


def test_json_output_has_text_counts_and_timing(cache_env: Path) -> None:
    result = runner.invoke(app, ["--prompt", QUESTION, "--max-new-tokens", "32", "--temperature", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "Paris" in report["text"] and report["model"] == "smollm2-135m-instruct"
    assert report["finish_reason"] == "stop" and report["prompt_tokens"] > 5
    assert 0 < report["completion_tokens"] <= 32
    assert report["generation_seconds"] >= report["time_to_first_token_seconds"] > 0


def test_stream_prints_the_same_text_as_one_shot(cache_env: Path) -> None:
    args = ["--messages-json", json.dumps([{"role": "user", "content": QUESTION}]), "--max-new-tokens", "24", "--temperature", "0"]
    once = runner.invoke(app, args)
    streamed = runner.invoke(app, [*args, "--stream"])
    assert once.exit_code == streamed.exit_code == 0
    assert streamed.stdout == once.stdout and "Paris" in once.stdout


def test_tiny_model_seeded_sampling_is_reproducible(tiny_model_dir: Path) -> None:
    args = ["--model", str(tiny_model_dir), "--prompt", "hello", "--max-new-tokens", "12", "--temperature", "1", "--seed", "7", "--json"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["text"] == json.loads(second.stdout)["text"]
    assert json.loads(first.stdout)["completion_tokens"] == 12


def test_bad_environment_value_exits_2_with_one_line() -> None:
    result = run_cli(["--prompt", "hi"], env={"LABS_TEMPERATURE": "abc"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LABS_TEMPERATURE" in lines[0] and "env LABS_TEMPERATURE" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--prompt", "hi", "--max-new-tokens", "-1"], {}, "--max-new-tokens = -1 (flag --max-new-tokens): must be >= 1"),
        (["--prompt", "hi", "--temperature", "5"], {}, "--temperature = 5.0 (flag --temperature): must be in [0.0, 2.0]"),
        (["--prompt", "hi"], {"LABS_TORCH_DTYPE": "fp8"}, "LABS_TORCH_DTYPE = 'fp8'"),
        (["--prompt", "hi"], {"LABS_LOAD_IN_4BIT": "1", "LABS_LOAD_IN_8BIT": "1"}, "load_in_4bit and load_in_8bit are both on"),
        (["--prompt", "hi", "--model", "nobody-org/nothing-here"], {}, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        (["--messages-json", "[{]"], {}, "--messages-json is not valid JSON"),
    ],
)
def test_configuration_and_usage_errors_exit_2(args: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output


def test_prompt_and_messages_are_exclusive() -> None:
    result = runner.invoke(app, ["--prompt", "a", "--messages-json", "[]"])
    assert result.exit_code == 2 and "exactly one of --prompt or --messages-json" in result.output


def test_prompt_longer_than_the_context_is_refused(tiny_model_dir: Path) -> None:
    result = runner.invoke(app, ["--model", str(tiny_model_dir), "--prompt", "word " * 300, "--max-new-tokens", "4"])
    assert result.exit_code == 2
    assert "the prompt has 331 tokens but tiny-model0's context is 256 tokens" in " ".join(result.stderr.split())


def test_show_config_lists_values_with_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (Path.cwd() / "labs.toml").write_text("[generation]\ntop_p = 0.5\n")
    monkeypatch.setenv("LABS_TOP_K", "7")
    result = runner.invoke(app, ["--show-config", "--temperature", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["key"]: row for row in report["settings"]}
    assert (rows["generation.top_p"]["value"], rows["generation.top_p"]["source"]) == (0.5, f"file {Path.cwd() / 'labs.toml'}")
    assert (rows["generation.top_k"]["value"], rows["generation.top_k"]["source"]) == (7, "env LABS_TOP_K")
    assert (rows["generation.temperature"]["value"], rows["generation.temperature"]["source"]) == (0.1, "flag --temperature")
    assert rows["generation.max_new_tokens"]["source"] == "default"
    assert "smollm2-135m-instruct" in report["resolved"]["model"]
    assert report["resolved"]["dtype"].startswith(("fp32", "bf16", "fp16"))
    table = runner.invoke(app, ["--show-config"])
    assert table.exit_code == 0 and "generation.top_p" in table.stdout and "env LABS_TOP_K" in table.stdout


def test_show_gpu_works_without_a_gpu() -> None:
    result = runner.invoke(app, ["--show-gpu"])
    assert result.exit_code == 0
    import torch

    if not torch.cuda.is_available():
        assert "No CUDA GPU is available" in result.stdout
    assert "native bf16" in result.stdout
    report = json.loads(runner.invoke(app, ["--show-gpu", "--json"]).stdout)
    assert report["cuda_available"] == torch.cuda.is_available() and "cpu" in report
