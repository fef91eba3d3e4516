"""Ollama's API (github.com/ollama/ollama docs/api.md): its bodies as neutral turns, and its response objects.

Ollama clients name models `name:tag`; the registry answers `:latest` for an untagged id.
Messages arrive in Ollama's shape (tool calls with object arguments, tool results named by
`tool_name`) and become the OpenAI chat dicts the serving core speaks. Durations are nanoseconds;
timestamps are RFC 3339 in UTC.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field

from labs.api.errors import bad_request
from labs.api.schemas import _Lenient
from labs.models.device import dtype_name
from labs.models.resolve import ModelSource
from labs.serving.events import Usage
from labs.serving.guided import GuidedDecoding
from labs.serving.models import ServedModel
from labs.serving.text import check_text
from labs.serving.tools import ToolCall
from labs.serving.turn import RequestedSampling, Turn

KeepAlive = Union[str, float, None]  # "5m", seconds, or 0 / "0" (unload); accepted, the registry decides
FAR_FUTURE = "9999-12-31T23:59:59Z"  # Ollama's expires_at for a model that stays loaded


# ---------------------------------------------------------------------------------------------- requests


class OllamaOptions(_Lenient):
    """The runtime options labs applies; the others (num_ctx, num_gpu, mirostat, ...) are accepted and ignored."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaCallFunction(_Lenient):
    name: str
    arguments: Union[dict[str, Any], str] = Field(default_factory=dict)
    index: int | None = None


class OllamaToolCall(_Lenient):
    id: str | None = None
    function: OllamaCallFunction


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _Generation(_Lenient):
    model: str
    stream: bool | None = True
    options: OllamaOptions | None = None
    format: Union[str, dict[str, Any], None] = None
    keep_alive: KeepAlive = None
    think: Union[bool, str, None] = None


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None  # labs' extension, OpenAI's values: Ollama always has "auto"


class OllamaGenerateRequest(_Generation):
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = False
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class OllamaEmbedRequest(_Lenient):
    model: str
    input: Union[str, list[str]]
    truncate: bool | None = True
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class OllamaEmbeddingsRequest(_Lenient):
    model: str
    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class OllamaShowRequest(_Lenient):
    model: str | None = None
    name: str | None = None  # the older spelling
    verbose: bool | None = False


# ---------------------------------------------------------------------------------------------- turns


def sampling(options: OllamaOptions | None) -> RequestedSampling:
    """Ollama's options as the core's sampling fields (num_predict -1 / -2, "no limit", leave the default)."""
    given = options or OllamaOptions()
    max_tokens = given.num_predict if given.num_predict is None or given.num_predict >= 0 else None
    stop = [given.stop] if isinstance(given.stop, str) else given.stop
    check_text(stop, "options.stop")
    return RequestedSampling(
        max_tokens=max_tokens, temperature=given.temperature, top_p=given.top_p, top_k=given.top_k, min_p=given.min_p,
        repetition_penalty=given.repeat_penalty, presence_penalty=given.presence_penalty,
        frequency_penalty=given.frequency_penalty, seed=given.seed, stop=stop, max_tokens_param="options.num_predict")


def guided_format(value: str | dict[str, Any] | None) -> GuidedDecoding | None:
    """`format`: "json" (any JSON object) or a JSON schema the output must validate against."""
    if value is None or value == "":
        return None
    if value == "json":
        return GuidedDecoding("json_object", field="format")
    if isinstance(value, dict):
        check_text(value, "format")
        return GuidedDecoding("json_schema", json.dumps(value), field="format")
    raise bad_request(f'format must be "json" or a JSON schema object, got {value!r}', param="format")


def reasoning(think: bool | str | None) -> bool | None:
    """`think`: split the thinking out (levels, as gpt-oss takes them, mean yes); None is the server's default."""
    if think is None or isinstance(think, bool):
        return think
    if think in ("low", "medium", "high"):
        return True
    raise bad_request(f'think must be true, false, "low", "medium" or "high", got {think!r}', param="think")


def images_error(param: str) -> Exception:
    return bad_request(f"{param}: images are not supported: the models this server runs read text only", param=param)


def chat_messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI chat dicts: calls get ids, each tool result points at the call it answers."""
    converted = []
    unanswered: list[tuple[str, str]] = []  # (call id, function name), oldest first
    for position, message in enumerate(messages):
        if message.images:
            raise images_error(f"messages[{position}].images")
        entry: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.role == "assistant" and message.tool_calls:
            entry["tool_calls"] = [_openai_call(call, f"call_{position}_{index}")
                                   for index, call in enumerate(message.tool_calls)]
            unanswered.extend((call["id"], call["function"]["name"]) for call in entry["tool_calls"])
        elif message.role == "tool":
            entry["tool_call_id"] = _answered_call(message, unanswered)
        converted.append(entry)
    return converted


def _openai_call(call: OllamaToolCall, default_id: str) -> dict[str, Any]:
    arguments = call.function.arguments
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call.id or default_id, "type": "function", "function": {"name": call.function.name, "arguments": text}}


def _answered_call(message: OllamaMessage, unanswered: list[tuple[str, str]]) -> str:
    """The id of the call a tool result answers: its own id, else the oldest open call of that name."""
    for index, (call_id, name) in enumerate(unanswered):
        if call_id == message.tool_call_id or (message.tool_call_id is None and message.tool_name in (None, name)):
            del unanswered[index]
            return call_id
    return message.tool_call_id or f"call_{message.tool_name or 'tool'}"


def chat_turn(body: OllamaChatRequest, model_id: str) -> Turn:
    return Turn(messages=chat_messages(body.messages), model=model_id, sampling=sampling(body.options),
                tools=body.tools or [], tool_choice=body.tool_choice, guided=guided_format(body.format),
                reasoning=reasoning(body.think))


def generate_turn(body: OllamaGenerateRequest, model_id: str) -> Turn:
    """A prompt through the model's chat template, or with raw=true the prompt as it is."""
    if body.images:
        raise images_error("images")
    if body.suffix:
        raise bad_request("suffix (fill in the middle) is not supported by this server", param="suffix")
    if body.template:
        raise bad_request("template (a Go prompt template) is not supported: the model's own chat template is used; "
                          "send raw=true with a prompt formatted yourself", param="template")
    if body.context:
        raise bad_request("context (token ids of an earlier answer) is not supported: send the conversation to "
                          "/api/chat", param="context")
    common: dict[str, Any] = {"model": model_id, "sampling": sampling(body.options), "guided": guided_format(body.format),
                              "reasoning": reasoning(body.think), "messages_param": "prompt"}
    if body.raw:
        return Turn(raw=body.prompt, **common)
    return Turn(prompt=body.prompt, system=body.system, **common)


def unloading(keep_alive: KeepAlive) -> bool:
    """keep_alive 0 ("0", "0s", "0m", ...): the client asks for the model to be unloaded."""
    if isinstance(keep_alive, str):
        number = keep_alive.strip().rstrip("hms")
        try:
            return float(number) == 0
        except ValueError:
            return False
    return keep_alive is not None and keep_alive == 0


# ---------------------------------------------------------------------------------------------- answers


def timestamp(seconds: float | None = None) -> str:
    moment = datetime.now(timezone.utc) if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Clock:
    """Nanosecond marks of one request, for Ollama's *_duration fields.

    With tools, a sample's text is held until it ends (a call is known only then), so its
    generation counts as prompt evaluation there."""

    start: int = field(default_factory=time.perf_counter_ns)
    ready: int | None = None  # the model held and the prompt prepared (loading, if needed, is in here)
    first: int | None = None  # the first output

    def mark_ready(self) -> None:
        self.ready = time.perf_counter_ns()

    def saw_output(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def durations(self, usage: Usage) -> dict[str, int]:
        end = time.perf_counter_ns()
        ready = self.ready or end
        first = self.first or end
        return {"total_duration": end - self.start, "load_duration": ready - self.start,
                "prompt_eval_count": usage.prompt_tokens, "prompt_eval_duration": first - ready,
                "eval_count": usage.completion_tokens, "eval_duration": end - first}


@dataclass
class Answer:
    """A turn's output as Ollama reports it (one sample: Ollama has no n)."""

    content: str = ""
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reason: str = "stop"
    usage: Usage = field(default_factory=lambda: Usage(0, 0))

    def add(self, part: dict[str, Any]) -> None:
        self.content += part.get("content", "")
        if "thinking" in part:
            self.thinking = (self.thinking or "") + part["thinking"]
        self.tool_calls.extend(part.get("tool_calls", []))


def done_reason(finish_reason: str) -> str:
    return "length" if finish_reason == "length" else "stop"  # a tool call ends with "stop" in Ollama


def ollama_call(call: ToolCall, index: int) -> dict[str, Any]:
    """A call as Ollama sends it: arguments as an object (the core checked they are JSON)."""
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        arguments = {}
    return {"id": call.id, "function": {"index": index, "name": call.name,
                                        "arguments": arguments if isinstance(arguments, dict) else {}}}


def chunk(kind: str, model: str, content: str = "", thinking: str | None = None,
          tool_calls: list[dict[str, Any]] | None = None, done: bool = False) -> dict[str, Any]:
    """One object of an answer: `message` for /api/chat, `response` for /api/generate."""
    body: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking is not None:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        body["message"] = message
    else:
        body["response"] = content
        if thinking is not None:
            body["thinking"] = thinking
    body["done"] = done
    return body


def final(kind: str, model: str, answer: Answer, durations: dict[str, int]) -> dict[str, Any]:
    body = chunk(kind, model, answer.content, answer.thinking, answer.tool_calls, done=True)
    return {**body, "done_reason": answer.reason, **durations}


# ---------------------------------------------------------------------------------------------- models

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class ModelFiles:
    """What the files of a model tell without loading it."""

    format: str  # gguf or safetensors
    size: int
    modified: float
    config: dict[str, Any]  # a folder's config.json (empty for a GGUF file)


def model_files(source: ModelSource) -> ModelFiles | None:
    path = source.path
    try:
        if source.kind == "gguf":
            stat = path.stat()
            return ModelFiles("gguf", stat.st_size, stat.st_mtime, {})
        weights = [entry.stat() for entry in path.iterdir() if entry.suffix in WEIGHT_SUFFIXES]
        config = _read_config(path / "config.json")
        modified = max((stat.st_mtime for stat in weights), default=path.stat().st_mtime)
        return ModelFiles("safetensors", sum(stat.st_size for stat in weights), modified, config)
    except OSError:
        return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def tag_name(model_id: str) -> str:
    return model_id if ":" in model_id else f"{model_id}:latest"


def digest(model_id: str) -> str:
    """sha256 of the id, not of the weights: hashing hundreds of MB on every listing would be too slow."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def weights(served: ServedModel) -> tuple[int, int]:
    """(parameters, bytes in memory) of a loaded model; int8-quantized weights are buffers named qweight."""
    model = served.loaded.model
    count = sum(p.numel() for p in model.parameters())
    count += sum(b.numel() for name, b in model.named_buffers() if name.endswith("qweight"))
    size = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    return count, size


def parameter_size(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.2f}M" if count >= 1e6 else str(count)


def _config(served: ServedModel | None, files: ModelFiles | None) -> Any:
    """A lookup of the model's config: the loaded one, else the folder's config.json."""
    if served is not None:
        config = served.loaded.model.config
        return lambda key: getattr(config, key, None)
    return (files.config if files else {}).get


_QUANTIZATION = {"4-bit": "Q4", "8-bit": "Q8", "int8": "Q8"}  # the weights as served, not as the file holds them


def _dtype_level(dtype: Any) -> str:
    return dtype_name(dtype).upper().replace("FP", "F")  # bf16 -> BF16, fp32 -> F32, as Ollama spells them


def details(served: ServedModel | None, files: ModelFiles | None) -> dict[str, Any]:
    family = _config(served, files)("model_type") or ""
    size = quantization = ""
    if served is not None:
        size = parameter_size(weights(served)[0])
        loaded = served.loaded
        quantization = _QUANTIZATION.get(loaded.quantization or "", "") or _dtype_level(loaded.placement.dtype)
    return {"parent_model": "", "format": files.format if files else "", "family": family,
            "families": [family] if family else None, "parameter_size": size, "quantization_level": quantization}


def model_info(served: ServedModel | None, files: ModelFiles | None) -> dict[str, Any]:
    """Ollama's GGUF-style keys (`general.architecture`, `<arch>.context_length`, ...) from the config."""
    get = _config(served, files)
    arch = get("model_type")
    if not arch:
        return {}
    info: dict[str, Any] = {"general.architecture": arch}
    if served is not None:
        info["general.parameter_count"] = weights(served)[0]
    keys = {"context_length": served.context_length if served else get("max_position_embeddings"),
            "embedding_length": get("hidden_size"), "block_count": get("num_hidden_layers"),
            "attention.head_count": get("num_attention_heads"), "attention.head_count_kv": get("num_key_value_heads"),
            "vocab_size": get("vocab_size")}
    info.update({f"{arch}.{key}": value for key, value in keys.items() if isinstance(value, int)})
    return info


def tag_entry(model_id: str, served: ServedModel | None, files: ModelFiles | None) -> dict[str, Any]:
    name = tag_name(model_id)
    return {"name": name, "model": name, "modified_at": timestamp(files.modified if files else 0),
            "size": files.size if files else 0, "digest": digest(model_id), "details": details(served, files)}


_OLLAMA_PARAMETER = {"repetition_penalty": "repeat_penalty"}


def show_body(model_id: str, served: ServedModel | None, files: ModelFiles | None) -> dict[str, Any]:
    """/api/show: what the files tell, and more once the model is loaded (template, sampling, thinking)."""
    recommended = served.recommended if served else {}
    template = getattr(served.tokenizer, "chat_template", None) if served else None
    capabilities = ["completion", "tools"] + (["thinking"] if served and served.reasoning_tags else [])
    return {
        "modelfile": f"# served by labs: no Modelfile\nFROM {model_id}\n",
        "parameters": "\n".join(f"{_OLLAMA_PARAMETER.get(k, k)} {v}" for k, v in recommended.items()),
        "template": template if isinstance(template, str) else "",
        "details": details(served, files),
        "model_info": model_info(served, files),
        "capabilities": capabilities,
        "modified_at": timestamp(files.modified if files else 0),
    }


def ps_entry(served: ServedModel, files: ModelFiles | None, expires_at: float | None) -> dict[str, Any]:
    """/api/ps: size is the weights in memory; on the GPU (or Apple's shared memory) all of it is VRAM."""
    name = tag_name(served.id)
    size = weights(served)[1]
    return {"name": name, "model": name, "size": size, "digest": digest(served.id), "details": details(served, files),
            "expires_at": FAR_FUTURE if expires_at is None else timestamp(expires_at),
            "size_vram": 0 if served.loaded.placement.device == "cpu" else size,
            "context_length": served.context_length}
