"""The models a server offers, loaded on first use and unloaded when idle or crowded out.

A client names a model by id: the configured default model, or an alias from labs.toml
`[models]`. Nothing else is accepted, so a request cannot make the server read an arbitrary path
or reach for the network. Each loaded model gets its own engine. At most `max_loaded` are in
memory; loading one more unloads the least recently used model that has no request in flight.
Models other than the default are also unloaded after `idle_ttl` seconds without use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from labs.config import Settings
from labs.engine.core import EngineConfig
from labs.engine.engine import Engine
from labs.engine.torch_thread import torch_thread
from labs.errors import LabsError
from labs.models import LoadedModel, load_model
from labs.serving.reasoning import ReasoningTags, detect_reasoning_tags

logger = logging.getLogger(__name__)


def short_id(spec: str) -> str:
    """The id a model named by path (or Hub id) is listed under: its folder or file name, without .gguf."""
    if "/" not in spec and "\\" not in spec and not spec.endswith(".gguf"):
        return spec
    name = spec.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return name.removesuffix(".gguf") or spec


class ModelNotAvailableError(LabsError):
    """The requested model id is not one the server offers (the API answers 404)."""

    exit_code = 2

    def __init__(self, requested: str, available: list[str]) -> None:
        super().__init__(
            f"the model {requested!r} does not exist on this server; available models: {', '.join(available)}"
        )
        self.requested = requested
        self.available = available


class ModelsBusyError(LabsError):
    """Every loaded model is serving requests, so none can be unloaded to make room (503)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class ServedModel:
    """A loaded model with its engine, as requests see it."""

    id: str
    loaded: LoadedModel
    engine: Engine
    reasoning_tags: ReasoningTags | None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    @property
    def recommended(self) -> dict:
        """The sampling the model's authors recommend (a defaults layer under labs.toml)."""
        return self.loaded.recommended_sampling


EngineSizing = Callable[[LoadedModel], EngineConfig]


class ModelRegistry:
    """`engine_config` is a fixed config, or a function of the loaded model (a CLI sizes the KV cache
    for one conversation of that model rather than a server's budget); `progress` hears about loads."""

    def __init__(self, settings: Settings, engine_config: EngineConfig | EngineSizing, max_loaded: int,
                 idle_ttl: float, progress: Callable[[str], None] | None = None, any_model: bool = False) -> None:
        self.settings = settings
        self.any_model = any_model  # a terminal may open any folder, file or cached Hub id; a server may not
        self.engine_config = engine_config
        self.progress = progress
        self.max_loaded = max_loaded
        self.idle_ttl = idle_ttl
        # A model configured by path is served under its folder or file name (and answers to the path too).
        self._specs: dict[str, str | None] = {short_id(settings.generation.model_name): None}
        for alias in settings.model_aliases:
            self._specs.setdefault(alias, alias)
        self.default_id = short_id(settings.generation.model_name)
        self._spellings = {settings.generation.model_name: self.default_id}
        self._loaded: dict[str, ServedModel] = {}
        self._loading: dict[str, asyncio.Future[ServedModel]] = {}
        self._lock = asyncio.Lock()  # guards loading decisions; loads themselves run on the torch thread
        self._closed = False

    # ------------------------------------------------------------------ what is offered

    def available_ids(self) -> list[str]:
        return list(self._specs)

    def resolve_id(self, requested: str | None) -> str:
        """The served id for a request's `model` field (empty means the default).

        Ollama clients add a tag (`name:latest`): the untagged name answers to `:latest`."""
        if requested is None or requested == "":
            return self.default_id
        for spelling in (requested, requested.removesuffix(":latest")):
            if spelling in self._specs:
                return spelling
            if spelling in self._spellings:
                return self._spellings[spelling]
        if self.any_model:
            self._specs[requested] = requested
            return requested
        raise ModelNotAvailableError(requested, self.available_ids())

    def loaded(self, model_id: str) -> ServedModel | None:
        return self._loaded.get(model_id)

    def loaded_models(self) -> list[ServedModel]:
        return list(self._loaded.values())

    @property
    def default_loaded(self) -> bool:
        return self.default_id in self._loaded

    # ------------------------------------------------------------------ use

    @contextlib.asynccontextmanager
    async def use(self, requested: str | None) -> AsyncIterator[ServedModel]:
        """Hold a model for one request: it is loaded if needed and not unloaded until the block ends."""
        served = await self._acquire(requested)
        try:
            yield served
        finally:
            served.in_flight -= 1
            served.last_used = time.monotonic()

    async def _acquire(self, requested: str | None) -> ServedModel:
        model_id = self.resolve_id(requested)
        while True:
            served = self._loaded.get(model_id)
            if served is not None and not served.engine.alive and served.in_flight == 0:
                logger.error("the engine of %s has stopped; loading the model again", model_id)
                async with self._lock:
                    if self._loaded.get(model_id) is served:
                        await self._unload(served, reason="its engine stopped")
                continue
            if served is not None:
                served.in_flight += 1
                served.last_used = time.monotonic()
                return served
            pending = self._loading.get(model_id)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._loading[model_id] = pending
                try:
                    await self._load(model_id)
                except BaseException as error:
                    pending.set_exception(error)
                    pending.exception()  # retrieved: waiters re-raise it, nobody else must log it
                    raise
                else:
                    pending.set_result(self._loaded[model_id])
                finally:
                    del self._loading[model_id]
            else:
                await asyncio.shield(pending)  # then loop: it may have been unloaded meanwhile

    # ------------------------------------------------------------------ loading and unloading

    async def _load(self, model_id: str) -> None:
        if self._closed:
            raise LabsError("the server is shutting down")
        async with self._lock:
            while len(self._loaded) >= self.max_loaded:
                victim = self._least_recently_used_idle()
                if victim is None:
                    raise ModelsBusyError(
                        f"cannot load {model_id!r}: all {len(self._loaded)} loaded models are serving requests "
                        f"(LABS_MAX_LOADED_MODELS={self.max_loaded}); retry shortly or raise the limit"
                    )
                await self._unload(victim, reason="to make room for " + model_id)
            spec = self._specs[model_id]
            logger.info("loading model %s", model_id)
            served = await asyncio.wrap_future(torch_thread().submit(lambda: self._build(model_id, spec)))
            self._loaded[model_id] = served
            logger.info("model %s ready: %s (%.1f s)", model_id, served.loaded.describe(), served.loaded.load_seconds)

    def _build(self, model_id: str, spec: str | None) -> ServedModel:
        """On the torch thread: load weights and start an engine."""
        loaded = load_model(self.settings, spec, progress=self.progress)
        config = self.engine_config(loaded) if callable(self.engine_config) else self.engine_config
        engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, config)
        return ServedModel(model_id, loaded, engine, detect_reasoning_tags(loaded.tokenizer))

    def _least_recently_used_idle(self) -> ServedModel | None:
        idle = [served for served in self._loaded.values() if served.in_flight == 0]
        return min(idle, key=lambda served: served.last_used) if idle else None

    async def _unload(self, served: ServedModel, reason: str) -> None:
        self._loaded.pop(served.id, None)
        logger.info("unloading model %s (%s)", served.id, reason)

        def free() -> None:
            served.engine.shutdown()
            served.engine.core.model = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

        await asyncio.wrap_future(torch_thread().submit(free))

    async def unload_idle(self) -> list[str]:
        """Unload models other than the default that have been idle longer than idle_ttl."""
        if self.idle_ttl <= 0:
            return []
        now = time.monotonic()
        unloaded = []
        async with self._lock:
            for served in list(self._loaded.values()):
                if served.id != self.default_id and served.in_flight == 0 and now - served.last_used > self.idle_ttl:
                    await self._unload(served, reason=f"idle for {now - served.last_used:.0f} s")
                    unloaded.append(served.id)
        return unloaded

    async def shutdown(self) -> None:
        self._closed = True
        async with self._lock:
            for served in list(self._loaded.values()):
                await self._unload(served, reason="server shutdown")
