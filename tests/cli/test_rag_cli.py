"""`labs-gen rag ingest | list | query | delete` on the fixture corpus, with a real local Qdrant index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labs.cli.gen import app

runner = CliRunner()
CORPUS = Path(__file__).resolve().parents[1] / "rag" / "documents" / "corpus"


def test_ingest_list_query_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("LABS_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("LABS_MODEL", str(tiny_model_dir))
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("leave-policy.md", "remote-work.txt", "product-faq.html"):
        (folder / name).write_bytes((CORPUS / name).read_bytes())
    (folder / "broken.pdf").write_bytes(b"not a pdf at all")

    result = runner.invoke(app, ["rag", "ingest", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    statuses = {Path(f["source"]).name: f["status"] for f in json.loads(result.stdout)["files"]}
    assert statuses == {"leave-policy.md": "ingested", "remote-work.txt": "ingested", "product-faq.html": "ingested",
                        "broken.pdf": "failed"}
    again = runner.invoke(app, ["rag", "ingest", str(folder / "leave-policy.md"), "--json"])
    assert json.loads(again.stdout)["files"][0]["status"] == "unchanged"

    listed = json.loads(runner.invoke(app, ["rag", "list", "--json"]).stdout)
    assert len(listed) == 3

    answer = runner.invoke(app, ["rag", "query", "How many days of paid vacation do I get each year?",
                                 "--max-new-tokens", "5", "--json"])
    assert answer.exit_code == 0, answer.output
    report = json.loads(answer.stdout)
    assert Path(report["sources"][0]["source"]).name == "leave-policy.md" and "answer" in report

    leave = next(d for d in listed if d["source"].endswith("leave-policy.md"))
    assert runner.invoke(app, ["rag", "delete", leave["document_id"]]).exit_code == 0
    missing = runner.invoke(app, ["rag", "delete", leave["document_id"]])
    assert missing.exit_code == 1 and "labs-gen rag list" in missing.output
    assert len(json.loads(runner.invoke(app, ["rag", "list", "--json"]).stdout)) == 2


def test_ingest_of_a_missing_path_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABS_QDRANT_PATH", str(tmp_path / "index"))
    result = runner.invoke(app, ["rag", "ingest", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.output
