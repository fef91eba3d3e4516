"""Building the serving core for a server (a KV cache budget shared by many requests) or for one
user at a terminal (a cache sized for one conversation of the model that loads)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from labs.config import Settings
from labs.engine.core import EngineConfig, lora_reservation
from labs.engine.defaults import engine_config_from_settings
from labs.engine.kv_cache import cache_shape_for
from labs.models import LoadedModel
from labs.serving.documents import DocumentsService
from labs.serving.embedding_service import EmbeddingService
from labs.serving.models import ModelRegistry
from labs.serving.sampling import Limits
from labs.serving.transactions import TransactionsService
from labs.serving.turns import Serving


def server_serving(settings: Settings, metrics: Any) -> Serving:
    """For labs-api: at most LABS_MAX_LOADED_MODELS engines, each with the configured cache budget."""
    server = settings.server
    registry = ModelRegistry(settings, engine_config_from_settings(settings), server.max_loaded_models,
                             server.model_idle_ttl)
    return _serving(settings, registry, EmbeddingService(settings, metrics), metrics)


def local_serving(settings: Settings, progress: Callable[[str], None] | None = None) -> Serving:
    """For labs-gen and the local chat: one model at a time, its cache sized for one full context
    (unless LABS_KV_CACHE_MEMORY is set), never unloaded for idleness."""
    registry = ModelRegistry(settings, _one_conversation(settings), max_loaded=1, idle_ttl=0, progress=progress,
                             any_model=True)
    return _serving(settings, registry, EmbeddingService(settings, None), None, Limits.for_one_user())


def _one_conversation(settings: Settings) -> Callable[[LoadedModel], EngineConfig]:
    """One user runs one adapter at a time: room for one, on top of the pages of one conversation."""
    def sizing(loaded: LoadedModel) -> EngineConfig:
        if str(settings.engine.kv_cache_memory).lower() != "auto":
            return replace(engine_config_from_settings(settings), max_loras=1)
        per_token = cache_shape_for(loaded.model, loaded.context_length).bytes_per_token
        config = replace(engine_config_from_settings(settings, page_bytes=(loaded.context_length + 64) * per_token), max_loras=1)
        return replace(config, kv_cache_memory=config.kv_cache_memory + lora_reservation(loaded.model, config)[1])

    return sizing


def _serving(settings: Settings, registry: ModelRegistry, embeddings: EmbeddingService, metrics: Any,
             limits: Limits | None = None) -> Serving:
    return Serving(settings, registry, TransactionsService(settings), DocumentsService(settings), embeddings,
                   limits or Limits.from_settings(settings), metrics)
