"""OpenAI's Batch API (/v1/files, /v1/batches) driven by the official openai SDK on the tiny model."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.api.conftest import LiveServer, error_of, start_server, write_settings

pytestmark = pytest.mark.timeout(600)

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "labs-home"


def serve(tiny_model_dir: Path, labs_cache_dir: Path, home: Path, toml: str = "", **env: str) -> LiveServer:
    """A server on the tiny model keeping its files and jobs in `home` (a second one resumes them)."""
    settings = write_settings(home.parent / f"server-{time.monotonic_ns()}", toml, LABS_MODEL=str(tiny_model_dir),
                              LABS_CACHE_DIR=str(labs_cache_dir), LABS_KV_CACHE_MEMORY="64MiB",
                              LABS_HOME=str(home), LABS_PRELOAD_ON_START="true", **env)
    return start_server(settings)


def client_of(server: LiveServer, key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def chat_line(custom_id: str, content: str, max_tokens: int = 4, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0, **body}}


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.1)


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_of_chat_requests_answers_each_as_the_endpoint_would(tiny_model_dir: Path, labs_cache_dir: Path,
                                                                     home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home)
    try:
        client = client_of(server)
        questions = {f"q{i}": f"Question number {i}" for i in range(6)}
        uploaded = client.files.create(file=("requests.jsonl", jsonl([chat_line(k, v) for k, v in questions.items()])),
                                       purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.status == "processed" and uploaded.bytes > 0
        assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                      metadata={"job": "test"})
        assert batch.status == "validating" and batch.metadata == {"job": "test"}
        batch = wait_for(client, batch.id, {"completed", "failed"})
        assert batch.status == "completed", batch
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 6, 0)
        assert batch.error_file_id is None and batch.completed_at and batch.in_progress_at
        output = results(client, batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(questions)
        for line in output:  # the same answer as the endpoint gives directly
            direct = client.chat.completions.create(model=line["response"]["body"]["model"], messages=[{"role": "user", "content": questions[line["custom_id"]]}],
                                                    max_tokens=4, temperature=0)
            assert line["response"]["status_code"] == 200 and line["error"] is None
            assert line["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
        usage = batch.usage
        assert usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
        assert usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output) == 24
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert [b.id for b in client.batches.list()] == [batch.id]
        server.wait_idle()
    finally:
        server.stop()


def test_bad_lines_go_to_the_error_file_with_the_reason_and_the_rest_runs(tiny_model_dir: Path, labs_cache_dir: Path,
                                                                          home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home)
    try:
        client = client_of(server)
        lines = [
            chat_line("good-1", "one"),
            b"{not json",
            {"method": "POST", "url": "/v1/chat/completions", "body": {}},
            chat_line("good-1", "again"),  # a custom_id used twice
            {**chat_line("wrong-url", "x"), "url": "/v1/completions"},
            chat_line("streamed", "x", stream=True),
            {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"max_tokens": 2}},
            chat_line("too-long", "x", max_tokens=10**9),
            chat_line("good-2", "two"),
        ]
        uploaded = client.files.create(file=("mixed.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(client, batch.id, {"completed", "failed"})
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (9, 2, 7)
        assert sorted(line["custom_id"] for line in results(client, batch.output_file_id)) == ["good-1", "good-2"]
        errors = results(client, batch.error_file_id)
        refused = {line["error"]["message"].split(":", 1)[0]: line for line in errors if line["error"] is not None}
        assert "not valid JSON" in refused["line 2"]["error"]["message"]
        assert "custom_id must be a non-empty string" in refused["line 3"]["error"]["message"]
        assert "used by an earlier line" in refused["line 4"]["error"]["message"]
        assert "url must be the batch's endpoint" in refused["line 5"]["error"]["message"]
        assert "stream is not available" in refused["line 6"]["error"]["message"]
        answered = {line["custom_id"]: line["response"] for line in errors if line["response"] is not None}
        assert set(answered) == {"no-messages", "too-long"}  # valid lines the endpoint itself refused, with its error
        for response in answered.values():
            assert response["status_code"] == 400 and response["body"]["error"]["message"]
        server.wait_idle()
    finally:
        server.stop()


def test_a_cancelled_batch_keeps_what_finished(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home, LABS_MAX_NUM_SEQS="2")
    try:
        client = client_of(server)
        lines = [chat_line(f"long-{i}", f"story {i}", max_tokens=60, ignore_eos=True) for i in range(40)]
        uploaded = client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch.id).request_counts.completed < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(openai.ConflictError, match="input of a batch that is still running"):
            client.files.delete(uploaded.id)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        batch = wait_for(client, batch.id, {"cancelled"}, timeout=60)
        done = results(client, batch.output_file_id)
        assert 2 <= len(done) == batch.request_counts.completed < 40 and batch.cancelled_at
        assert all(line["response"]["body"]["usage"]["completion_tokens"] == 60 for line in done)  # none cut short
        server.wait_idle()  # the requests in flight were aborted
        assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError, match="no file with id"):
            client.files.retrieve(uploaded.id)
    finally:
        server.stop()


def test_a_restart_in_the_middle_of_a_batch_resumes_it_without_redoing_or_losing_a_line(
        tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    lines = [chat_line(f"r{i}", f"resume {i}", max_tokens=24, ignore_eos=True) for i in range(30)]
    first = serve(tiny_model_dir, labs_cache_dir, home, LABS_MAX_NUM_SEQS="2")
    try:
        client = client_of(first)
        uploaded = client.files.create(file=("resume.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch.id).request_counts.completed < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.stop()
    partial = [json.loads(line) for line in (home / "batches" / f"{batch.id}.output.jsonl").read_text().splitlines()]
    assert 4 <= len(partial) < 30
    second = serve(tiny_model_dir, labs_cache_dir, home, LABS_MAX_NUM_SEQS="2")
    try:
        client = client_of(second)
        batch = wait_for(client, batch.id, {"completed", "failed"})
        assert batch.status == "completed"
        output = results(client, batch.output_file_id)
        ids = [line["custom_id"] for line in output]
        assert sorted(ids) == sorted(f"r{i}" for i in range(30))  # each exactly once
        assert [line["id"] for line in output[:len(partial)]] == [line["id"] for line in partial]  # finished ones kept, not redone
        assert (batch.request_counts.completed, batch.request_counts.failed) == (30, 0)
    finally:
        second.stop()


def test_a_thousand_small_requests(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home)
    try:
        client = client_of(server)
        lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                  "body": {"prompt": f"Item {i}:", "max_tokens": 1, "temperature": 0}} for i in range(1000)]
        uploaded = client.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
        batch = wait_for(client, batch.id, {"completed", "failed"}, timeout=500)
        assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 1000, 0)
        output = results(client, batch.output_file_id)
        assert len({line["custom_id"] for line in output}) == 1000
        assert all(line["response"]["body"]["usage"]["completion_tokens"] == 1 for line in output)
    finally:
        server.stop()


def test_batch_and_file_requests_that_cannot_be_served_say_why(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home, LABS_MAX_FILE_SIZE="1KiB")
    try:
        client = client_of(server)
        with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
            client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data")
        with pytest.raises(openai.APIStatusError, match="LABS_MAX_FILE_SIZE") as caught:
            client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert caught.value.status_code == 413
        assert not list((home / "files").glob("*")), "a refused upload leaves nothing behind"
        with pytest.raises(openai.BadRequestError, match="no file with id"):
            client.batches.create(input_file_id="file-0123456789abcdef01234567", endpoint="/v1/chat/completions",
                                  completion_window="24h")
        small = client.files.create(file=("s.jsonl", jsonl([chat_line("a", "b")])), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="endpoint must be one of"):
            client.batches.create(input_file_id=small.id, endpoint="/v1/moderations", completion_window="24h")
        with pytest.raises(openai.BadRequestError, match="completion_window must be '24h'"):
            client.batches.create(input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError, match="no batch with id"):
            client.batches.retrieve("batch_0123456789abcdef01234567")
        with pytest.raises(openai.NotFoundError, match="no file with id"):
            client.files.content("file-..%2F..%2Fetc%2Fpasswd")
        not_text = client.files.create(file=("bin.jsonl", b"\xff\xfe\x00garbage\n"), purpose="batch")
        failed = wait_for(client, client.batches.create(input_file_id=not_text.id, endpoint="/v1/chat/completions",
                                                        completion_window="24h").id, {"failed", "completed"})
        assert failed.status == "failed" and failed.errors.data[0].code == "invalid_file"
        assert "not UTF-8" in failed.errors.data[0].message
        empty = client.files.create(file=("empty.jsonl", b"\n\n"), purpose="batch")
        failed = wait_for(client, client.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions",
                                                        completion_window="24h").id, {"failed", "completed"})
        assert failed.status == "failed" and failed.errors.data[0].code == "empty_file"
        with pytest.raises(openai.ConflictError, match="already failed"):
            client.batches.cancel(failed.id)
        with server.client() as raw:  # the same answers in OpenAI's error shape over plain HTTP
            error_of(raw.post("/v1/batches", json={"input_file_id": small.id, "endpoint": "/v1/x", "completion_window": "24h"}), 400)
            error_of(raw.get("/v1/batches/nope"), 404)
    finally:
        server.stop()


def test_batches_behind_an_api_key(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home, LABS_API_KEY="sk-team")
    try:
        with pytest.raises(openai.AuthenticationError):
            client_of(server, "sk-wrong").files.list()
        client = client_of(server, "sk-team")
        uploaded = client.files.create(file=("k.jsonl", jsonl([chat_line("k", "keyed")])), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(client, batch.id, {"completed", "failed"})
        assert (batch.status, batch.request_counts.completed) == ("completed", 1)  # its lines need no key of their own
        with server.client() as raw:  # nor can a client pass for a batch line
            error_of(raw.get("/v1/files", headers={"x-labs-batch-token": "guess"}), 401)
    finally:
        server.stop()


def test_batch_lines_run_at_batch_priority_beside_interactive_requests(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    server = serve(tiny_model_dir, labs_cache_dir, home, LABS_MAX_NUM_SEQS="2")
    try:
        client = client_of(server)
        lines = [chat_line(f"p{i}", f"batch {i}", max_tokens=40, ignore_eos=True) for i in range(12)]
        uploaded = client.files.create(file=("p.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while len(running := list(server.engine().core.scheduler.running)) < 2:  # the batch holds both places
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert {seq.priority for seq in running} == {2}  # its lines run at batch priority (the engine's tests: what that does)
        answer = client.chat.completions.create(model=server.state.models.default_id, messages=HELLO, max_tokens=5, temperature=0)
        assert answer.usage.completion_tokens == 5
        batch = wait_for(client, batch.id, {"completed", "failed"})
        output = results(client, batch.output_file_id)
        assert batch.request_counts.completed == 12 and all(
            line["response"]["body"]["usage"]["completion_tokens"] == 40 for line in output)  # the preempted one resumed whole
    finally:
        server.stop()


def test_each_key_sees_only_its_own_files_and_jobs(tiny_model_dir: Path, labs_cache_dir: Path, home: Path) -> None:
    toml = "".join(f'[keys.{name}]\nsha256 = "{hashlib.sha256(f"sk-{name}".encode()).hexdigest()}"\n\n' for name in ("alice", "bob"))
    server = serve(tiny_model_dir, labs_cache_dir, home, toml)
    try:
        alice, bob = client_of(server, "sk-alice"), client_of(server, "sk-bob")
        uploaded = alice.files.create(file=("a.jsonl", jsonl([chat_line("mine", "private")])), purpose="batch")
        batch = alice.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.BadRequestError, match="no file with id"):  # bob cannot run alice's file
            bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(alice, batch.id, {"completed", "failed"})
        assert batch.status == "completed"
        for attempt in (lambda: bob.files.retrieve(uploaded.id), lambda: bob.files.content(batch.output_file_id),
                        lambda: bob.files.delete(uploaded.id), lambda: bob.batches.retrieve(batch.id),
                        lambda: bob.batches.cancel(batch.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
        assert bob.files.list().data == [] and bob.batches.list().data == []
        assert {f.id for f in alice.files.list()} == {uploaded.id, batch.output_file_id}
        assert results(alice, batch.output_file_id)[0]["custom_id"] == "mine"
    finally:
        server.stop()


def test_a_jobs_lines_run_as_its_key_with_its_models_and_limits(tiny_model_dir: Path, labs_cache_dir: Path,
                                                                default_model_dir: Path, home: Path) -> None:
    def digest(name: str) -> str:
        return hashlib.sha256(f"sk-{name}".encode()).hexdigest()

    toml = (f'[models]\nsmol = "{default_model_dir}"\n\n'
            f'[keys.narrow]\nsha256 = "{digest("narrow")}"\nmodels = ["smol"]\n\n'
            f'[keys.metered]\nsha256 = "{digest("metered")}"\nrequests_per_minute = 60\n')
    server = serve(tiny_model_dir, labs_cache_dir, home, toml)
    try:
        narrow = client_of(server, "sk-narrow")
        uploaded = narrow.files.create(file=("n.jsonl", jsonl([chat_line("not-mine", "hi")])), purpose="batch")
        batch = wait_for(narrow, narrow.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                       completion_window="24h").id, {"completed", "failed"})
        refused = results(narrow, batch.error_file_id)  # the default model is not one this key may use
        assert batch.request_counts.failed == 1 and refused[0]["response"]["status_code"] == 404
        assert refused[0]["response"]["body"]["error"]["code"] == "model_not_found"
        metered = client_of(server, "sk-metered")
        lines = [chat_line(f"m{i}", f"metered {i}", max_tokens=1) for i in range(64)]
        uploaded = metered.files.create(file=("m.jsonl", jsonl(lines)), purpose="batch")
        batch = wait_for(metered, metered.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                         completion_window="24h").id, {"completed", "failed"}, timeout=120)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (64, 0)  # over the limit: waited, not failed
        with server.client() as raw:
            usage = raw.get("/v1/usage", headers={"Authorization": "Bearer sk-metered"}).json()
        assert usage["usage"]["requests"] == 64 and usage["usage"]["rate_limited"] >= 1  # the lines are its requests
    finally:
        server.stop()
