"""The server as its own process: `labs-api`, `uvicorn labs.api:app`, and SIGTERM draining requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


# uvicorn re-raises SIGTERM once it has shut down, so the exit status is the signal's (as systemd expects)
STOPPED_CLEANLY = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABS_")}
    env.update({"LABS_MODEL": str(tiny_model_dir), "LABS_CACHE_DIR": str(labs_cache_dir), "LABS_HOME": str(tmp_path / "home"),
                "LABS_KV_CACHE_MEMORY": "64MiB", "LABS_LOG_LEVEL": "warning", **extra})
    return env


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def labs_api_command() -> list[str]:
    return [str(Path(sys.executable).parent / "labs-api")]


def test_sigterm_lets_an_in_flight_stream_finish_then_exits(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    # a generous drain window: a loaded CI machine must not turn "drained" into "cut at the deadline"
    env = server_env(tiny_model_dir, labs_cache_dir, tmp_path, LABS_PRELOAD_ON_START="true", LABS_SHUTDOWN_TIMEOUT="300")
    log = tmp_path / "server.log"
    process = subprocess.Popen([*labs_api_command(), "--port", str(port)], env=env, stderr=log.open("w"), text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100, "ignore_eos": True, "stream": True}
        payloads = []
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    payloads.append(line[len("data: "):])
                    if len(payloads) == 2:
                        process.send_signal(signal.SIGTERM)
        except httpx.HTTPError as error:
            raise AssertionError(f"stream cut after {len(payloads)} events: {error}\n{log.read_text()[-1500:]}") from None
        assert payloads[-1] == "[DONE]"
        finishes = [json.loads(p)["choices"][0]["finish_reason"] for p in payloads[:-1]]
        assert finishes[-1] == "length"  # the whole answer arrived despite the SIGTERM
        assert process.wait(timeout=60) in STOPPED_CLEANLY
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_uvicorn_app_reads_the_configuration(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tiny_model_dir, labs_cache_dir, tmp_path, LABS_PRELOAD_ON_START="true", LABS_API_KEY="k")
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "labs.api:app", "--port", str(port)], env=env,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        assert httpx.get(url + "/v1/models").status_code == 401  # LABS_API_KEY was read
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == tiny_model_dir.name  # a model given by path is listed by its folder name
    finally:
        process.terminate()
        assert process.wait(timeout=60) in STOPPED_CLEANLY


def test_labs_api_rejects_bad_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABS_")}
    env.update({"LABS_PORT": "99999", "LABS_HOME": str(tmp_path)})
    done = subprocess.run(labs_api_command(), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "LABS_PORT" in done.stderr and "65535" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["labs-api", "--help"], [sys.executable, "-m", "labs.api", "--help"]])
def test_help(command: list[str]) -> None:
    if command[0] == "labs-api":
        command = [*labs_api_command(), "--help"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--port" in done.stdout and "--preload" in done.stdout
