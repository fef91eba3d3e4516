"""`--server URL`: the same chat through a running labs-api (OpenAI API, streaming)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import SHIPPED_TRANSACTIONS, start_server, write_settings
from tests.cli.chat.conftest import run_piped


def test_chat_through_a_live_server(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                    chat_env: dict[str, str]) -> None:
    settings = write_settings(tmp_path_factory.mktemp("chat-server"), LABS_MODEL=str(tiny_model_dir),
                              LABS_CACHE_DIR=str(labs_cache_dir), LABS_KV_CACHE_MEMORY="64MiB", LABS_API_KEY="sesame",
                              LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS))
    server = start_server(settings)
    try:
        lines = ["/set max_tokens 5", "Hello there", "What was my largest expense?", "/set max_tokens 999999",
                 "Again", "/stats", "/exit"]
        result = run_piped(["chat", "--server", server.url, "--api-key", "sesame"], lines, chat_env)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr
        err = result.stderr
        assert f"server {server.url}/v1" in err
        assert err.count(" tokens, first token ") == 1 and "5 tokens" in err  # usage from the server
        assert "$1,999.00" in result.stdout and "answered exactly from your transactions" in err
        assert "error: " in err and "max_tokens" in err  # the server's own message, and the chat goes on
        assert "answers | 2" in result.stdout and "from your data | 1" in result.stdout

        result = run_piped(["chat", "--server", server.url, "--api-key", "wrong"], ["Hi"], chat_env)
        assert result.returncode != 0 and "refused the chat" in result.stderr and "API key" in result.stderr
        server.wait_idle()
    finally:
        server.stop()


def test_documents_through_a_live_server(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path: Path,
                                         chat_env: dict[str, str]) -> None:
    """/docs on sends use_rag; the server's first chunk carries the sources, shown under the answer."""
    import shutil
    import subprocess

    from tests.cli.chat.conftest import LABS_GEN
    from tests.cli.chat.test_documents import CORPUS, QUESTION

    index = tmp_path / "index"
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("leave-policy.md", "remote-work.txt"):
        shutil.copy(CORPUS / name, folder / name)
    ingest = subprocess.run([LABS_GEN, "rag", "ingest", str(folder)], env={**chat_env, "LABS_QDRANT_PATH": str(index)},
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    settings = write_settings(tmp_path / "server", LABS_MODEL=str(tiny_model_dir), LABS_CACHE_DIR=str(labs_cache_dir),
                              LABS_KV_CACHE_MEMORY="64MiB", LABS_QDRANT_PATH=str(index))
    server = start_server(settings)
    try:
        lines = ["/set max_tokens 5", "/docs on", QUESTION, "/docs off", "Hello", "/stats", "/exit"]
        result = run_piped(["chat", "--server", server.url], lines, chat_env)
        assert result.returncode == 0, result.stderr
        err = result.stderr
        assert err.count("sources from your documents:") == 1
        first = err.split("sources from your documents:\n", 1)[1].splitlines()[0]
        assert first.startswith("  [1] ") and "leave-policy.md" in first and ", score 0." in first
        assert err.count(" tokens, first token ") == 2
        assert "from your documents | 1" in result.stdout
        server.wait_idle()
    finally:
        server.stop()
