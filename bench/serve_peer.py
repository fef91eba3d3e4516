"""Peer 2: `transformers serve --continuous-batching`, a subprocess on a free port, over HTTP.

The server is started on the same converted model folder, dtype and device as the engine, and
stopped (its whole process group) when the `with` block ends, also on Ctrl-C and errors.
Requests are streamed OpenAI chat completions sent with httpx.

Ignoring EOS: transformers serve has no `ignore_eos` / `min_tokens` field, but it accepts a
`generation_config` JSON field that replaces the request's GenerationConfig; with
`eos_token_id: -1` its continuous-batching scheduler has no EOS to stop on, so every request
runs to `max_tokens`. Output tokens are counted from the final chunk's `usage.completion_tokens`
(the stream may merge several tokens into one chunk); any request that came back short is
reported in the notes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Awaitable, Callable

import httpx

from workload import LoadResult, RequestTiming

READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A peer server as a subprocess for the duration of a `with` block: started in its own process
    group, ready once GET /health answers 200, stopped (the whole group) at the end, also on
    Ctrl-C and errors; its log is kept only after a failure."""

    name = "server"

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"{self.name}-", suffix=".log", delete=False)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def start(self) -> None:
        """Start the server and wait until it is ready (RuntimeError with its log's tail if it is not)."""
        self._process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if isinstance(error, Exception):  # a failure, not Ctrl-C: the server's log may say why
            print(f"{self.name} log kept at {self._log.name}", file=sys.stderr)
        else:
            Path(self._log.name).unlink(missing_ok=True)

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)  # the group this script created for the server
            except ProcessLookupError:
                return
            try:
                process.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])


class ServeProcess(ServerProcess):
    """`transformers serve FOLDER --continuous-batching` for the duration of a `with` block."""

    name = "transformers-serve"

    def __init__(self, folder: Path, dtype: str, device: str) -> None:
        self.folder = folder
        self.model_id = str(folder)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__([
            str(Path(sys.executable).with_name("transformers")), "serve", self.model_id,
            "--continuous-batching", "--dtype", dtype, "--device", device,
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ], env={**os.environ, "HF_HUB_OFFLINE": "1"})


def request_body(model_id: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, object]:
    generation = {"max_new_tokens": max_tokens, "do_sample": False, "eos_token_id": -1}
    return {"model": model_id, "messages": messages, "stream": True, "max_tokens": max_tokens,
            "generation_config": json.dumps(generation)}


async def stream_one(client: httpx.AsyncClient, server: ServeProcess, messages: list[dict[str, str]], max_tokens: int) -> RequestTiming:
    body = request_body(server.model_id, messages, max_tokens)
    timing = RequestTiming(submitted=time.perf_counter())
    usage_tokens: int | None = None
    chunks = 0
    async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"transformers serve answered {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if "error" in payload:
                raise RuntimeError(f"transformers serve stream error: {payload['error']}")
            for choice in payload.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    timing.record(1, time.perf_counter())
            if payload.get("usage"):
                usage_tokens = payload["usage"].get("completion_tokens")
    timing.finished = time.perf_counter()
    timing.tokens = usage_tokens if usage_tokens is not None else chunks
    return timing


async def closed_loop(stream: Callable[..., Awaitable[RequestTiming]], server: ServerProcess,
                      conversations: list[list[dict[str, str]]], max_tokens: int, concurrency: int, system: str,
                      limits: httpx.Limits | None = None) -> LoadResult:
    """`concurrency` clients send the conversations through `stream(client, server, messages, max_tokens)`,
    each its next one when the previous has finished; requests that came back short are noted."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = limits or httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        async def one(messages: list[dict[str, str]]) -> RequestTiming:
            async with semaphore:
                return await stream(client, server, messages, max_tokens)

        started = time.perf_counter()
        timings = await asyncio.gather(*(one(m) for m in conversations))
        wall = time.perf_counter() - started
    result = LoadResult(system, concurrency, list(timings), wall)
    short = [t.tokens for t in timings if t.tokens != max_tokens]
    if short:
        result.notes.append(f"{system}: {len(short)} requests returned != {max_tokens} tokens (min {min(short)}); "
                            "tok/s uses the counts received")
    return result


async def run_load(server: ServeProcess, conversations: list[list[dict[str, str]]], max_tokens: int, concurrency: int) -> LoadResult:
    return await closed_loop(stream_one, server, conversations, max_tokens, concurrency, "transformers serve --cb")


async def warm_up(server: ServeProcess, messages: list[dict[str, str]], max_tokens: int) -> RequestTiming:
    """One request (it also initialises the continuous-batching manager, which is lazy)."""
    async with httpx.AsyncClient(timeout=None) as client:
        return await stream_one(client, server, messages, max_tokens)
