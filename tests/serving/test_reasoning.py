"""Reasoning split: <think>...</think> becomes reasoning_content, streaming equals non-streaming."""

from __future__ import annotations

import itertools
import random

import pytest

from labs.serving.reasoning import (
    ReasoningSplitter,
    ReasoningTags,
    detect_reasoning_tags,
    prompt_opens_reasoning,
    split_reasoning,
)

TAGS = ReasoningTags()


def stream(pieces: list[str], starts_inside: bool = False) -> tuple[str, str]:
    """Joined (reasoning, content) of streaming ``pieces``; checks no tag text ever leaks."""
    splitter = ReasoningSplitter(TAGS, starts_inside=starts_inside)
    reasoning, content = [], []
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning.append(r)
        content.append(c)
    r, c = splitter.finish()
    reasoning.append(r)
    content.append(c)
    return "".join(reasoning), "".join(content)


def expected_stream(text: str, starts_inside: bool = False) -> tuple[str, str]:
    """split_reasoning mapped to what streaming joins to (None reasoning -> "")."""
    reasoning, content = split_reasoning(text, TAGS, starts_inside=starts_inside)
    return reasoning or "", content


# --- non-streaming -------------------------------------------------------------------------------


def test_typical_r1_output() -> None:
    text = "<think>\nThe user asks 2+2.\n\nThat is 4.\n</think>\n\nThe answer is **4**."
    assert split_reasoning(text, TAGS) == ("The user asks 2+2.\n\nThat is 4.", "The answer is **4**.")


def test_starts_inside() -> None:
    text = "Let me think.\n  Step 1.\n</think>\n\nDone."
    assert split_reasoning(text, TAGS, starts_inside=True) == ("Let me think.\n  Step 1.", "Done.")
    # Without the flag the output does not begin with <think>: all content, untouched.
    assert split_reasoning(text, TAGS) == (None, text)


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "",
        "   ",
        "<",
        "<th",
        "<thinking about it",
        "< think>x</think>y",
        "  <b>bold</b>",
        "Answer first <think>not reasoning</think> tail",
        "</think> stray end tag",
        "\n\nleading newlines kept\n",
    ],
)
def test_no_reasoning_content_untouched(text: str) -> None:
    assert split_reasoning(text, TAGS) == (None, text)
    assert stream([text]) == ("", text)
    assert stream(list(text)) == ("", text)


def test_cut_inside_thinking() -> None:
    assert split_reasoning("<think>\nhalf a thou", TAGS) == ("half a thou", "")
    assert split_reasoning("<think>\nhalf a thought \n ", TAGS) == ("half a thought", "")
    # A partial end tag at the very end turned out not to be a tag: it stays as reasoning text.
    assert split_reasoning("<think>\nalmost done </th", TAGS) == ("almost done </th", "")
    assert split_reasoning("<think>", TAGS) == ("", "")
    assert split_reasoning("   <think>  \n", TAGS) == ("", "")
    assert split_reasoning("", TAGS, starts_inside=True) == ("", "")


def test_tag_at_end() -> None:
    assert split_reasoning("<think>all thought</think>", TAGS) == ("all thought", "")
    assert split_reasoning("<think>all thought</think>\n\n", TAGS) == ("all thought", "")
    assert split_reasoning("thought</think>", TAGS, starts_inside=True) == ("thought", "")


def test_whitespace_rules() -> None:
    text = " \n<think> \n a  b\n\n c \t\n</think> \n\n x  y \n"
    # Leading/trailing whitespace of reasoning and leading whitespace of content dropped;
    # inner whitespace and the content's trailing whitespace kept.
    assert split_reasoning(text, TAGS) == ("a  b\n\n c", "x  y \n")
    assert split_reasoning("<think>\n\n</think>\n\nAnswer", TAGS) == ("", "Answer")


def test_second_think_is_content() -> None:
    text = "<think>a</think>b <think>c</think> d"
    assert split_reasoning(text, TAGS) == ("a", "b <think>c</think> d")
    assert split_reasoning("<think><think>a</think>b", TAGS) == ("<think>a", "b")


def test_custom_tags() -> None:
    tags = ReasoningTags(start="[R]", end="[/R]")
    assert split_reasoning("[R] x [/R] y", tags) == ("x", "y")
    with pytest.raises(ValueError):
        ReasoningTags(start="", end="</think>")


# --- streaming -----------------------------------------------------------------------------------


def test_stream_typical_r1_split_tags() -> None:
    pieces = ["<th", "ink>", "\n", "Reason", "ing ", "\n", "</th", "ink>", "\n\n", "Ans", "wer"]
    splitter = ReasoningSplitter(TAGS)
    out = [splitter.feed(p) for p in pieces] + [splitter.finish()]
    assert "".join(r for r, _ in out) == "Reasoning"
    assert "".join(c for _, c in out) == "Answer"
    for r, c in out:
        assert "<" not in r and ">" not in r and "<" not in c and ">" not in c
    assert splitter.saw_reasoning and not splitter.in_reasoning


def test_stream_releases_plain_output_early() -> None:
    splitter = ReasoningSplitter(TAGS)
    assert splitter.feed("<t") == ("", "")  # could still be <think>
    assert splitter.feed("x") == ("", "<tx")  # cannot: released at once
    assert splitter.feed(" more") == ("", " more")
    assert splitter.finish() == ("", "")
    assert not splitter.saw_reasoning


def test_stream_holds_only_possible_tag_and_trailing_whitespace() -> None:
    splitter = ReasoningSplitter(TAGS, starts_inside=True)
    assert splitter.in_reasoning
    assert splitter.feed("\nstep one") == ("step one", "")
    assert splitter.feed(" \n</") == ("", "")  # whitespace + partial tag held
    assert splitter.feed("b>") == (" \n</b>", "")  # not the tag: released exactly
    assert splitter.feed("  ") == ("", "")
    assert splitter.feed("</think>  ok") == ("", "ok")
    assert splitter.feed(" then") == ("", " then")
    assert splitter.finish() == ("", "")


def test_stream_cut_inside_thinking_flushes_partial_tag() -> None:
    splitter = ReasoningSplitter(TAGS)
    assert splitter.feed("<think>\nalmost ") == ("almost", "")
    assert splitter.feed("</thi") == ("", "")
    assert splitter.finish() == (" </thi", "")
    assert splitter.saw_reasoning and splitter.in_reasoning


def test_stream_misuse() -> None:
    splitter = ReasoningSplitter(TAGS)
    splitter.finish()
    with pytest.raises(RuntimeError):
        splitter.feed("x")
    with pytest.raises(RuntimeError):
        splitter.finish()


# --- streaming == non-streaming, for every chunking ----------------------------------------------

PROPERTY_TEXTS = [
    "<think>\nThe user asks 2+2.\n\nThat is 4.\n</think>\n\nThe answer is 4.",
    "  \n<think> a \n</think> b ",
    "<think></think>",
    "<think>\n\n</think>\n\n",
    "<think>x</think>y<think>z</think>",
    "<think><think></think></think>",
    "<think>a </th b</think>c",
    "<think>a <</think>",
    "<think>a </think </think> c",
    "<think>cut off </thin",
    "<think>cut off  \n ",
    "<think>",
    "<thin",
    "<think",
    " <thinker>",
    "<",
    "",
    " ",
    "plain answer, no tags",
    "plain </think> tail",
    "x<think>y</think>z",
    "\n<b>",
    "thought only</think>after",
    "< /think></think>  \n x",
]


def all_splits(text: str, parts: int) -> list[list[str]]:
    """Every way to cut ``text`` into ``parts`` pieces (empty pieces included)."""
    result = []
    for cuts in itertools.combinations_with_replacement(range(len(text) + 1), parts - 1):
        bounds = (0, *cuts, len(text))
        result.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return result


@pytest.mark.parametrize("starts_inside", [False, True])
@pytest.mark.parametrize("text", PROPERTY_TEXTS)
def test_streaming_equals_non_streaming_every_split(text: str, starts_inside: bool) -> None:
    expected = expected_stream(text, starts_inside)
    assert stream([text], starts_inside) == expected
    assert stream(list(text), starts_inside) == expected
    for parts in (2, 3):
        for pieces in all_splits(text, parts):
            assert stream(pieces, starts_inside) == expected, pieces


def random_text(rng: random.Random) -> str:
    atoms = ["<think>", "</think>", "<", "</", "</th", "think>", ">", "<thi", " ", "\n", "\t", "a", "b c"]
    return "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))


def random_chunks(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        size = rng.randint(0, 6)
        pieces.append(text[i:i + size])
        i += size
    return pieces


def test_streaming_equals_non_streaming_random() -> None:
    rng = random.Random(1234)
    texts = PROPERTY_TEXTS + [random_text(rng) for _ in range(400)]
    for text in texts:
        for starts_inside in (False, True):
            expected = expected_stream(text, starts_inside)
            for _ in range(10):
                pieces = random_chunks(text, rng)
                splitter = ReasoningSplitter(TAGS, starts_inside=starts_inside)
                out = [splitter.feed(p) for p in pieces] + [splitter.finish()]
                got = ("".join(r for r, _ in out), "".join(c for _, c in out))
                assert got == expected, (text, pieces)
                none_reasoning = split_reasoning(text, TAGS, starts_inside)[0] is None
                assert splitter.saw_reasoning is not none_reasoning


# --- detection -----------------------------------------------------------------------------------


class FakeTokenizer:
    """Just the two attributes detect_reasoning_tags reads."""

    def __init__(self, vocab: dict[str, int], chat_template: str | None = None) -> None:
        self._vocab = vocab
        self.chat_template = chat_template

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_detect_by_vocabulary() -> None:
    tokenizer = FakeTokenizer({"a": 0, "<think>": 1, "</think>": 2})
    assert detect_reasoning_tags(tokenizer) == ReasoningTags()


def test_detect_by_chat_template() -> None:
    template = "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
    assert detect_reasoning_tags(FakeTokenizer({"a": 0}, template)) == ReasoningTags()


@pytest.mark.parametrize(
    "tokenizer",
    [
        FakeTokenizer({"a": 0}),
        FakeTokenizer({"a": 0, "<think>": 1}),  # only one tag is not enough
        FakeTokenizer({"a": 0}, "{{ messages }}<|assistant|>"),
        object(),  # nothing to look at
    ],
)
def test_detect_normal_model(tokenizer: object) -> None:
    assert detect_reasoning_tags(tokenizer) is None


def test_prompt_opens_reasoning() -> None:
    assert prompt_opens_reasoning("<|User|>hi<|Assistant|><think>\n", TAGS)
    assert prompt_opens_reasoning("...<think>", TAGS)
    assert not prompt_opens_reasoning("<|User|>hi<|Assistant|>", TAGS)
    assert not prompt_opens_reasoning("<think>\nold</think>\n", TAGS)
