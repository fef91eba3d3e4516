"""Request bodies as the OpenAI API (and the original project's simple API) define them.

Types are checked here; ranges are checked by SamplingParams so that the CLI and the API give the
same messages. Unknown fields are accepted and logged at debug level, as the OpenAI API does, so
clients that send newer fields keep working.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labs.serving.errors import InvalidTurnError
from labs.serving.text import check_text

logger = logging.getLogger(__name__)

MAX_NESTING = 128  # JSON levels; real requests (JSON schemas, tool arguments) stay far below


def check_body_text(data: Any) -> None:
    """Every string of a body (keys too) must be UTF-8-encodable, and nesting bounded, before any field is used.

    One check at the edge covers every field of every endpoint, named by its path
    ("messages.0.content"). Lone surrogates pass JSON parsing and pydantic's str but break the
    tokenizer, the logs and the response encoder; deep nesting breaks recursive code downstream
    (chat templates, json.dumps) with a RecursionError. Raises InvalidTurnError (a 400, code
    invalid_unicode as in the serving core's own check, or nesting_too_deep): pydantic only wraps
    ValueError and AssertionError, so it reaches the error handlers as it is, in every protocol's shape.
    """
    pending: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while pending:
        value, path = pending.pop()
        if len(path) > MAX_NESTING:
            raise InvalidTurnError(f"{path[0]} is nested more than {MAX_NESTING} levels deep", param=str(path[0]),
                                   code="nesting_too_deep")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, path)
                pending.append((item, (*path, key)))
        elif isinstance(value, (list, tuple)):
            pending.extend((item, (*path, index)) for index, item in enumerate(value)
                           if isinstance(item, (str, dict, list, tuple)))  # token arrays: nothing to check
        else:
            _check_string(value, path)


def _check_string(value: Any, path: tuple[Any, ...]) -> None:
    if isinstance(value, str) and not value.isascii():
        check_text(value, ".".join(str(part) for part in path) or "body")


class _Lenient(BaseModel):
    """Accepts unknown fields (logged), as OpenAI does; strict types ("3" is not a number)."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _check_text(cls, data: Any) -> Any:
        check_body_text(data)
        return data

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> "_Lenient":
        if self.model_extra:
            logger.debug("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class SamplingFields(_Lenient):
    """Fields shared by chat and legacy completions (OpenAI names, plus vLLM's common extensions)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    response_format: dict[str, Any] | None = None
    guided_json: Union[dict[str, Any], str, None] = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None  # vLLM's newer spelling: {"json" | "regex" | "choice" | "grammar": ...}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    use_rag: bool | None = None  # extension: answer from the user's own data (default LABS_RAG_ENABLED)


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Lenient):
    input: Union[str, list[str], list[int], list[list[int]]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class SimilarityRequest(_Lenient):
    """The original project's custom endpoint; its documentation spells the field both ways."""

    texts: list[str] | None = None
    sentences: list[str] | None = None
    model: str | None = None


class TransactionsQueryRequest(_Lenient):
    question: str | None = None
    query: str | None = None  # the original project's spelling


class TokenizeRequest(_Lenient):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[int]


class GenerateRequest(_Lenient):
    """The original project's simple API: a prompt or messages, HF-style parameter names."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    system_prompt: str | None = None
    model: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: Union[str, list[str], None] = None


class DocumentsQueryRequest(_Lenient):
    """POST /v1/rag/query: retrieve from the user's documents, then answer with sources."""

    question: str | None = None
    query: str | None = None  # the original project's spelling
    model: str | None = None
    top_k: int | None = Field(default=None, ge=1, le=50)
    score_threshold: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stream: bool = False
    include_sources: bool = True
