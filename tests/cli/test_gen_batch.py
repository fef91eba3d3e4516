"""`labs-gen batch`: a file of requests on the local engine, OpenAI's batch lines in and out, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def env(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LABS_MODEL": str(tiny_model_dir), "LABS_CACHE_DIR": str(labs_cache_dir),
            "LABS_HOME": str(tmp_path / "home"), "LABS_KV_CACHE_MEMORY": "64MiB", "HF_HUB_OFFLINE": "1"}


def labs_gen(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("labs-gen")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, env=env)


def chat(custom_id: str, content: str, max_tokens: int = 6) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}}


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_request_file_runs_to_openai_batch_output_lines(env: dict[str, str], tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = [chat(f"c{i}", f"Question {i}") for i in range(5)] + [{"custom_id": "bad", "method": "GET"}]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
    out = tmp_path / "results.jsonl"
    result = labs_gen(["batch", str(requests), "-o", str(out)], env)
    assert result.returncode == 0, result.stderr
    assert "5 answered, 2 failed" in result.stderr
    answers = read(out)
    assert sorted(line["custom_id"] for line in answers) == [f"c{i}" for i in range(5)]
    for line in answers:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] <= 6
    errors = read(tmp_path / "results.errors.jsonl")
    assert [e["error"]["message"].split(":")[0] for e in errors] == ["line 6", "line 7"]
    again = labs_gen(["batch", str(requests), "-o", str(out)], env)  # nothing left to do: nothing redone
    assert again.returncode == 0 and "0 answered, 0 failed, 5 done before" in again.stderr, again.stderr
    assert read(out) == answers and len(read(tmp_path / "results.errors.jsonl")) == 2


def test_the_same_answers_as_one_shot_runs_and_prompts_from_a_text_file(env: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\n\nWhat is two plus two?\n")
    out = tmp_path / "answers.jsonl"
    result = labs_gen(["batch", str(prompts), "-o", str(out), "--max-new-tokens", "8", "--temperature", "0"], env)
    assert result.returncode == 0, result.stderr
    answers = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in read(out)}
    assert set(answers) == {"line-1", "line-3"}
    one_shot = labs_gen(["--prompt", "What is two plus two?", "--max-new-tokens", "8", "--temperature", "0", "--no-rag"], env)
    assert one_shot.returncode == 0, one_shot.stderr
    assert one_shot.stdout.strip() == answers["line-3"].strip()


def test_an_interrupted_run_resumes_without_redoing_or_losing_a_line(env: dict[str, str], tmp_path: Path) -> None:
    requests = tmp_path / "long.jsonl"
    lines = [{**chat(f"r{i}", f"Story {i}"), "body": {**chat("", f"Story {i}", 40)["body"], "ignore_eos": True}} for i in range(40)]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "long.out.jsonl"
    script = Path(sys.executable).with_name("labs-gen")
    process = subprocess.Popen([str(script), "batch", str(requests), "-o", str(out)], env={**env, "LABS_MAX_NUM_SEQS": "2"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(read(out)) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() is not None else "slow"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command again" in stderr, stderr
    first = read(out)
    assert 3 <= len(first) < 40
    with out.open("a") as handle:  # and a line cut short, as a crash while writing would leave
        handle.write('{"id": "batch_req_x", "custom_id": "r')
    result = labs_gen(["batch", str(requests), "-o", str(out)], env)
    assert result.returncode == 0, result.stderr
    final = read(out)
    assert sorted(line["custom_id"] for line in final) == sorted(f"r{i}" for i in range(40))  # each exactly once
    assert final[:len(first)] == first


def test_files_that_cannot_be_run_are_refused_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    missing = labs_gen(["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")], env)
    assert missing.returncode != 0 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text('{"custom_id": "a"}\n')
    refused = labs_gen(["batch", str(nothing), "-o", str(tmp_path / "o.jsonl")], env)
    assert refused.returncode != 0 and "no line names an endpoint" in refused.stderr and "Traceback" not in refused.stderr
    wrong = labs_gen(["batch", str(nothing), "-o", str(tmp_path / "o.jsonl"), "--endpoint", "/v1/nope"], env)
    assert wrong.returncode == 2 and "--endpoint" in wrong.stderr
