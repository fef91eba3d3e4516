"""/docs on: questions are answered from the user's document index, with the sources listed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.cli.chat.conftest import LABS_GEN, run_piped

CORPUS = Path(__file__).resolve().parents[2] / "rag" / "documents" / "corpus"
QUESTION = "How many days of paid vacation do I get each year?"


def test_piped_chat_answers_from_documents(tiny_model_dir: Path, chat_env: dict[str, str], tmp_path: Path) -> None:
    env = {**chat_env, "LABS_QDRANT_PATH": str(tmp_path / "index")}
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("leave-policy.md", "remote-work.txt", "product-faq.html"):
        shutil.copy(CORPUS / name, folder / name)
    ingest = subprocess.run([LABS_GEN, "rag", "ingest", str(folder)], env=env, capture_output=True, text=True,
                            timeout=240, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr

    lines = ["/set max_tokens 5", "/docs maybe", "/docs on", QUESTION, "What was my largest expense?", "/stats",
             "/save docs", "/docs off", "Hello", "/help", "/stats", "/exit"]
    # The tiny model's answer is noise (256-token context: the sources are cut to fit); the sources are not.
    result = run_piped(["chat", "--model", str(tiny_model_dir)], lines, env)
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "\x1b" not in out + err
    assert "error: usage: /docs on|off" in err
    assert f"answering from your documents ({tmp_path / 'index'})" in out
    assert err.count("sources from your documents:") == 1  # the answer after /docs off has none
    first = err.split("sources from your documents:\n", 1)[1].splitlines()[0]
    assert first.startswith("  [1] ") and "leave-policy.md" in first and ", chunk " in first and ", score 0." in first
    assert err.count(" tokens, first token ") == 2
    assert "$1,999.00" in out and "answered exactly from your transactions" in err  # the data still answers first
    assert "from your documents | 1" in out and "from your data | 1" in out and "documents | on" in out
    assert "answering without your documents" in out and "documents | off" in out
    assert "/docs on|off" in out and "Answers from your documents are off" in out  # /help
    saved = json.loads((Path(env["LABS_HOME"]) / "conversations" / "docs.json").read_text())
    assert saved["messages"][0] == {"role": "user", "content": QUESTION}  # the question, not the sources prompt
    assert saved["system"] is None
