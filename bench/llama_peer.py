"""Peer 3: llama.cpp's `llama-server`, built here from the `llama-cpp-python` sdist, over HTTP.

No llama.cpp binary is on PyPI, but the `llama-cpp-python` sdist carries llama.cpp's sources
(`vendor/llama.cpp`): `build()` downloads it with pip and builds `llama-server` with cmake for this
machine's CPU (7-15 min on 2 cores), linked statically, into the labs cache folder, once. `LLAMA_SERVER` names a binary
built elsewhere. The server runs the embedded default's own GGUF (Q4_1) with one slot per client
(`--parallel` = the highest concurrency), `--cont-batching`, every CPU as a thread and `--no-repack`
where the CPU has AMX (its AMX repack path crashed with an illegal instruction on such a VM).
Requests are streamed OpenAI chat completions with `ignore_eos`, so every one runs to max_tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from serve_peer import ServerProcess, closed_loop, free_port
from workload import LoadResult, RequestTiming

# This build (0.3.36's llama.cpp) exits mid-run ("cleaning up before exit"; the client sees the
# connection drop) after a few requests when clients reuse keep-alive connections; with a fresh
# connection per request (what curl and most scripts do) it serves them all. So: no keep-alive.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
SDIST = "llama-cpp-python"


def default_binary(cache_dir: Path) -> Path:
    return cache_dir / "llama.cpp" / "bin" / "llama-server"


def find_binary(cache_dir: Path) -> Path | None:
    named = os.environ.get("LLAMA_SERVER")
    if named:
        return Path(named)
    built = default_binary(cache_dir)
    return built if built.is_file() else None


def build(cache_dir: Path, log: Path) -> Path:
    """Build llama-server from the sdist's vendored llama.cpp; the binary's path (RuntimeError if it cannot)."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install cmake g++)")
    target = default_binary(cache_dir)
    with tempfile.TemporaryDirectory(prefix="llama-build-") as work, log.open("w") as out:
        def run(*command: str, cwd: str | Path = work) -> None:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            if subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"{' '.join(command[:3])} failed; see {log}")

        run(*_pip(), "download", "--no-binary", ":all:", "--no-deps", SDIST, "-d", work)
        archive = next(Path(work).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = next(Path(work).glob("llama_cpp_python-*/vendor/llama.cpp"))
        run("cmake", "-B", "build", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=Release", cwd=source)
        run("cmake", "--build", "build", "--target", "llama-server", "-j", str(os.cpu_count() or 2), cwd=source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / "build" / "bin" / "llama-server", target)  # static: it needs nothing else from the build
        (target.parent / "VERSION").write_text(archive.name + "\n")
    return target


def _pip() -> list[str]:
    """A pip to download the sdist with: this interpreter's, else the one on PATH (uv's venvs have none)."""
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if shutil.which(name):
            return [name]
    raise RuntimeError("no pip found to download the llama-cpp-python sdist (python3 -m ensurepip, or apt-get install python3-pip)")


def cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class LlamaServer(ServerProcess):
    """`llama-server -m GGUF` for the duration of a `with` block."""

    name = "llama-server"

    def __init__(self, binary: Path, gguf: Path, slots: int, context_per_slot: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
                   "--parallel", str(slots), "--ctx-size", str(slots * context_per_slot), "--cont-batching",
                   "--threads", str(len(os.sched_getaffinity(0))), "--no-webui"]
        if cpu_has_amx():
            command.append("--no-repack")
        super().__init__(command)


async def stream_one(client: httpx.AsyncClient, server: LlamaServer, messages: list[dict[str, str]], max_tokens: int) -> RequestTiming:
    body = {"messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    timing = RequestTiming(submitted=time.perf_counter())
    usage_tokens: int | None = None
    async with client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"llama-server answered {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            for choice in payload.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    timing.record(1, time.perf_counter())
            if payload.get("usage"):
                usage_tokens = payload["usage"].get("completion_tokens")
    timing.finished = time.perf_counter()
    if usage_tokens is not None:
        timing.tokens = usage_tokens
    return timing


async def run_load(server: LlamaServer, conversations: list[list[dict[str, str]]], max_tokens: int, concurrency: int) -> LoadResult:
    return await closed_loop(stream_one, server, conversations, max_tokens, concurrency, "llama-server", NO_KEEPALIVE)


async def run_for(server: LlamaServer, conversations: list[list[dict[str, str]]], max_tokens: int, concurrency: int,
                  seconds: float) -> tuple[int, float]:
    """Closed-loop clients for a fixed window of wall time; the streamed tokens received within it."""
    body = {"stream": True, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    started = time.perf_counter()
    deadline = started + seconds
    counted = 0

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        nonlocal counted
        turn = offset
        while time.perf_counter() < deadline:
            payload = body | {"messages": conversations[turn % len(conversations)]}
            async with http.stream("POST", f"{server.base_url}/v1/chat/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if time.perf_counter() >= deadline:
                        return
                    if line.startswith("data: ") and line != "data: [DONE]":
                        counted += sum(1 for c in json.loads(line[6:]).get("choices", []) if (c.get("delta") or {}).get("content"))
            turn += concurrency

    async with httpx.AsyncClient(timeout=None, limits=NO_KEEPALIVE) as http:
        await asyncio.gather(*(client(http, i) for i in range(concurrency)))
    return counted, time.perf_counter() - started


if __name__ == "__main__":  # uv run python bench/llama_peer.py: build llama-server into the labs cache now
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from labs.config import load_settings

    cache = load_settings().paths.cache_dir
    log_file = cache / "llama.cpp" / "build.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(build(cache, log_file))
