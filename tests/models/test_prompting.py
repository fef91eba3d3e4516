"""Prompts and messages to token ids: chat template, raw prompt, plain fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from labs.models.prompting import PromptError, parse_messages_json, plain_chat_text, prompt_token_ids


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # noqa: ANN201
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_template_is_used_with_generation_prompt(tokenizer) -> None:  # noqa: ANN001
    text = tokenizer.decode(prompt_token_ids(tokenizer, prompt="Hi there"))
    assert "<|im_start|>user\nHi there<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    without = tokenizer.decode(prompt_token_ids(tokenizer, prompt="Hi there", add_generation_prompt=False))
    assert not without.rstrip().endswith("<|im_start|>assistant")


def test_system_message_is_added_once(tokenizer) -> None:  # noqa: ANN001
    text = tokenizer.decode(prompt_token_ids(tokenizer, prompt="Hi", system="Be brief."))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    messages = [{"role": "system", "content": "Own system"}, {"role": "user", "content": "Hi"}]
    text = tokenizer.decode(prompt_token_ids(tokenizer, messages=messages, system="Be brief."))
    assert "Own system" in text and "Be brief." not in text


def test_raw_prompt_without_template(tokenizer) -> None:  # noqa: ANN001
    ids = prompt_token_ids(tokenizer, prompt="Once upon a time", use_chat_template=False)
    assert tokenizer.decode(ids) == "Once upon a time"


def test_plain_fallback_for_a_tokenizer_without_template(tokenizer) -> None:  # noqa: ANN001
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tokenizer.decode(prompt_token_ids(tokenizer, messages=messages)) == "System: S\n\nUser: U\n\nAssistant:"
    assert plain_chat_text(messages, add_generation_prompt=False) == "System: S\n\nUser: U"


def test_text_parts_are_joined(tokenizer) -> None:  # noqa: ANN001
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
    assert "user\nHello<|im_end|>" in tokenizer.decode(prompt_token_ids(tokenizer, messages=messages))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", r"--messages-json is not valid JSON"),
        ("[]", r"non-empty JSON list"),
        ('{"role": "user"}', r"non-empty JSON list"),
        ('[{"role": "wizard", "content": "x"}]', r"messages\[0\].role must be one of system, developer, user, assistant, tool, got 'wizard'"),
        ('[{"role": "user", "content": 5}]', r"messages\[0\].content must be a string or a list of text parts"),
        ('[{"role": "user", "content": [{"type": "image_url"}]}]', r"only text parts are supported"),
        ('["hi"]', r"messages\[0\] must be an object"),
    ],
)
def test_bad_messages(text: str, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_messages_json(text)


def test_developer_role_is_rendered_as_system(tokenizer) -> None:  # noqa: ANN001
    as_developer = prompt_token_ids(tokenizer, messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    as_system = prompt_token_ids(tokenizer, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert as_developer == as_system
