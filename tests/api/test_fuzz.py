"""Property-based fuzzing: no input makes the server answer with a 5xx.

Schemathesis generates requests for every operation of the OpenAPI schema (valid and invalid
ones); Hypothesis builds chat bodies with arbitrary Unicode (lone surrogates included) and values of
any type in the sampling fields. Both run against a live tiny-model server whose LABS_MAX_TOKENS_LIMIT
is 8, so nothing generates for long. Derandomized and bounded: the same examples on every run.
`scripts/fuzz_api.sh` is the long, random version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.api.conftest import SHIPPED_TRANSACTIONS, LiveServer, start_server

FUZZ_SETTINGS = settings(max_examples=6, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(tiny_settings_factory: Any) -> Iterator[LiveServer]:
    settings_ = tiny_settings_factory(
        LABS_PRELOAD_ON_START="true", LABS_MAX_TOKENS_LIMIT="8", LABS_MAX_N="2", LABS_MAX_MESSAGES="8",
        LABS_MAX_INPUT_CHARS="2000", LABS_MAX_EMBEDDING_INPUTS="4", LABS_MAX_BODY_SIZE="64KiB",
        LABS_MAX_LOADED_MODELS="1", LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS))
    server = start_server(settings_)
    yield server
    server.stop()


def test_no_operation_answers_with_a_server_error(fuzz_server: LiveServer) -> None:
    """Every operation, with valid and invalid requests. (One loop, not schemathesis' pytest
    parametrization: on pytest 9 it fails with AttributeError: _nodeid.)"""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @FUZZ_SETTINGS
        def check(case: Any) -> None:
            case.validate_response(case.call(timeout=120), checks=[not_a_server_error])

        try:
            check()
        except Exception as error:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {error}")
    assert operations >= 20, f"the schema lists only {operations} operations"
    assert not failures, "\n\n".join(failures)


# ------------------------------------------------------------------------------------ chat bodies

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
text = st.lists(st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=12), surrogates,
                          st.sampled_from(["<|im_start|>", "<|im_end|>", "\u0301" * 40, "\U0001F468\u200d\U0001F469",
                                           "\x00", "\U0010ffff", "{{ raise }}", "{%"])),
                max_size=4).map("".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), text)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                        max_leaves=6)
SAMPLING_FIELDS = ["max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "seed",
                   "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs",
                   "top_logprobs", "stream", "stream_options", "response_format", "tools", "tool_choice",
                   "guided_choice", "guided_regex", "min_tokens", "ignore_eos", "stop_token_ids", "model", "use_rag"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
     "content": st.one_of(text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2),
                          anything)},
    optional={"name": text, "tool_call_id": text, "tool_calls": anything})
chat_body = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=1, max_size=3), "max_tokens": st.integers(1, 8)},
    optional={field: anything for field in SAMPLING_FIELDS})


@given(body=chat_body)
@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_chat_bodies_are_never_a_server_error(fuzz_server: LiveServer, body: dict[str, Any]) -> None:
    raw = json.dumps(body)  # ASCII escapes: lone surrogates reach the server as "\ud800", as JSON allows
    with httpx.Client(base_url=fuzz_server.url, timeout=120) as client:
        response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (raw[:500], response.text[:500])
