"""Engine settings from the configuration ([engine] table); sampling is built in labs.serving.sampling."""

from __future__ import annotations

from types import SimpleNamespace

from labs.engine.core import EngineConfig


def engine_config_from_settings(settings: SimpleNamespace, page_bytes: int | None = None) -> EngineConfig:
    """`page_bytes` sizes the paged cache for a known workload (a one-shot CLI run, one chat)
    instead of the configured budget; the decode buffer's share comes on top of it."""
    engine = settings.engine
    memory = engine.kv_cache_memory
    if page_bytes is not None:
        memory = int(page_bytes / (1.0 - engine.decode_buffer)) + 1
    return EngineConfig(
        kv_cache_memory=memory,
        max_num_seqs=engine.max_num_seqs,
        max_batched_tokens=engine.max_batched_tokens,
        background_rows=engine.background_rows,
        max_queue=engine.max_queue,
        enable_prefix_caching=engine.prefix_caching,
        fused_forward=engine.fused_forward,
        decode_buffer=engine.decode_buffer,
        native_kernels=engine.native_kernels,
        native_cache_dir=settings.paths.cache_dir,
        cpu_threads=engine.cpu_threads,
        max_loras=engine.max_loras,
        max_lora_rank=engine.max_lora_rank,
        speculative_tokens=engine.speculative_tokens,
    )
