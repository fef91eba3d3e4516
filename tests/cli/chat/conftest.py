"""Helpers to run the real `labs-gen` chat: in a pseudo-terminal (pexpect) or with piped stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LABS_GEN = str(Path(sys.executable).with_name("labs-gen"))
SHIPPED_TRANSACTIONS = Path(__file__).resolve().parents[3] / "data" / "all_transactions.csv"


@pytest.fixture
def chat_env(tmp_path: Path, labs_cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABS_")}
    env.update(LABS_HOME=str(tmp_path / "home"), LABS_CACHE_DIR=str(labs_cache_dir), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PROMPT_TOOLKIT_NO_CPR="1",
               TERM="xterm-256color", LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS), COLUMNS="120")
    return env


def run_piped(args: list[str], lines: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LABS_GEN, *args], input="".join(line + "\n" for line in lines), env=env, cwd=env["LABS_HOME"].rsplit("/", 1)[0],
                          capture_output=True, text=True, timeout=timeout)
