"""What the routes share: the serving core, the settings, the metrics, the API keys and their limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from labs.api.keys import Keyring
from labs.api.metrics import Metrics
from labs.api.rate_limits import RateLimiter
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
    keyring: Keyring = field(init=False)
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        core = self.serving
        self.models, self.embeddings, self.limits = core.models, core.embeddings, core.limits
        self.transactions, self.documents = core.transactions, core.documents
        self.keyring = Keyring(self.settings.named_keys.values(), self.settings.server.api_keys, self.models.resolve_id)
        self.limiter = RateLimiter({name: caller.limits for name, caller in self.keyring.callers.items()})


def get_state(request: Request) -> ServerState:
    return request.app.state.labs
