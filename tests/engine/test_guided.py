"""Constrained decoding in the engine: grammars hold even for a random model, and cost others nothing."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from labs.engine.guided import GuidedDecoding
from labs.engine.sampling import SamplingParams, SamplingParamsError
from tests.engine.test_engine import Collector, assert_cache_empty, prompts_of_lengths, run_all, tiny, tiny_core  # noqa: F401

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}


def schema_params(schema: dict[str, Any], **kwargs: Any) -> SamplingParams:
    return SamplingParams(max_tokens=200, guided=GuidedDecoding("json_schema", json.dumps(schema)), **kwargs)


def test_random_model_output_validates_against_the_schema(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    collect = Collector()
    prompts = prompts_of_lengths([5, 9, 14])
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, schema_params(PERSON, temperature=1.0, seed=i, n=2), collect)
    run_all(core)
    for i in range(len(prompts)):
        for index in range(2):
            assert collect.final(f"r{i}", index).finish_reason == "stop"
            jsonschema.validate(json.loads(collect.text(f"r{i}", index)), PERSON)
    assert_cache_empty(core)


# json_object is tested on the real model (tests/api): a random model fills an open-ended key forever.
@pytest.mark.parametrize(("guided", "check"), [
    (GuidedDecoding("regex", r"[0-9]{3}-[a-z]{2}"), lambda text: len(text) == 6 and text[3] == "-"),
    (GuidedDecoding("choice", json.dumps(["red", "green", "blue"])), lambda text: text in ("red", "green", "blue")),
])
def test_other_grammars(tiny, guided: GuidedDecoding, check: Any) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    collect = Collector()
    core.add_request("g", prompts_of_lengths([7])[0], SamplingParams(max_tokens=120, temperature=0.8, seed=1, guided=guided), collect)
    run_all(core)
    text = collect.text("g")
    assert collect.final("g").finish_reason == "stop" and check(text), text


def test_constrained_request_leaves_batched_greedy_outputs_unchanged(tiny) -> None:  # noqa: ANN001
    prompts = prompts_of_lengths([6, 11, 8])
    alone = tiny_core(tiny)
    expected = Collector()
    for i, prompt in enumerate(prompts):
        alone.add_request(f"p{i}", prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), expected)
    run_all(alone)
    mixed = tiny_core(tiny)
    got = Collector()
    for i, prompt in enumerate(prompts):
        mixed.add_request(f"p{i}", prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), got)
        mixed.add_request(f"c{i}", prompt, schema_params(PERSON, temperature=0), got)
    run_all(mixed)
    for i in range(len(prompts)):
        assert got.tokens(f"p{i}") == expected.tokens(f"p{i}")
    assert_cache_empty(mixed)


@pytest.mark.parametrize(("guided", "fragment"), [
    (GuidedDecoding("json_schema", "{not json"), "response_format"),
    (GuidedDecoding("json_schema", json.dumps({"type": "nope"})), "nope"),
    (GuidedDecoding("regex", "(unclosed", field="guided_regex"), "guided_regex"),
])
def test_invalid_grammars_are_refused_before_queueing(tiny, guided: GuidedDecoding, fragment: str) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    with pytest.raises(SamplingParamsError) as caught:
        core.validate([1, 2, 3], SamplingParams(max_tokens=5, guided=guided))
    assert fragment in str(caught.value)
    assert not core.has_work


def test_grammar_cache_is_bounded(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    for i in range(300):
        core.guide.validate(GuidedDecoding("json_schema", json.dumps({"type": "object", "properties": {f"k{i}": {"type": "integer"}}})))
    assert len(core.guide._grammars) == 256
