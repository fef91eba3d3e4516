"""Live API servers on ephemeral ports: uvicorn in a thread of the test process.

The servers are real (uvicorn, sockets, the engine on the torch thread); running them in-process
lets tests look at the engine afterwards (cache usage back to zero). Settings come from a
labs.toml written per server plus an explicit environment, never from the developer's own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from labs.api.factory import create_app
from labs.config import load_settings


SHIPPED_TRANSACTIONS = Path(__file__).resolve().parents[2] / "data" / "all_transactions.csv"


@dataclass
class LiveServer:
    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.labs

    def engine(self, model_id: str | None = None) -> Any:
        served = self.state.models.loaded(model_id or self.state.models.default_id)
        assert served is not None, f"{model_id} is not loaded"
        return served.engine

    def wait_idle(self, model_id: str | None = None, timeout: float = 20.0) -> Any:
        """Wait until the engine runs nothing and its cache is empty; returns the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine(model_id).stats()
            if stats.running == 0 and stats.waiting == 0 and stats.kv_cache_blocks_used == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy after {timeout} s: {stats}")
            time.sleep(0.05)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def write_settings(folder: Path, toml: str = "", **env: str) -> Any:
    """Settings from a labs.toml holding `toml` and the given LABS_* environment only."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "labs.toml"
    config.write_text(toml)
    # Test servers load the embedding model when a test asks for it, not each at start (one process, one torch thread).
    environ = {"LABS_CONFIG": str(config), "LABS_HOME": str(folder / "home"), "LABS_EMBEDDING_LOAD_ON_START": "false", **env}
    return load_settings({}, environ=environ, cwd=folder)


def start_server(settings: Any) -> LiveServer:
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start")
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start within 120 s")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture(scope="session")
def tiny_settings_factory(tiny_model_dir: Path, labs_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Settings for a server whose default model is the tiny random model."""

    def make(toml: str = "", **env: str) -> Any:
        base = {"LABS_MODEL": str(tiny_model_dir), "LABS_CACHE_DIR": str(labs_cache_dir),
                "LABS_KV_CACHE_MEMORY": "64MiB", "LABS_MODEL_IDLE_TTL": "0"}
        return write_settings(tmp_path_factory.mktemp("server"), toml, **{**base, **env})

    return make


@pytest.fixture(scope="session")
def tiny_server(tiny_settings_factory: Any, default_model_dir: Path) -> Iterator[LiveServer]:
    """The tiny model as default (preloaded), the real default model as alias `smol`, small limits."""
    settings = tiny_settings_factory(
        f'[models]\nsmol = "{default_model_dir}"\n',
        LABS_PRELOAD_ON_START="true", LABS_MAX_N="4", LABS_MAX_TOKENS_LIMIT="200", LABS_MAX_MESSAGES="8",
        LABS_MAX_INPUT_CHARS="5000", LABS_MAX_EMBEDDING_INPUTS="8", LABS_MAX_BODY_SIZE="64KiB",
        LABS_MAX_LOADED_MODELS="2", LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS),
    )
    server = start_server(settings)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smol_server(default_model_dir: Path, labs_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded default model (real text), preloaded, default limits."""
    settings = write_settings(tmp_path_factory.mktemp("smol-server"), LABS_CACHE_DIR=str(labs_cache_dir),
                              LABS_PRELOAD_ON_START="true", LABS_KV_CACHE_MEMORY="256MiB")
    server = start_server(settings)
    yield server
    server.stop()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an OpenAI-shaped error with the given status; return its `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error
