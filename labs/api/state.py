"""What the routes share: the serving core, the settings and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from labs.api.metrics import Metrics
from labs.config import Settings
from labs.serving.documents import DocumentsService
from labs.serving.embedding_service import EmbeddingService
from labs.serving.models import ModelRegistry
from labs.serving.sampling import Limits
from labs.serving.transactions import TransactionsService
from labs.serving.turns import Serving


@dataclass
class ServerState:
    settings: Settings
    serving: Serving
    metrics: Metrics

    @property
    def models(self) -> ModelRegistry:
        return self.serving.models

    @property
    def embeddings(self) -> EmbeddingService:
        return self.serving.embeddings

    @property
    def limits(self) -> Limits:
        return self.serving.limits

    @property
    def transactions(self) -> TransactionsService:
        return self.serving.transactions

    @property
    def documents(self) -> DocumentsService:
        return self.serving.documents


def get_state(request: Request) -> ServerState:
    return request.app.state.labs
