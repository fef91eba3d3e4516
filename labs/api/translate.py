"""OpenAI chat and completions bodies as neutral turns (labs.serving.turn).

Fields a request leaves out stay None here: the serving core fills them from the layered
defaults (labs.serving.sampling), the same for every protocol.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from labs.api.errors import bad_request
from labs.api.schemas import ChatCompletionRequest, SamplingFields
from labs.serving.guided import GuidedDecoding
from labs.serving.turn import RequestedSampling, Turn

logger = logging.getLogger(__name__)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    result = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        result[token] = value
    return result


def requested_sampling(body: SamplingFields, *, max_tokens: int | None, logprobs: int | None = None) -> RequestedSampling:
    """The sampling fields of an OpenAI chat or completions body, as given (defaults come later)."""
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return RequestedSampling(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
        repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, logit_bias=_logit_bias(body.logit_bias), seed=body.seed, stop=stop,
        stop_token_ids=body.stop_token_ids, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens, n=body.n,
        logprobs=logprobs)


def chat_turn(body: ChatCompletionRequest) -> Turn:
    """POST /v1/chat/completions as a neutral turn."""
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return Turn(
        messages=[message.model_dump(exclude_none=True) for message in body.messages],
        model=body.model,
        sampling=requested_sampling(body, max_tokens=max_tokens, logprobs=chat_logprobs(body)),
        tools=body.tools or [],
        tool_choice=body.tool_choice,
        guided=guided_decoding(body),
        use_data=body.use_rag,
        use_docs=bool(body.use_rag),
    )


def _structured_outputs(spec: dict[str, Any]) -> GuidedDecoding:
    """vLLM's `structured_outputs` object: exactly one of json, regex, choice, grammar."""
    given = [key for key in ("json", "regex", "choice", "grammar") if spec.get(key) is not None]
    if len(given) != 1:
        raise bad_request("structured_outputs must hold exactly one of json, regex, choice or grammar",
                          param="structured_outputs")
    key, value = given[0], spec[given[0]]
    if key == "json":
        return GuidedDecoding("json_schema", value if isinstance(value, str) else json.dumps(value), field="structured_outputs")
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad_request("structured_outputs.choice must be a non-empty list of non-empty strings",
                              param="structured_outputs")
        return GuidedDecoding("choice", json.dumps(value), field="structured_outputs")
    if not isinstance(value, str):
        raise bad_request(f"structured_outputs.{key} must be a string", param="structured_outputs")
    return GuidedDecoding("regex" if key == "regex" else "grammar", value, field="structured_outputs")


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def guided_decoding(body: SamplingFields) -> GuidedDecoding | None:
    """The grammar a request's output must follow: response_format, or vLLM's guided_* extensions."""
    asked: list[GuidedDecoding] = []
    fmt = body.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            asked.append(GuidedDecoding("json_object"))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise bad_request("response_format.json_schema.schema must be a JSON schema object", param="response_format")
            asked.append(GuidedDecoding("json_schema", json.dumps(spec["schema"])))
        elif kind != "text":
            raise bad_request(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                              param="response_format")
    if body.guided_json is not None:
        schema = body.guided_json if isinstance(body.guided_json, str) else json.dumps(body.guided_json)
        asked.append(GuidedDecoding("json_schema", schema, field="guided_json"))
    if body.guided_regex is not None:
        asked.append(GuidedDecoding("regex", body.guided_regex, field="guided_regex"))
    if body.guided_choice is not None:
        if not body.guided_choice or not all(body.guided_choice):
            raise bad_request("guided_choice must be a non-empty list of non-empty strings", param="guided_choice")
        asked.append(GuidedDecoding("choice", json.dumps(body.guided_choice), field="guided_choice"))
    if body.guided_grammar is not None:
        asked.append(GuidedDecoding("grammar", body.guided_grammar, field="guided_grammar"))
    if body.structured_outputs is not None:
        asked.append(_structured_outputs(body.structured_outputs))
    if len(asked) > 1:
        raise bad_request("give at most one of response_format (json), guided_json, guided_regex, guided_choice, "
                          "guided_grammar and structured_outputs", param=asked[1].field)
    return asked[0] if asked else None
