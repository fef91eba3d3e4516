"""SamplingParams: defaults, normalisation and one failing case per rule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from labs.engine.sampling import SamplingParams, SamplingParamsError
from labs.errors import LabsError


def test_defaults() -> None:
    p = SamplingParams()
    assert p.max_tokens is None
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert p.logit_bias is None and p.seed is None
    assert p.stop == [] and p.stop_token_ids == []
    assert p.ignore_eos is False and p.min_tokens == 0 and p.n == 1 and p.logprobs is None
    assert p.greedy is False


def test_greedy_is_temperature_zero() -> None:
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(temperature=0.01).greedy


def test_accepts_boundaries() -> None:
    SamplingParams(
        max_tokens=1,
        temperature=2,
        top_p=1,
        top_k=1,
        min_p=1,
        repetition_penalty=0.01,
        presence_penalty=-2,
        frequency_penalty=2,
        logit_bias={0: -100, 5: 100},
        seed=-(2**63),
        stop=["x"] * 16,
        stop_token_ids=[0],
        min_tokens=1,
        n=16,
        logprobs=20,
    )
    SamplingParams(logprobs=0, min_tokens=0, seed=2**63 - 1, top_p=1e-9)


def test_top_k_minus_one_means_disabled() -> None:
    assert SamplingParams(top_k=-1).top_k == 0


def test_stop_string_becomes_list() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop=None).stop == []  # type: ignore[arg-type]


def test_numbers_are_normalised() -> None:
    p = SamplingParams(temperature=1, logit_bias={3: 5}, stop_token_ids=(7, 8))
    assert isinstance(p.temperature, float)
    assert p.logit_bias == {3: 5.0} and isinstance(p.logit_bias[3], float)
    assert p.stop_token_ids == [7, 8]
    assert SamplingParams(logit_bias={}).logit_bias is None


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("max_tokens", {"max_tokens": 0}, ">= 1, got 0"),
    ("max_tokens", {"max_tokens": 2.5}, "integer"),
    ("max_tokens", {"max_tokens": True}, "integer"),
    ("temperature", {"temperature": -1}, "between 0 and 2, got -1"),
    ("temperature", {"temperature": 2.5}, "between 0 and 2, got 2.5"),
    ("temperature", {"temperature": math.nan}, "between 0 and 2"),
    ("temperature", {"temperature": "hot"}, "number"),
    ("top_p", {"top_p": 0}, "> 0 and <= 1, got 0"),
    ("top_p", {"top_p": 1.5}, "> 0 and <= 1, got 1.5"),
    ("top_k", {"top_k": -2}, "got -2"),
    ("top_k", {"top_k": 1.5}, "integer"),
    ("min_p", {"min_p": -0.1}, "between 0 and 1, got -0.1"),
    ("min_p", {"min_p": 1.1}, "between 0 and 1, got 1.1"),
    ("repetition_penalty", {"repetition_penalty": 0}, "> 0, got 0"),
    ("repetition_penalty", {"repetition_penalty": -1}, "> 0, got -1"),
    ("repetition_penalty", {"repetition_penalty": math.inf}, "finite"),
    ("presence_penalty", {"presence_penalty": -2.1}, "between -2 and 2, got -2.1"),
    ("presence_penalty", {"presence_penalty": 3}, "between -2 and 2, got 3"),
    ("frequency_penalty", {"frequency_penalty": 2.01}, "between -2 and 2, got 2.01"),
    ("logit_bias", {"logit_bias": {1: 101}}, "between -100 and 100, got 101"),
    ("logit_bias", {"logit_bias": {1: -100.5}}, "between -100 and 100, got -100.5"),
    ("logit_bias", {"logit_bias": {-1: 1}}, ">= 0, got -1"),
    ("logit_bias", {"logit_bias": {"12": 1}}, "integers >= 0, got '12'"),
    ("logit_bias", {"logit_bias": [1, 2]}, "mapping"),
    ("seed", {"seed": 2**63}, "between"),
    ("seed", {"seed": "42"}, "integer"),
    ("stop", {"stop": ["x"] * 17}, "between 0 and 16 entries, got 17"),
    ("stop", {"stop": [""]}, "non-empty"),
    ("stop", {"stop": ["a", 3]}, "non-empty strings, got 3"),
    ("stop", {"stop": 3}, "string or a list"),
    ("stop_token_ids", {"stop_token_ids": [-1]}, ">= 0, got -1"),
    ("stop_token_ids", {"stop_token_ids": ["2"]}, "integers"),
    ("stop_token_ids", {"stop_token_ids": "12"}, "list of token ids"),
    ("ignore_eos", {"ignore_eos": 1}, "true or false, got 1"),
    ("min_tokens", {"min_tokens": -1}, ">= 0, got -1"),
    ("min_tokens", {"min_tokens": 11, "max_tokens": 10}, "max_tokens (10), got 11"),
    ("n", {"n": 0}, "between 1 and 16, got 0"),
    ("n", {"n": 17}, "between 1 and 16, got 17"),
    ("logprobs", {"logprobs": -1}, "between 0 and 20, got -1"),
    ("logprobs", {"logprobs": 21}, "between 0 and 20, got 21"),
]


@pytest.mark.parametrize(("field", "kwargs", "fragment"), BAD, ids=[f"{f}-{k}" for f, k, _ in BAD])
def test_rejects_bad_values(field: str, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    message = str(info.value)
    assert message.startswith(field), message
    assert fragment in message, message
    assert info.value.field == field


def test_error_is_a_value_error_and_a_labs_error() -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    assert issubclass(SamplingParamsError, LabsError)


def test_min_tokens_may_equal_max_tokens() -> None:
    assert SamplingParams(min_tokens=5, max_tokens=5).min_tokens == 5
    assert SamplingParams(min_tokens=500).max_tokens is None  # no cap: up to the context limit


def test_frozen_and_replace_revalidates() -> None:
    p = SamplingParams(temperature=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 3.0  # type: ignore[misc]
    assert dataclasses.replace(p, top_k=-1).top_k == 0
    with pytest.raises(SamplingParamsError, match="temperature"):
        dataclasses.replace(p, temperature=3.0)


def test_validate_for_vocab() -> None:
    p = SamplingParams(logit_bias={10: 1.0, 99: -1.0})
    p.validate_for_vocab(100)
    with pytest.raises(SamplingParamsError) as info:
        p.validate_for_vocab(50)
    assert info.value.field == "logit_bias"
    assert "between 0 and 49" in str(info.value) and "got 99" in str(info.value)
    SamplingParams().validate_for_vocab(1)
