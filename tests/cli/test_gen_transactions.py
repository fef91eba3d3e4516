"""`labs-gen` answers questions about the user's transactions exactly, without loading the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from labs.cli.gen import app

runner = CliRunner()
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "all_transactions.csv"


def largest_expense_text() -> str:
    table = pd.read_csv(SHIPPED)
    row = table.loc[table["Amount"].idxmin()]
    return f"${-row['Amount']:,.2f}"


def test_largest_expense_from_the_shipped_data_in_the_working_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(SHIPPED, tmp_path / "data" / "all_transactions.csv")
    monkeypatch.chdir(tmp_path)  # the default LABS_TRANSACTIONS_CSV is relative: data/all_transactions.csv
    result = runner.invoke(app, ["--prompt", "What was my largest expense?", "--json", "--model", "no-such-model"])
    assert result.exit_code == 0, result.output  # the model is never resolved nor loaded
    report = json.loads(result.stdout)
    assert report["source"] == "transactions" and largest_expense_text() in report["text"]
    assert report["data"]["rows"][0]["amount"] < 0 and report["seconds"] < 1


def test_a_data_answer_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    """In a fresh process, as from the shell: the answer comes from the table, and the model's
    machinery (several seconds of imports) is never loaded."""
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from labs.cli.gen import app\n"
        "result = CliRunner().invoke(app, ['--prompt', 'How much did I spend on fuel in March 2024?'])\n"
        "print(result.exit_code, repr(result.stdout))\n"
        "print(sorted(name for name in ('torch', 'transformers', 'sentence_transformers') if name in sys.modules))\n"
    )
    env = {**os.environ, "LABS_TRANSACTIONS_CSV": str(SHIPPED)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    status, imported = done.stdout.strip().splitlines()[-2:]
    assert status.startswith("0 ") and "$285.80" in status and "Fuel" in status, done.stdout
    assert imported == "[]", f"imported {imported} for a data answer"


def test_no_rag_and_general_questions_go_to_the_model(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("LABS_TRANSACTIONS_CSV", str(SHIPPED))
    base = ["--model", str(tiny_model_dir), "--max-new-tokens", "3", "--json"]
    for args in (["--prompt", "What was my largest expense?", "--no-rag"], ["--prompt", "What is the largest ocean?"]):
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["source"] == "model" and report["completion_tokens"] == 3


def test_a_missing_configured_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABS_TRANSACTIONS_CSV", str(tmp_path / "nope.csv"))
    result = runner.invoke(app, ["--prompt", "What was my largest expense?"])
    assert result.exit_code == 2
    assert "nope.csv" in result.output and "LABS_TRANSACTIONS_CSV" in result.output


def test_json_schema_flag_constrains_the_output(tmp_path: Path, tiny_model_dir: Path) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    result = runner.invoke(app, ["--model", str(tiny_model_dir), "--prompt", "anything", "--json-schema",
                                 str(tmp_path / "schema.json"), "--temperature", "1", "--seed", "3", "--max-new-tokens", "60", "--json"])
    assert result.exit_code == 0, result.output
    value = json.loads(json.loads(result.stdout)["text"])
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and 0 <= value["n"] <= 9
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(app, ["--model", str(tiny_model_dir), "--prompt", "x", "--json-schema", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "not valid JSON" in bad.output
