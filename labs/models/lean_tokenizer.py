"""A tokenizer restored from a snapshot of a transformers fast tokenizer, without importing transformers.

Why: importing transformers' tokenizer classes costs ~0.6 s on every start, more than the rest of
a one-shot's work. A transformers fast tokenizer is a `tokenizers.Tokenizer` (the Rust backend,
which does all the encoding and decoding) plus a few attributes: the special tokens, the chat
template, whether decoding cleans up spaces. `snapshot_of` records exactly those, after
transformers has built them (with every adjustment its tokenizer classes make to the backend),
and `LeanTokenizer` answers the same calls from the snapshot: the same ids and the same text.

Chat templates are rendered as transformers renders them: a sandboxed jinja2 environment with
trimmed blocks, loop controls, the `{% generation %}` tag, a `tojson` that keeps non-ASCII text,
`raise_exception`, `strftime_now`, and the special tokens passed as variables.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import tokenizers

SNAPSHOT_FORMAT = 1
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a message's reasoning is passed under; the first is the one chat templates read (as transformers does).
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def snapshot_of(hf_tokenizer: Any) -> tuple[str, dict[str, Any]] | None:
    """(backend JSON, attributes) of a transformers fast tokenizer, or None when it is not one
    whose behaviour the snapshot holds (a slow or custom tokenizer)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, tokenizers.Tokenizer) or getattr(hf_tokenizer, "split_special_tokens", False):
        return None
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    cleanup = bool(getattr(hf_tokenizer, "clean_up_tokenization_spaces", False))
    if cleanup and type(backend.model).__name__ == "BPE" and not getattr(
            hf_tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
        cleanup = False  # transformers skips the clean-up for BPE tokenizers
    attributes = {
        "format": SNAPSHOT_FORMAT,
        "special_tokens": {name: str(value) for name, value in hf_tokenizer.special_tokens_map.items()
                           if name in SPECIAL_TOKEN_NAMES and value is not None},
        "chat_template": hf_tokenizer.chat_template,
        "clean_up_tokenization_spaces": cleanup,
        "model_max_length": int(min(hf_tokenizer.model_max_length, 1 << 62)),
        "class": type(hf_tokenizer).__name__,
    }
    return backend.to_str(), attributes


class LeanTokenizer:
    """The calls labs makes of a transformers tokenizer, answered by its `tokenizers` backend."""

    def __init__(self, backend_json: str, attributes: Mapping[str, Any]) -> None:
        if attributes.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"tokenizer snapshot format {attributes.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        self.backend_tokenizer = tokenizers.Tokenizer.from_str(backend_json)
        self.special_tokens_map: dict[str, str] = dict(attributes["special_tokens"])
        self.chat_template: str | dict[str, str] | None = attributes.get("chat_template")
        self.clean_up_tokenization_spaces: bool = bool(attributes.get("clean_up_tokenization_spaces"))
        self.model_max_length: int = int(attributes["model_max_length"])
        self.name = str(attributes.get("class", "tokenizer"))

    def __repr__(self) -> str:
        return f"LeanTokenizer({self.name}, {len(self)} tokens)"

    # ------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(i) for i in ids]

    def _special(self, name: str) -> str | None:
        return self.special_tokens_map.get(name)

    def _special_id(self, name: str) -> int | None:
        token = self._special(name)
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self._special("eos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def pad_token(self) -> str | None:
        return self._special("pad_token")

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        self.special_tokens_map["pad_token"] = token

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    # ------------------------------------------------------------------ text

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        if not isinstance(text, str):
            raise TypeError(f"LeanTokenizer encodes one string at a time, got {type(text).__name__}")
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: int | list[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        text = self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if cleanup else text

    # ------------------------------------------------------------------ chat

    def get_chat_template(self, tools: list[Any] | None = None) -> str:
        template = self.chat_template
        if isinstance(template, dict):
            if tools is not None and "tool_use" in template:
                return template["tool_use"]
            if "default" in template:
                return template["default"]
            raise ValueError(f"this model has several chat templates and none is the default: {sorted(template)}")
        if template is None:
            raise ValueError("this tokenizer has no chat template")
        return template

    def apply_chat_template(self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = True, **kwargs: Any) -> str | list[int]:
        """Render `conversation` as transformers' `apply_chat_template` does (one conversation)."""
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        template = _compile(self.get_chat_template(tools))
        messages = _alias_reasoning([{key: value for key, value in message.items() if value is not None}
                                     for message in plain_template_data(conversation)])
        variables = plain_template_data({**self.special_tokens_map, **kwargs})
        text = template.render(messages=messages, tools=plain_template_data(tools), documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and contractions (WordPiece-style tokenizers)."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def plain_template_data(value: Any) -> Any:
    """What a template may see: plain JSON-like data only (rich objects become an inert `<Type>`)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_template_data(key): plain_template_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_template_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_template_data(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain_template_data(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    aliased = []
    for message in chat:
        reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    return _environment().from_string(source)


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks: rendered as is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict(...)` in a template, without attribute access to the type."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (no reach into Python internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore-prefixed attributes, got {name!r}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    return environment
