"""What the server is doing now, per loaded model: the page's status view reads it.

Figures come from the engines' own counters (the same ones /metrics exports), so the page and
Prometheus never disagree. Per-request speed is the median of the engine's recent time per output
token; the page derives overall throughput from two readings of `generation_tokens_total`.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from labs.engine.errors import EngineDeadError
from labs.serving.models import ModelRegistry

logger = logging.getLogger(__name__)


def _median(values: Any) -> float | None:
    recent = list(values)[-100:]
    return statistics.median(recent) if recent else None


def models_status(registry: ModelRegistry, timeout: float = 2.0) -> list[dict[str, Any]]:
    """One entry per model in memory; blocking (engine stats are taken between steps)."""
    entries = []
    for served in registry.loaded_models():
        entry: dict[str, Any] = {"id": served.id, "loaded_at": int(served.loaded_at),
                                 "context_length": served.context_length, "alive": served.engine.alive}
        try:
            stats = served.engine.stats(timeout=timeout)
        except EngineDeadError as error:
            logger.warning("status: no stats from %s: %s", served.id, error)
            entries.append({**entry, "alive": False})
            continue
        tpot = _median(stats.time_per_output_token)
        entry.update(
            waiting=stats.waiting, running=stats.running, kv_cache_usage=round(stats.kv_cache_usage, 4),
            prompt_tokens_total=stats.prompt_tokens_total, generation_tokens_total=stats.generation_tokens_total,
            requests_finished_total=stats.requests_finished_total,
            time_to_first_token_p50=_median(stats.time_to_first_token),
            tokens_per_second_per_request=round(1.0 / tpot, 1) if tpot else None,
        )
        entries.append(entry)
    return entries
