"""The FastAPI application factory: routes, errors, middleware and the server's lifetime.

Start-up optionally loads the default model before traffic is accepted (LABS_PRELOAD_ON_START);
a background task unloads idle models; shutdown stops the engines after uvicorn has drained the
in-flight requests (SIGTERM waits up to LABS_SHUTDOWN_TIMEOUT for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from labs import __version__
from labs.api.errors import install_error_handlers
from labs.api.metrics import Metrics
from labs.api.batch_runner import BatchRunner
from labs.api.batch_store import BatchStore
from labs.api.file_store import FileStore
from labs.api.middleware import BodySizeLimit, RateLimitHeaders, RequestMetrics
from labs.api.rate_limits import RATE_LIMIT_HEADERS
from labs.api.routes import (batches, chat, completions, embeddings, messages, models, ollama, ops, rag, responses, simple,
                             tokens, usage)
from labs.api.routes.page import mount_page
from labs.api.state import ServerState
from labs.config import Settings, load_settings
from labs.serving.build import server_serving

logger = logging.getLogger(__name__)

DESCRIPTION = """\
An OpenAI-compatible API over local Hugging Face models. Point the `openai` SDK at `/v1`
(`OpenAI(base_url="http://HOST:PORT/v1", api_key="...")`). When the server has API keys (`[keys]` in
labs.toml or `LABS_API_KEY`), send `Authorization: Bearer KEY` (the **Authorize** button below); `/health`
and `/ready` never need it. A key over its limits gets 429 with `Retry-After`; `GET /v1/usage` shows its
limits and use.
"""


def build_state(settings: Settings) -> ServerState:
    metrics = Metrics()
    serving = server_serving(settings, metrics)
    metrics.watch_engines(serving.models)
    state = ServerState(settings, serving, metrics)
    metrics.watch_keys(state.limiter)
    return state


async def _unload_idle_models(state: ServerState) -> None:
    period = max(1.0, min(60.0, state.models.idle_ttl / 4)) if state.models.idle_ttl > 0 else None
    if period is None:
        return
    while True:
        await asyncio.sleep(period)
        try:
            await state.models.unload_idle()
        except Exception:  # noqa: BLE001 - keep the sweeper alive; the next sweep retries
            logger.exception("unloading idle models failed")


async def _load_embeddings_in_background(state: ServerState) -> None:
    """Load the embedding model while the server already answers: its first user must not wait for it.
    A failure is logged here and reported again, with its reason, to the first request that needs the model."""
    try:
        await state.embeddings.model()
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - the request that needs the model gets the error
        logger.warning("the embedding model %s could not be loaded at start: %s", state.embeddings.model_id, error)


def create_app(settings: Settings | None = None, resume_batch_jobs: bool = True) -> FastAPI:
    """The app for `settings` (default: the configuration from labs.toml, the environment and .env).
    `resume_batch_jobs=False` for an app run inside another command (labs-gen batch): the server's own
    unfinished jobs stay for the server."""
    settings = settings or load_settings({})
    state = build_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.server.preload_on_start:
            logger.info("preloading %s before accepting traffic", state.models.default_id)
            async with state.models.use(None):
                pass
        if resume_batch_jobs:
            await state.batches.start()
        tasks = [asyncio.create_task(_unload_idle_models(state))]
        if settings.embeddings.load_on_start:
            tasks.append(asyncio.create_task(_load_embeddings_in_background(state)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.batches.close()
            await asyncio.to_thread(state.documents.close)
            await state.embeddings.close()
            await state.models.shutdown()
            logger.info("labs-api stopped")

    # strict_content_type=False: curl -d sends JSON as form-encoded unless told; parse it anyway
    app = FastAPI(title="labs", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  strict_content_type=False)
    app.state.labs = state
    home = settings.paths.home
    state.batches = BatchRunner(app, BatchStore(home / "batches"), FileStore(home / "files", settings.server.max_file_size),
                                concurrency=settings.engine.max_num_seqs)
    install_error_handlers(app)
    for module in (chat, responses, completions, embeddings, models, tokens, simple, rag, ops, usage, messages, ollama, batches):
        app.include_router(module.router)
    mount_page(app)
    if settings.server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.server.cors_origins), allow_methods=["*"],
                           allow_headers=["*"],
                           expose_headers=["Retry-After", "X-Labs-Truncated-Inputs", *RATE_LIMIT_HEADERS])
    if state.keyring:
        app.add_middleware(RateLimitHeaders, limiter=state.limiter)
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_size,
                       # the form around the file takes a few bytes more; the file store checks the file itself
                       uploads={"/v1/files": (settings.server.max_file_size + 1024**2, "LABS_MAX_FILE_SIZE")})
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app
