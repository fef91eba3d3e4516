"""Questions about the user's transactions, answered exactly through the API (no model arithmetic)."""

from __future__ import annotations

from typing import Any

import openai
import pandas as pd

from tests.api.conftest import SHIPPED_TRANSACTIONS, LiveServer, error_of, start_server

QUESTION = "What was my largest expense?"


def largest_expense() -> pd.Series:
    table = pd.read_csv(SHIPPED_TRANSACTIONS)
    return table.loc[table["Amount"].idxmin()]


def test_chat_answers_transaction_questions_from_the_data(tiny_server: LiveServer) -> None:
    row = largest_expense()
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0)
    response = client.chat.completions.create(model=tiny_server.state.models.default_id,
                                              messages=[{"role": "user", "content": QUESTION}])
    content = response.choices[0].message.content
    assert f"${-row['Amount']:,.2f}" in content and row["Description"] in content
    rag = response.model_extra["rag"]
    assert rag["source"] == "transactions" and rag["data"]["rows"][0]["date"] == row["Date"]
    streamed = list(client.chat.completions.create(model=tiny_server.state.models.default_id, stream=True,
                                                   messages=[{"role": "user", "content": QUESTION}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == content
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_use_rag_false_sends_the_question_to_the_model(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 5, "use_rag": False}
        response = client.post("/v1/chat/completions", json=body).json()
    assert "rag" not in response and response["usage"]["completion_tokens"] > 0


def test_general_questions_go_to_the_model(tiny_server: LiveServer) -> None:
    with tiny_server.client() as client:
        body = {"messages": [{"role": "user", "content": "What is the total number of planets?"}], "max_tokens": 3}
        response = client.post("/v1/chat/completions", json=body).json()
    assert "rag" not in response and response["usage"]["completion_tokens"] == 3


def test_transactions_query_endpoint(tiny_server: LiveServer) -> None:
    table = pd.read_csv(SHIPPED_TRANSACTIONS)
    fuel = -table.loc[(table["Category"] == "Fuel") & (table["Amount"] < 0), "Amount"].sum()
    with tiny_server.client() as client:
        result = client.post("/v1/rag/transactions/query", json={"question": "How much did I spend on fuel?"}).json()
        assert result["source"] == "transactions"
        assert f"${fuel:,.2f}" in result["answer"]
        assert abs(result["data"]["figures"]["expenses"] - fuel) < 0.005
        same = client.post("/v1/rag/transactions/query", json={"query": "How much did I spend on fuel?"}).json()
        assert same["answer"] == result["answer"]
        error = error_of(client.post("/v1/rag/transactions/query", json={}), 400)
        assert error["param"] == "question"


def test_a_configured_but_missing_file_is_a_server_error_without_paths(tiny_settings_factory: Any, tmp_path: Any) -> None:
    server = start_server(tiny_settings_factory(LABS_TRANSACTIONS_CSV=str(tmp_path / "missing.csv")))
    try:
        with server.client() as client:
            error = error_of(client.post("/v1/rag/transactions/query", json={"question": QUESTION}), 500)
            assert error["code"] == "server_misconfigured" and str(tmp_path) not in error["message"]
    finally:
        server.stop()
