"""The batch line format (OpenAI's): one JSON request per line, `custom_id`, `method`, `url`, `body`.

Kept apart from the job machinery so that reading a request file costs no more than the JSON
(labs-gen imports it on every start).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_LINES = 50_000  # as OpenAI


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based line of the input file
    custom_id: str
    body: dict[str, Any]


def parse_lines(data: bytes, endpoint: str) -> tuple[list[BatchLine], list[dict[str, Any]], int]:
    """The valid requests of an input file, an error record for each line that is not one, and the
    number of request lines. Raises ValueError when the file as a whole cannot be read."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"the input file is not UTF-8 text (byte {error.start})") from None
    valid: list[BatchLine] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    count = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        count += 1
        custom_id, problem = None, None
        try:
            line = json.loads(raw)
        except ValueError as error:
            line, problem = None, f"not valid JSON ({error})"
        if isinstance(line, dict):
            custom_id = line.get("custom_id") if isinstance(line.get("custom_id"), str) and line.get("custom_id") else None
            problem = _line_problem(line, endpoint, custom_id, seen)
        elif problem is None:
            problem = "each line must be a JSON object with custom_id, method, url and body"
        if problem is None:
            seen.add(custom_id)
            valid.append(BatchLine(number, custom_id, line["body"]))
        else:
            problems.append(error_record(custom_id, "invalid_request", f"line {number}: {problem}"))
    return valid, problems, count


def _line_problem(line: dict[str, Any], endpoint: str, custom_id: str | None, seen: set[str]) -> str | None:
    if custom_id is None:
        return "custom_id must be a non-empty string"
    if custom_id in seen:
        return f"custom_id {custom_id!r} is used by an earlier line; each line needs its own"
    if line.get("method") != "POST":
        return f"method must be \"POST\", got {line.get('method')!r}"
    if line.get("url") != endpoint:
        return f"url must be the batch's endpoint {endpoint!r}, got {line.get('url')!r}"
    if not isinstance(line.get("body"), dict):
        return "body must be a JSON object (the request body for the endpoint)"
    if line["body"].get("stream"):
        return "stream is not available in a batch: results are written to the output file"
    return None


def error_record(custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}
