"""What the routes share: settings, the model registry, embeddings, metrics and limits."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from labs.api.metrics import Metrics
from labs.api.translate import Limits
from labs.config import Settings
from labs.serving.documents import DocumentsService
from labs.serving.embedding_service import EmbeddingService
from labs.serving.models import ModelRegistry
from labs.serving.transactions import TransactionsService


@dataclass
class ServerState:
    settings: Settings
    models: ModelRegistry
    embeddings: EmbeddingService
    metrics: Metrics
    limits: Limits
    transactions: TransactionsService
    documents: DocumentsService


def get_state(request: Request) -> ServerState:
    return request.app.state.labs
