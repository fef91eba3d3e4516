"""Prometheus metrics: HTTP traffic, each loaded engine's state, latencies, embedding throughput, and
requests and tokens by API key.

Each app gets its own registry (several apps can live in one process, as in tests). Engine gauges
and token counters are read from the engines at scrape time; a model that is loading (the torch
thread is busy) is skipped for that scrape rather than blocking it. Per-key counters are read from
the rate limiter, which counts them; their `key` label takes only configured names ("-" for the
unnamed LABS_API_KEY keys), and there are none when the server has no keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from labs.api.rate_limits import RateLimiter
from labs.serving.errors import EngineDeadError
from labs.serving.models import ModelRegistry

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The standard process_*, python_info and python_gc_* series (prometheus_client puts them on its
        # global registry only, which /metrics does not serve). They describe the whole process.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("labs_http_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("labs_http_request_duration_seconds", "Time to answer (streams: until the last byte).",
                                         ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.time_to_first_token = Histogram("labs_time_to_first_token_seconds",
                                             "From a request's arrival at the engine to its first generated token.",
                                             ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram("labs_time_per_output_token_seconds",
                                               "Average time between a request's generated tokens after the first.",
                                               ["model"], buckets=_PER_TOKEN_BUCKETS, registry=self.registry)
        self.embedding_inputs = Counter("labs_embedding_inputs", "Texts (or token arrays) embedded.", registry=self.registry)
        self.embedding_tokens = Counter("labs_embedding_tokens", "Tokens fed to the embedding model.", registry=self.registry)
        self.embedding_seconds = Histogram("labs_embedding_request_duration_seconds",
                                           "Time to embed one request's inputs (batched with others).",
                                           buckets=_LATENCY_BUCKETS, registry=self.registry)

    def watch_engines(self, models: ModelRegistry) -> None:
        self.registry.register(_EngineCollector(lambda: models))

    def watch_keys(self, limiter: RateLimiter) -> None:
        self.registry.register(_KeyCollector(limiter))


class _KeyCollector(Collector):
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def collect(self) -> Iterable[Metric]:
        if not self._limiter.names():
            return []  # a server without keys has no per-key series
        requests = CounterMetricFamily("labs_key_requests", "Generation and embedding requests admitted, by API key.",
                                       labels=["key"])
        limited = CounterMetricFamily("labs_key_rate_limited", "Requests refused (429) for being over a key's limits.",
                                      labels=["key"])
        prompt = CounterMetricFamily("labs_key_prompt_tokens", "Prompt (and embedded) tokens processed, by API key.",
                                     labels=["key"])
        generated = CounterMetricFamily("labs_key_generation_tokens", "Tokens generated, by API key.", labels=["key"])
        in_flight = GaugeMetricFamily("labs_key_requests_in_flight", "Requests being answered, by API key.",
                                      labels=["key"])
        for name in self._limiter.names():
            snapshot = self._limiter.snapshot(name)
            requests.add_metric([name], snapshot.requests)
            limited.add_metric([name], snapshot.rate_limited)
            prompt.add_metric([name], snapshot.prompt_tokens)
            generated.add_metric([name], snapshot.generated_tokens)
            in_flight.add_metric([name], snapshot.in_flight)
        return [requests, limited, prompt, generated, in_flight]


class _EngineCollector(Collector):
    def __init__(self, models: Callable[[], ModelRegistry]) -> None:
        self._models = models

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: describing would take stats from engines at registration

    def collect(self) -> Iterable[Metric]:
        registry = self._models()
        loaded = GaugeMetricFamily("labs_models_loaded", "Models in memory.")
        loaded.add_metric([], len(registry.loaded_models()))
        waiting = GaugeMetricFamily("labs_requests_waiting", "Requests queued for a slot in the engine.", labels=["model"])
        running = GaugeMetricFamily("labs_requests_running", "Requests being generated.", labels=["model"])
        usage = GaugeMetricFamily("labs_kv_cache_usage_ratio", "Fraction of KV cache blocks in use.", labels=["model"])
        blocks = GaugeMetricFamily("labs_kv_cache_blocks", "KV cache blocks in total.", labels=["model"])
        prompt = CounterMetricFamily("labs_prompt_tokens", "Prompt tokens processed (since the model was loaded).", labels=["model"])
        cached = CounterMetricFamily("labs_prompt_cached_tokens", "Prompt tokens served from the prefix cache.", labels=["model"])
        generated = CounterMetricFamily("labs_generation_tokens", "Tokens generated (since the model was loaded).", labels=["model"])
        finished = CounterMetricFamily("labs_engine_requests_finished", "Requests the engine finished.", labels=["model"])
        preempted = CounterMetricFamily("labs_engine_preemptions", "Sequences preempted for lack of cache.", labels=["model"])
        drafts = CounterMetricFamily("labs_engine_draft_tokens", "Draft tokens checked by speculative decoding.", labels=["model"])
        accepted = CounterMetricFamily("labs_engine_accepted_draft_tokens",
                                       "Draft tokens the model agreed with (each one a decode step saved).", labels=["model"])
        for served in registry.loaded_models():
            try:
                stats = served.engine.stats(timeout=2.0)
            except EngineDeadError as error:
                logger.warning("metrics: no stats from %s: %s", served.id, error)
                continue
            label = [served.id]
            waiting.add_metric(label, stats.waiting)
            running.add_metric(label, stats.running)
            usage.add_metric(label, stats.kv_cache_usage)
            blocks.add_metric(label, stats.kv_cache_blocks_total)
            prompt.add_metric(label, stats.prompt_tokens_total)
            cached.add_metric(label, stats.cached_prompt_tokens_total)
            generated.add_metric(label, stats.generation_tokens_total)
            finished.add_metric(label, stats.requests_finished_total)
            preempted.add_metric(label, stats.preemptions_total)
            drafts.add_metric(label, stats.draft_tokens_total)
            accepted.add_metric(label, stats.accepted_draft_tokens_total)
        return [loaded, waiting, running, usage, blocks, prompt, cached, generated, finished, preempted, drafts, accepted]
