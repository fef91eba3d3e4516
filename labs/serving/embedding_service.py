"""The server's embedding model: loaded on first use (or at start-up), shared by all requests.

Requests name it by its configured id (LABS_EMBEDDING_MODEL); concurrent requests are batched
by an EmbeddingBatcher. Throughput is counted for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from labs.config import Settings
from labs.embeddings.batcher import EmbeddingBatcher
from labs.embeddings.model import EmbeddingInput, EmbeddingModel, EmbeddingResult, load_embedding_model
from labs.serving.accounts import Account, check_model
from labs.serving.models import ModelNotAvailableError

logger = logging.getLogger(__name__)


class EmbeddingService:
    def __init__(self, settings: Settings, metrics: Any) -> None:  # metrics None: not counted (the CLI)
        self.settings = settings
        self.metrics = metrics
        self.model_id: str = settings.embeddings.model
        self.loaded_at: float | None = None
        self._model: EmbeddingModel | None = None
        self._batcher: EmbeddingBatcher | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dimension(self) -> int | None:
        return self._model.dimension if self._model else None

    def check_model(self, requested: str | None) -> None:
        if requested not in (None, "", self.model_id):
            raise ModelNotAvailableError(requested, [self.model_id])

    async def model(self) -> EmbeddingModel:
        if self._model is None:
            async with self._lock:
                if self._model is None:
                    embeddings = self.settings.embeddings
                    # load_embedding_model blocks on the torch thread: keep the event loop free meanwhile
                    model = await asyncio.to_thread(load_embedding_model, embeddings.model, embeddings.device,
                                                    self.settings.model_aliases)
                    self._batcher = EmbeddingBatcher(model, embeddings.batch_size)
                    self._model = model
                    self.loaded_at = time.time()
        return self._model

    async def embed(self, inputs: Sequence[EmbeddingInput], account: Account | None = None) -> EmbeddingResult:
        """Embed the inputs (batched with other requests'); the account, if given, must be allowed this
        model and is charged the tokens embedded, as prompt tokens."""
        check_model(account, self.model_id)
        await self.model()
        assert self._batcher is not None
        started = time.perf_counter()
        result = await self._batcher.embed(inputs)
        if self.metrics is not None:
            self.metrics.embedding_inputs.inc(len(inputs))
            self.metrics.embedding_tokens.inc(sum(result.token_counts))
            self.metrics.embedding_seconds.observe(time.perf_counter() - started)
        if account is not None:
            account.charge(sum(result.token_counts), 0)
        return result

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
