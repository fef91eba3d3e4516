"""Output of the chat: Rich (live Markdown panels) on a terminal, plain text otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from labs.cli.chat.backends import Event, TurnStats

STILL_THINKING = "no answer: the model stopped while still thinking"
EMPTY_ANSWER = "(empty answer)"


def source_line(source: dict[str, Any]) -> str:
    """`[1] title (source, chunk n, score 0.71)` for one retrieved source."""
    where = f", page {source['page']}" if source.get("page") else ""
    score = source.get("score")
    scored = f", score {score:.2f}" if isinstance(score, (int, float)) else ""
    return (f"[{source.get('id', '?')}] {source.get('document') or source.get('source', '?')} "
            f"({source.get('source', '?')}{where}, chunk {source.get('chunk', '?')}{scored})")


def stats_line(stats: TurnStats) -> str:
    if stats.source not in ("model", "documents"):
        return f"answered exactly from your {stats.source} in {stats.seconds:.2f} s (no model)"
    line = (f"{stats.completion_tokens} tokens, first token {stats.time_to_first_token:.2f} s, "
            f"{stats.tokens_per_second:.1f} tok/s")
    if stats.finish_reason == "abort":
        line += " (stopped)"
    elif stats.finish_reason == "length":
        line += " (max_tokens reached)"
    return line


class RichAnswer:
    """One answer streaming into a Live panel: thinking (dim) above, Markdown answer below."""

    def __init__(self, console: Console, title: str, think: bool) -> None:
        self.console = console
        self.title = title
        self.think = think
        self.reasoning = ""
        self.content = ""
        self.source: str | None = None
        self.sources: list[dict[str, Any]] | None = None  # retrieved documents, when answered from them
        self.errors: list[str] = []
        self.done = False
        self.live = Live(console=console, get_renderable=self._renderable, refresh_per_second=10,
                         vertical_overflow="visible", transient=False)

    def __enter__(self) -> "RichAnswer":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done = True  # the last refresh, on leaving, draws the final state
        self.live.__exit__(*exc)

    def _renderable(self) -> Any:
        parts: list[Any] = []
        if self.reasoning and self.think:
            parts.append(Panel(Text(self.reasoning, style="dim italic"), title="thinking", title_align="left",
                               border_style="dim"))
        title, border = (f"from your {self.source}", "green") if self.source is not None else (self.title, "cyan")
        if self.done and not self.content and self.reasoning and not self.errors:
            note = STILL_THINKING + ("" if self.think else " (/think on shows the thinking)")
            parts.append(Panel(Text(note, style="yellow"), title=title, title_align="left", border_style=border))
        elif self.source is not None:
            parts.append(Panel(Markdown(self.content), title=title, title_align="left", border_style=border))
        elif self.done and not self.content and not parts:
            parts.append(Panel(Text(EMPTY_ANSWER, style="dim"), title=title, title_align="left", border_style=border))
        elif self.content or not parts:
            parts.append(Panel(Markdown(self.content or "…"), title=title, title_align="left", border_style=border))
        if self.sources is not None:
            lines = [source_line(s) for s in self.sources] or ["no source found in your documents"]
            parts.append(Text("\n".join(lines), style="dim"))
        parts.extend(Text(f"error: {e}", style="bold red") for e in self.errors)
        return Group(*parts)

    def event(self, event: Event) -> None:
        if event.kind == "reasoning":
            self.reasoning += event.text
        elif event.kind == "content":
            self.content += event.text
        elif event.kind == "source":
            self.source = event.text
            if event.text == "documents":
                self.sources = list(event.data or [])
        elif event.kind == "error":
            self.errors.append(event.text)
        elif event.kind == "notice":
            self.console.print(Text(event.text, style="yellow"))


class PlainAnswer:
    """The same on a pipe: answer text straight to stdout, thinking and notes to stderr."""

    def __init__(self, out: TextIO, err: TextIO, think: bool) -> None:
        self.out, self.err, self.think = out, err, think
        self.content = ""
        self.reasoning = ""
        self.source: str | None = None
        self.sources: list[dict[str, Any]] | None = None
        self.errors: list[str] = []
        self._in_reasoning = False

    def __enter__(self) -> "PlainAnswer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._in_reasoning:
            self.err.write("\n")
        if self.reasoning and not self.content and not self.errors:
            self.err.write(f"note: {STILL_THINKING}\n")
        if self.content and not self.content.endswith("\n"):
            self.out.write("\n")
        self.out.flush()
        if self.sources is not None:  # under the answer, like the other notes
            lines = [source_line(s) for s in self.sources] or ["none found"]
            self.err.write("sources from your documents:\n" + "".join(f"  {line}\n" for line in lines))
        self.err.flush()

    def event(self, event: Event) -> None:
        if event.kind == "reasoning":
            self.reasoning += event.text
            if self.think:
                if not self._in_reasoning:
                    self.err.write("[thinking] ")
                    self._in_reasoning = True
                self.err.write(event.text)
                self.err.flush()
        elif event.kind == "content":
            if self._in_reasoning:
                self.err.write("\n")
                self._in_reasoning = False
            self.content += event.text
            self.out.write(event.text)
            self.out.flush()
        elif event.kind == "source":
            self.source = event.text
            if event.text == "documents":
                self.sources = list(event.data or [])
        elif event.kind == "error":
            self.errors.append(event.text)
            self.err.write(f"error: {event.text}\n")
        elif event.kind == "notice":
            self.err.write(f"note: {event.text}\n")
            self.err.flush()


class Renderer:
    """Everything the chat prints; `rich=False` gives plain text with no control codes."""

    def __init__(self, rich: bool) -> None:
        self.rich = rich
        self.console = Console(highlight=False) if rich else Console(file=sys.stdout, force_terminal=False,
                                                                     no_color=True, highlight=False, width=100)
        self.err = Console(stderr=True, highlight=False) if rich else Console(file=sys.stderr, force_terminal=False,
                                                                               no_color=True, highlight=False, width=100)

    def banner(self, info: dict[str, str]) -> None:
        if self.rich:
            details = "  ".join(f"[bold]{k}[/] {v}" for k, v in info.items() if k != "model")
            self.console.print(Panel(f"[bold cyan]{info['model']}[/]\n{details}\n[dim]/help for commands, "
                                     "Ctrl-C stops an answer, Ctrl-D exits[/]", title="labs chat", title_align="left"))
        else:
            self.err.print(f"labs chat: {', '.join(f'{k} {v}' for k, v in info.items())} (/help for commands)",
                           soft_wrap=True)

    def answer(self, title: str, think: bool) -> Any:
        if self.rich:
            return RichAnswer(self.console, title, think)
        return PlainAnswer(sys.stdout, sys.stderr, think)

    def stats(self, stats: TurnStats) -> None:
        if self.rich:
            self.console.print(Text(stats_line(stats), style="dim"))
        else:
            self.err.print(f"[{stats_line(stats)}]", soft_wrap=True, markup=False)

    def info(self, message: str) -> None:
        if self.rich:
            self.console.print(Text(message, style="green"))
        else:
            self.console.print(message, soft_wrap=True, markup=False)

    def note(self, message: str) -> None:
        if self.rich:
            self.console.print(Text(message, style="yellow"))
        else:
            self.err.print(f"note: {message}", soft_wrap=True, markup=False)

    def error(self, message: str) -> None:
        if self.rich:
            self.console.print(Text(f"error: {message}", style="bold red"))
        else:
            self.err.print(f"error: {message}", soft_wrap=True, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        if self.rich:
            table = Table(title=title, title_justify="left", expand=False)
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
        else:
            self.console.print(title, markup=False)
            for row in rows:
                self.console.print("  " + " | ".join(row), markup=False, soft_wrap=True)
