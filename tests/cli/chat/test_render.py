"""Reasoning is shown apart from the answer (and hidden with /think off); stat lines."""

from __future__ import annotations

import io

from rich.console import Console

from labs.cli.chat.backends import Event, TurnStats, _TurnWatch
from labs.cli.chat.render import EMPTY_ANSWER, STILL_THINKING, PlainAnswer, RichAnswer, source_line, stats_line
from labs.engine.sequence import RequestOutput
from labs.serving.reasoning import ReasoningSplitter, ReasoningTags
from labs.serving.turns import _text_events


def test_thinking_is_split_from_the_answer_while_streaming() -> None:
    """The serving core splits the engine's deltas; the chat shows its events as reasoning and content."""
    events: list[Event] = []
    watch = _TurnWatch(events.append)
    splitter = ReasoningSplitter(ReasoningTags(), False)
    deltas = ["<thi", "nk>\nLet me ", "think.</th", "ink>\n\nThe **answer**."]
    for position, delta in enumerate(deltas):
        finish = "stop" if position == len(deltas) - 1 else None
        for event in _text_events(splitter, RequestOutput("r", 0, [position], delta, finish_reason=finish)):
            watch.on_event(event)
    reasoning = "".join(e.text for e in events if e.kind == "reasoning")
    content = "".join(e.text for e in events if e.kind == "content")
    assert reasoning == "Let me think." and not splitter.in_reasoning
    assert content.endswith("The **answer**.") and "think" not in content


def render(answer: RichAnswer) -> str:
    console = Console(file=io.StringIO(), width=60, force_terminal=False)
    console.print(answer._renderable())
    return console.file.getvalue()


def test_rich_answer_shows_or_hides_the_thinking() -> None:
    for think in (True, False):
        answer = RichAnswer(Console(file=io.StringIO()), "tiny", think)
        answer.event(Event("reasoning", "pondering deeply"))
        answer.event(Event("content", "# Title\n\n```python\nprint(1)\n```"))
        text = render(answer)
        assert ("pondering deeply" in text) is think and ("thinking" in text) is think
        assert "print(1)" in text and "tiny" in text
    answer = RichAnswer(Console(file=io.StringIO()), "tiny", True)
    answer.event(Event("source", "transactions"))
    answer.event(Event("content", "Your largest expense was $5."))
    assert "from your transactions" in render(answer)


def test_plain_answer_keeps_thinking_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    with PlainAnswer(out, err, think=True) as answer:
        answer.event(Event("reasoning", "hmm"))
        answer.event(Event("content", "Yes."))
    assert out.getvalue() == "Yes.\n" and err.getvalue() == "[thinking] hmm\n"
    out, err = io.StringIO(), io.StringIO()
    with PlainAnswer(out, err, think=False) as answer:
        answer.event(Event("reasoning", "hmm"))
        answer.event(Event("content", "Yes."))
    assert out.getvalue() == "Yes.\n" and err.getvalue() == ""


def test_stats_line() -> None:
    stats = TurnStats(completion_tokens=11, time_to_first_token=0.5, seconds=1.5)
    assert stats_line(stats) == "11 tokens, first token 0.50 s, 10.0 tok/s"
    stats.finish_reason = "abort"
    assert stats_line(stats).endswith("(stopped)")
    assert "from your transactions" in stats_line(TurnStats(source="transactions", seconds=0.01))


SOURCES = [{"id": 1, "document_id": "d1", "document": "Leave Policy", "source": "/docs/leave-policy.md", "chunk": 2,
            "page": None, "score": 0.7123, "snippet": "25 days"}]


def test_document_sources_are_listed_under_the_answer() -> None:
    assert source_line(SOURCES[0]) == "[1] Leave Policy (/docs/leave-policy.md, chunk 2, score 0.71)"
    answer = RichAnswer(Console(file=io.StringIO()), "tiny", True)
    answer.event(Event("source", "documents", SOURCES))
    answer.event(Event("content", "You get 25 days [1]."))
    text = render(answer)
    assert "from your documents" in text and text.index("25 days [1]") < text.index("[1] Leave Policy")
    out, err = io.StringIO(), io.StringIO()
    with PlainAnswer(out, err, think=True) as plain:
        plain.event(Event("source", "documents", SOURCES))
        plain.event(Event("content", "You get 25 days [1]."))
    assert out.getvalue() == "You get 25 days [1].\n"
    assert err.getvalue() == ("sources from your documents:\n"
                              "  [1] Leave Policy (/docs/leave-policy.md, chunk 2, score 0.71)\n")


def test_an_answer_that_never_left_the_thinking_says_so() -> None:
    for think in (True, False):
        answer = RichAnswer(Console(file=io.StringIO()), "tiny", think)
        answer.event(Event("reasoning", "pondering"))
        assert STILL_THINKING not in render(answer)  # still streaming
        answer.done = True
        text = render(answer)
        assert STILL_THINKING in text and ("pondering" in text) is think
    answer = RichAnswer(Console(file=io.StringIO()), "tiny", True)
    answer.done = True
    assert EMPTY_ANSWER in render(answer)
    out, err = io.StringIO(), io.StringIO()
    with PlainAnswer(out, err, think=False) as plain:
        plain.event(Event("reasoning", "hmm"))
    assert out.getvalue() == "" and err.getvalue() == f"note: {STILL_THINKING}\n"
