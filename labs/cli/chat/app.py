"""The chat loop: read a message or a slash command, stream the answer, repeat.

A turn runs the backend in a worker thread; the main thread draws the answer and catches Ctrl-C,
which aborts the request (the engine frees its cache) and returns to the prompt.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labs.cli.chat.backends import Event, LocalBackend, ServerBackend, TurnStats
from labs.cli.chat.commands import (CommandError, help_rows, is_command, parse_command, parse_docs, parse_set,
                                    parse_think)
from labs.cli.chat.render import Renderer
from labs.cli.chat.session import ChatSession
from labs.cli.chat.storage import ConversationStore, StorageError, default_name
from labs.config import Settings
from labs.errors import LabsError


class ExitChat(Exception):
    pass


def read_plain(stream: Any = None) -> Iterator[str]:
    """Messages from a pipe: one per line; a trailing backslash continues the message."""
    stream = stream or sys.stdin
    parts: list[str] = []
    for raw in stream:
        line = raw.rstrip("\r\n")
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield "\n".join(parts)
        parts = []
    if parts:
        yield "\n".join(parts)


class TerminalInput:
    """prompt_toolkit input: history in LABS_HOME (arrows, Ctrl-R), backslash continuation, pastes."""

    def __init__(self, home: Path) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        try:
            home.mkdir(parents=True, exist_ok=True)
            history: Any = FileHistory(str(home / "chat_history"))
        except OSError:
            history = InMemoryHistory()
        self.session: Any = PromptSession(history=history)
        self._interrupted = False

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                text = self._read()
            except EOFError:
                return
            except KeyboardInterrupt:
                if self._interrupted:
                    return
                self._interrupted = True
                print("(Ctrl-C again or Ctrl-D to exit)")
                continue
            self._interrupted = False
            yield text

    def _read(self) -> str:
        parts: list[str] = []
        prompt = "you> "
        while True:
            line = self.session.prompt(prompt)
            if line.endswith("\\"):
                parts.append(line[:-1])
                prompt = "...> "
                continue
            parts.append(line)
            return "\n".join(parts)


class ChatApp:
    def __init__(self, settings: Settings, backend: Any, renderer: Renderer, store: ConversationStore,
                 session: ChatSession) -> None:
        self.settings = settings
        self.backend = backend
        self.out = renderer
        self.store = store
        self.session = session

    # ------------------------------------------------------------------ loop

    def run(self, lines: Any) -> None:
        self.out.banner(self.backend.banner())
        for text in lines:
            if not text.strip():
                continue
            try:
                if is_command(text):
                    self.command(text)
                else:
                    self.turn(text)
            except ExitChat:
                return
            except (CommandError, StorageError, LabsError) as error:
                self.out.error(str(error))

    # ------------------------------------------------------------------ one answer

    def turn(self, text: str) -> None:
        session = self.session
        session.history.append({"role": "user", "content": text})
        events: queue.Queue[Event] = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                dropped = self.backend.stream(session.system, list(session.history), session.params, events.put,
                                              use_rag=self.settings.rag.enabled, use_docs=session.docs)
                if dropped:
                    events.put(Event("dropped", data=dropped))
            except BaseException as error:  # noqa: BLE001 - reported in the chat
                failure.append(error)
                events.put(Event("error", str(error)))
                events.put(Event("done", data=TurnStats(finish_reason="error")))
            finally:
                events.put(Event("end"))

        self.backend.new_turn()
        worker = threading.Thread(target=work, name="labs-chat-turn", daemon=True)
        stats: TurnStats | None = None
        dropped = 0
        view = self.out.answer(self.backend.model_name, session.think)
        with view:
            worker.start()
            finished = False
            while not finished:
                try:
                    while True:
                        event = events.get(timeout=0.1) if worker.is_alive() else events.get(timeout=5)
                        if event.kind == "end":
                            finished = True
                            break
                        if event.kind == "done":
                            stats = event.data
                        elif event.kind == "dropped":
                            dropped = event.data
                        else:
                            view.event(event)
                except queue.Empty:
                    if not worker.is_alive() and events.empty():
                        finished = True
                except KeyboardInterrupt:
                    self.backend.abort()
        worker.join(timeout=5)
        if dropped:  # the oldest turns no longer fit the context: forget them for good
            session.history = session.history[dropped:]
        answer = view.content
        if stats is None or stats.finish_reason == "error" or (not answer and stats.finish_reason == "abort"):
            session.history.pop()  # nothing usable came back: the question is not part of the history
            if stats is not None and stats.finish_reason == "abort":
                self.out.note("stopped")
            return
        session.history.append({"role": "assistant", "content": answer})
        session.totals.add(stats)
        self.out.stats(stats)

    # ------------------------------------------------------------------ commands

    def command(self, text: str) -> None:
        command = parse_command(text)
        handler = getattr(self, f"cmd_{command.name}")
        handler(command.arg)

    def cmd_help(self, arg: str) -> None:
        self.out.table("commands", ["command", "what it does"], [list(row) for row in help_rows()])
        self.out.info("A trailing backslash continues a message on the next line; Ctrl-C stops an answer.")
        self.out.info(f"Answers from your documents are {'on' if self.session.docs else 'off'} (/docs on|off).")

    def cmd_exit(self, arg: str) -> None:
        raise ExitChat

    def cmd_new(self, arg: str) -> None:
        self.session.reset()
        self.out.info("new conversation")

    def cmd_system(self, arg: str) -> None:
        self.session.system = arg or None
        self.out.info(f"system message set: {arg}" if arg else "system message cleared")

    def cmd_set(self, arg: str) -> None:
        name, value, params = parse_set(arg, self.session.params)
        self.session.params = params
        self.out.info(f"{name} = {value if value is not None else 'default'}")

    def cmd_think(self, arg: str) -> None:
        self.session.think = parse_think(arg)
        self.out.info(f"thinking is {'shown' if self.session.think else 'hidden'}")

    def cmd_docs(self, arg: str) -> None:
        on = parse_docs(arg)
        if on:  # the first time, the local backend loads the embedding model (~10 s) and opens the index
            with self.out.err.status("Loading the embedding model...", spinner="dots") if self.out.rich else _nothing():
                where = self.backend.open_documents()
            self.session.docs = True
            self.out.info(f"answering from your documents ({where}); /docs off to stop")
        else:
            self.backend.close_documents()
            self.session.docs = False
            self.out.info("answering without your documents")

    def cmd_stats(self, arg: str) -> None:
        t = self.session.totals
        rate = t.completion_tokens / t.seconds if t.seconds > 0 else 0.0
        self.out.table("session", ["", "value"], [
            ["model", self.backend.model_name], ["answers", str(t.turns)], ["from your data", str(t.from_data)],
            ["from your documents", str(t.from_documents)], ["documents", "on" if self.session.docs else "off"],
            ["stopped", str(t.stopped)], ["prompt tokens", str(t.prompt_tokens)],
            ["generated tokens", str(t.completion_tokens)], ["generation time", f"{t.seconds:.2f} s"],
            ["average rate", f"{rate:.1f} tok/s"], ["messages in history", str(len(self.session.history))],
            ["parameters", ", ".join(f"{k}={v}" for k, v in self.session.parameters().items())],
        ])

    def cmd_model(self, arg: str) -> None:
        if not arg:
            self.out.info(f"model: {self.backend.model_name}")
            return
        if isinstance(self.backend, ServerBackend):
            self.backend.switch(arg)
        else:
            with self.out.err.status(f"Loading {arg}...") if self.out.rich else _nothing():
                self.backend.load(arg)
        self.session.model = self.backend.model_name
        self.out.banner(self.backend.banner())

    def cmd_save(self, arg: str) -> None:
        name = arg or self.session.name or default_name()
        path = self.store.save(self.session.to_conversation(), name)
        self.session.name = path.stem
        self.out.info(f"saved as {path.stem} ({path})")

    def cmd_list(self, arg: str) -> None:
        found, broken = self.store.list()
        if not found and not broken:
            self.out.info(f"no saved conversations in {self.store.folder}")
        if found:
            self.out.table(f"saved conversations ({self.store.folder})", ["name", "model", "messages", "updated", "first message"],
                           [[c.name, c.model, str(c.messages), c.updated, c.preview] for c in found])
        for path, why in broken:
            self.out.note(f"skipped {path.name}: cannot be read ({why})")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise CommandError("usage: /load NAME (/list shows the saved conversations)")
        conversation = self.store.load(arg)
        for warning in self.session.restore(conversation):
            self.out.note(warning)
        if conversation.model != self.backend.model_name:
            self.out.note(f"saved with model {conversation.model}; continuing with {self.backend.model_name} (/model to switch)")
        self.out.info(f"loaded {conversation.name}: {len(self.session.history)} messages")
        for message in self.session.history[-4:]:
            who = "you" if message["role"] == "user" else "assistant"
            self.out.info(f"  {who}: {' '.join(message['content'].split())[:100]}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def run_chat(settings: Settings, server: str | None = None, api_key: str | None = None, rich: bool | None = None) -> None:
    """Start the chat: Rich UI when stdin and stdout are terminals, plain text otherwise."""
    from labs.serving.sampling import Limits, sampling_for
    from labs.serving.turn import RequestedSampling

    if rich is None:
        rich = sys.stdin.isatty() and sys.stdout.isatty()
    out = Renderer(rich)
    params = sampling_for(RequestedSampling(), settings, Limits.for_one_user())  # bad settings fail before the load
    if server:
        model = settings.generation.model_name if settings.sources.get("generation.model_name", "default") != "default" else None
        backend: Any = ServerBackend(server, api_key, model)
    else:
        status = out.err.status("Loading model...", spinner="dots") if rich else _nothing()
        with status as spinner:
            backend = LocalBackend(settings, progress=(spinner.update if spinner is not None else None))
        params = backend.default_params()  # with the model's recommended sampling under the configured values
    session = ChatSession(model=backend.model_name, params=params, system=settings.generation.system_prompt)
    store = ConversationStore(Path(settings.paths.home) / "conversations")
    app = ChatApp(settings, backend, out, store, session)
    if rich:
        # Ctrl-C stops an answer even when this process inherited SIGINT as ignored (as commands
        # started with `&` from a script do): the terminal chat promises it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app.run(TerminalInput(Path(settings.paths.home)) if rich else read_plain())
    finally:
        backend.close()
        backend.close_documents()
