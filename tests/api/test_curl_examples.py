"""The curl examples of the original documentation, run as written (only host and model name changed)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.api.conftest import LiveServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

MODEL = "smollm2-135m-instruct"

EXAMPLES = {
    "health": "curl http://localhost:8000/health",
    "health_silent": "curl -s http://localhost:8000/health",
    "models": "curl http://localhost:8000/v1/models",
    "chat": """curl -X POST http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "messages": [{"role": "user", "content": "Explain tensors"}],
    "max_tokens": 100,
    "temperature": 0.7
  }'""",
    "chat_stream": """curl -N -X POST http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "messages": [{"role": "user", "content": "Count to 10"}],
    "max_tokens": 50,
    "stream": true
  }'""",
    "chat_cheatsheet": """curl -s -X POST http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "messages": [{"role":"user","content":"Explain BF16 briefly"}],
    "max_tokens": 64
  }'""",
    "chat_stream_one_line": """curl -N -s -X POST http://localhost:8000/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{"model":"Qwen/Qwen2.5-7B-Instruct","messages":[{"role":"user","content":"Write a haiku about GPUs"}],"stream":true,"max_tokens":64}'""",
    "embeddings": """curl -s -X POST http://localhost:8000/v1/embeddings \\
  -H "Content-Type: application/json" \\
  -d '{"input":"hello world","model":"google/embeddinggemma-300m"}'""",
    "similarities": """curl -s -X POST http://localhost:8000/v1/similarities \\
  -H "Content-Type: application/json" \\
  -d '{"sentences":["cat","feline","quantum computer"]}'""",
    "generate": """curl -s -X POST http://localhost:8000/generate -H "Content-Type: application/json" -d '{"prompt":"Explain BF16","max_new_tokens":32}'""",
    "generate_stream": """curl -N -s -X POST http://localhost:8000/generate/stream -H "Content-Type: application/json" -d '{"prompt":"Stream one sentence about CUDA.","max_new_tokens":32}'""",
}

OFFLINE_MODELS = {"deepseek-ai/DeepSeek-R1-0528-Qwen3-8B": MODEL, "Qwen/Qwen2.5-7B-Instruct": MODEL,
                  "google/embeddinggemma-300m": "all-minilm-l6-v2"}


def run_example(name: str, server: LiveServer) -> str:
    command = EXAMPLES[name].replace("http://localhost:8000", server.url)
    for original, available in OFFLINE_MODELS.items():
        command = command.replace(original, available)
    done = subprocess.run(["bash", "-c", command + " --fail-with-body"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sse_payloads(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("name", ["health", "health_silent"])
def test_health(smol_server: LiveServer, name: str) -> None:
    assert json.loads(run_example(name, smol_server)) == {"status": "ok"}


def test_models(smol_server: LiveServer) -> None:
    assert MODEL in [m["id"] for m in json.loads(run_example("models", smol_server))["data"]]


@pytest.mark.parametrize("name", ["chat", "chat_cheatsheet"])
def test_chat(smol_server: LiveServer, name: str) -> None:
    body = json.loads(run_example(name, smol_server))
    assert body["choices"][0]["message"]["content"].strip()
    assert body["model"] == MODEL


@pytest.mark.parametrize("name", ["chat_stream", "chat_stream_one_line"])
def test_chat_stream(smol_server: LiveServer, name: str) -> None:
    payloads = sse_payloads(run_example(name, smol_server))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()


def test_embeddings(smol_server: LiveServer) -> None:
    body = json.loads(run_example("embeddings", smol_server))
    assert len(body["data"][0]["embedding"]) == 384


def test_similarities(smol_server: LiveServer) -> None:
    matrix = json.loads(run_example("similarities", smol_server))["similarities"]
    assert matrix[0][1] > matrix[0][2]


def test_generate(smol_server: LiveServer) -> None:
    assert json.loads(run_example("generate", smol_server))["text"].strip()


def test_generate_stream(smol_server: LiveServer) -> None:
    out = run_example("generate_stream", smol_server)
    assert "event: done" in out and out.count("data: ") >= 2
