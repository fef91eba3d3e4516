"""Reasoning is shown apart from the answer (and hidden with /think off); stat lines."""

from __future__ import annotations

import io

from rich.console import Console

from labs.cli.chat.backends import Event, LocalBackend, TurnStats
from labs.cli.chat.render import PlainAnswer, RichAnswer, stats_line
from labs.serving.reasoning import ReasoningSplitter, ReasoningTags


def test_thinking_is_split_from_the_answer_while_streaming() -> None:
    events: list[Event] = []
    splitter = ReasoningSplitter(ReasoningTags(), False)
    for delta in ["<thi", "nk>\nLet me ", "think.</th", "ink>\n\nThe **answer**."]:
        LocalBackend._emit(splitter, delta, events.append)
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
