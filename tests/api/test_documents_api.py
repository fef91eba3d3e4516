"""Document retrieval through the API: upload, path ingestion, list, delete, query with sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveServer, error_of, start_server

CORPUS = Path(__file__).resolve().parents[1] / "rag" / "documents" / "corpus"
QUESTION = "How many days of paid vacation do I get each year?"


@pytest.fixture(scope="module")
def docs_server(tiny_settings_factory: Any) -> LiveServer:
    server = start_server(tiny_settings_factory(LABS_RAG_INGEST_ROOT=str(CORPUS), LABS_PRELOAD_ON_START="true"))
    yield server
    server.stop()


def _upload(client: Any, *names: str) -> dict[str, Any]:
    files = [("file", (name, (CORPUS / name).read_bytes())) for name in names]
    response = client.post("/v1/rag/documents", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def test_upload_list_query_delete(docs_server: LiveServer) -> None:
    with docs_server.client() as client:
        report = _upload(client, "leave-policy.md", "remote-work.txt", "product-faq.html")
        assert [f["status"] for f in report["files"]] == ["ingested"] * 3
        again = _upload(client, "leave-policy.md")
        assert again["files"][0]["status"] == "unchanged"
        listed = client.get("/v1/rag/documents").json()["data"]
        assert sorted(d["source"] for d in listed) == ["leave-policy.md", "product-faq.html", "remote-work.txt"]

        answer = client.post("/v1/rag/query", json={"question": QUESTION, "max_tokens": 8}).json()
        assert answer.get("source") == "documents" and answer["answer"] is not None, answer
        assert answer["sources"][0]["source"] == "leave-policy.md" and answer["sources"][0]["snippet"]
        assert answer["usage"]["completion_tokens"] <= 8

        with client.stream("POST", "/v1/rag/query", json={"query": QUESTION, "max_tokens": 5, "stream": True}) as stream:
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        first = json.loads(events[0])
        assert first["sources"][0]["source"] == "leave-policy.md"  # the sources come before the tokens
        assert "finish_reason" in json.loads(events[-2])

        leave = next(d for d in listed if d["source"] == "leave-policy.md")
        assert client.delete(f"/v1/rag/documents/{leave['document_id']}").json() == {"id": leave["document_id"], "deleted": True}
        error = error_of(client.delete(f"/v1/rag/documents/{leave['document_id']}"), 404)
        assert error["code"] == "document_not_found"
        answer = client.post("/v1/rag/query", json={"question": QUESTION, "max_tokens": 2}).json()
        assert all(s["source"] != "leave-policy.md" for s in answer["sources"])


def test_chat_with_use_rag_returns_the_sources(docs_server: LiveServer) -> None:
    with docs_server.client() as client:
        _upload(client, "leave-policy.md", "security-policy.md")
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "use_rag": True}
        response = client.post("/v1/chat/completions", json=body).json()
        assert response["rag"]["source"] == "documents"
        assert response["rag"]["sources"][0]["source"] == "leave-policy.md"
        plain = client.post("/v1/chat/completions", json={**body, "use_rag": None}).json()
        assert "rag" not in plain and plain["usage"]["prompt_tokens"] < response["usage"]["prompt_tokens"]


def test_path_ingestion_is_confined_to_the_ingest_root(docs_server: LiveServer, tiny_server: LiveServer) -> None:
    with docs_server.client() as client:
        report = client.post("/v1/rag/documents", json={"paths": ["onboarding.md", "office-guide.html"]}).json()
        assert {f["status"] for f in report["files"]} <= {"ingested", "unchanged"} and len(report["files"]) == 2
        error = error_of(client.post("/v1/rag/documents", json={"path": "../../conftest.py"}), 403)
        assert error["code"] == "path_not_allowed"
        error = error_of(client.post("/v1/rag/documents", json={"path": "no-such-file.md"}), 400)
        assert "no-such-file.md" in error["message"]
        error = error_of(client.post("/v1/rag/documents", json={}), 400)
        assert error["param"] == "path"
    with tiny_server.client() as client:  # no LABS_RAG_INGEST_ROOT: uploads only
        error = error_of(client.post("/v1/rag/documents", json={"path": str(CORPUS / "onboarding.md")}), 403)
        assert "LABS_RAG_INGEST_ROOT" in error["message"]


def test_bad_uploads_are_reported_per_file(docs_server: LiveServer) -> None:
    with docs_server.client() as client:
        files = [("file", ("notes.exe", b"MZ\x00\x01")), ("file", ("it-helpdesk.txt", (CORPUS / "it-helpdesk.txt").read_bytes()))]
        report = client.post("/v1/rag/documents", files=files).json()
        statuses = {f["source"]: f["status"] for f in report["files"]}
        assert statuses["notes.exe"] == "failed" and statuses["it-helpdesk.txt"] in ("ingested", "unchanged")
        error = error_of(client.post("/v1/rag/query", json={}), 400)
        assert error["param"] == "question"
