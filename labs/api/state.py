"""What the routes share: the serving core, the settings and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from labs.api.metrics import Metrics
from labs.config import Settings
from labs.serving.documents import DocumentsService
from labs.serving.embedding_service import EmbeddingService
from labs.serving.models import ModelRegistry
from labs.serving.sampling import Limits
from labs.serving.transactions import TransactionsService
from labs.serving.turns import Serving

if TYPE_CHECKING:
    from labs.api.batch_runner import BatchRunner


@dataclass
class ServerState:
    """The serving core, the settings and the metrics; the core's parts are named here for the routes."""

    settings: Settings
    serving: Serving
    metrics: Metrics
    models: ModelRegistry = field(init=False)
    embeddings: EmbeddingService = field(init=False)
    limits: Limits = field(init=False)
    transactions: TransactionsService = field(init=False)
    documents: DocumentsService = field(init=False)
    batches: BatchRunner = field(init=False)  # needs the app: set by create_app

    def __post_init__(self) -> None:
        core = self.serving
        self.models, self.embeddings, self.limits = core.models, core.embeddings, core.limits
        self.transactions, self.documents = core.transactions, core.documents


def get_state(request: Request) -> ServerState:
    return request.app.state.labs
