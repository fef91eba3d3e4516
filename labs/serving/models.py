"""The models a server offers, loaded on first use and unloaded when idle or crowded out.

A client names a model by id: the configured default model, or an alias from labs.toml
`[models]`. Nothing else is accepted, so a request cannot make the server read an arbitrary path
or reach for the network. Each loaded model gets its own engine. At most `max_loaded` are in
memory; loading one more unloads the least recently used model that has no request in flight.
Models other than the default are also unloaded after `idle_ttl` seconds without use.

A LoRA adapter is served as a model of its own id on its base model's engine: requests for it hold
the base (loading it if needed) and name the adapter to the engine, which loads it on first use.
Adapters come from `[models]` or, where the server allows it, are loaded at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from labs.config import DEFAULT_MODEL_ALIAS, Settings
from labs.engine.core import EngineConfig
from labs.engine.engine import Engine
from labs.engine.torch_thread import torch_thread
from labs.engine.errors import AdapterError
from labs.engine.lora import adapter_base, is_adapter_folder
from labs.errors import LabsError, ModelLoadError
from labs.models import LoadedModel, load_model
from labs.models.embedded import EMBEDDED_CHAT_MODELS
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


class AdapterNameTakenError(LabsError):
    """A run-time adapter was given a model id the server already uses (409)."""


class ModelsBusyError(LabsError):
    """Every loaded model is serving requests, so none can be unloaded to make room (503)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class AdapterEntry:
    """A LoRA adapter offered as a model: its base model's id and its folder."""

    base_id: str
    path: Path


@dataclass(eq=False)
class ServedModel:
    """A loaded model with its engine, as requests see it (for an adapter: the base's engine and
    the adapter's name, which requests pass to the engine)."""

    id: str
    loaded: LoadedModel
    engine: Engine
    reasoning_tags: ReasoningTags | None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    adapter: str | None = None

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self.loaded.tokenizer

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def as_adapter(self, name: str) -> "ServedModel":
        """This base model as requests for its adapter `name` see it (same engine, the adapter's id)."""
        return replace(self, id=name, adapter=name)

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
        default = settings.generation.model_name
        self.default_id = short_id(default)
        self._spellings = {default: self.default_id}
        self._adapters: dict[str, AdapterEntry] = {}
        default_is_adapter = is_adapter_folder(Path(default).expanduser())
        self._specs: dict[str, str | None] = {} if default_is_adapter else {self.default_id: None}
        for alias in settings.model_aliases:
            self._specs.setdefault(alias, alias)
        if default_is_adapter:  # the default model is an adapter: it runs on the base its folder names
            path = Path(default).expanduser()
            self._adapters[self.default_id] = AdapterEntry(self._base_id(adapter_base(path) or DEFAULT_MODEL_ALIAS), path)
        for alias, entry in settings.adapter_aliases.items():
            self._adapters[alias] = AdapterEntry(self._base_id(entry.base), entry.adapter)
        self._loaded: dict[str, ServedModel] = {}
        self._loading: dict[str, asyncio.Future[ServedModel]] = {}
        self._lock = asyncio.Lock()  # guards loading decisions; loads themselves run on the torch thread
        self._closed = False

    # ------------------------------------------------------------------ what is offered

    def available_ids(self) -> list[str]:
        return list(self._specs) + list(self._adapters)

    def adapter(self, model_id: str) -> AdapterEntry | None:
        """The adapter a model id names, if it names one."""
        return self._adapters.get(model_id)

    def resolve_id(self, requested: str | None) -> str:
        """The served id for a request's `model` field (empty means the default).

        Ollama clients add a tag (`name:latest`): the untagged name answers to `:latest`."""
        if requested is None or requested == "":
            return self.default_id
        for spelling in (requested, requested.removesuffix(":latest")):
            if spelling in self._specs or spelling in self._adapters:
                return spelling
            if spelling in self._spellings:
                return self._spellings[spelling]
        if self.any_model:
            path = Path(requested).expanduser()
            if is_adapter_folder(path):  # a terminal may name an adapter folder: it runs on the base it names
                self._adapters[requested] = AdapterEntry(self._base_id(adapter_base(path)), path)
            else:
                self._specs[requested] = requested
            return requested
        raise ModelNotAvailableError(requested, self.available_ids())

    def _base_id(self, base: str | None) -> str:
        """The served id of an adapter's base model (None: the default), offering it if it is new."""
        if base is None:
            return self.default_id
        base = next((alias for alias, model in EMBEDDED_CHAT_MODELS.items() if model.hub_id == base), base)
        if base in self._specs:
            return base
        if base in self._spellings:
            return self._spellings[base]
        base_id = short_id(base)
        self._specs.setdefault(base_id, base)
        self._spellings[base] = base_id
        return base_id

    def loaded(self, model_id: str) -> ServedModel | None:
        """The loaded model serving `model_id` (for an adapter: its base, seen as the adapter)."""
        entry = self._adapters.get(model_id)
        if entry is None:
            return self._loaded.get(model_id)
        served = self._loaded.get(entry.base_id)
        return None if served is None else served.as_adapter(model_id)

    def loaded_models(self) -> list[ServedModel]:
        return list(self._loaded.values())

    @property
    def default_loaded(self) -> bool:
        return self.default_id in self._loaded

    # ------------------------------------------------------------------ use

    @contextlib.asynccontextmanager
    async def use(self, requested: str | None) -> AsyncIterator[ServedModel]:
        """Hold a model for one request: it is loaded if needed and not unloaded until the block ends."""
        model_id = self.resolve_id(requested)
        entry = self._adapters.get(model_id)
        served = await self._acquire(entry.base_id if entry else model_id)
        try:
            if entry is not None:
                await self._register_adapter(served, model_id, entry)
                yield served.as_adapter(model_id)
            else:
                yield served
        finally:
            served.in_flight -= 1
            served.last_used = time.monotonic()

    async def _register_adapter(self, served: ServedModel, name: str, entry: AdapterEntry) -> None:
        """Make sure the base's engine knows the adapter (it loads its weights when a request needs them)."""
        async with self._lock:
            if name in served.engine.adapters():
                return
            try:
                await asyncio.wrap_future(served.engine.load_adapter(name, entry.path))
            except AdapterError as error:
                raise ModelLoadError(f"the adapter {name!r} ({entry.path}) cannot be served: {error}") from None

    async def load_adapter(self, name: str, path: Path, base: str | None = None) -> AdapterEntry:
        """Offer a LoRA adapter folder as model `name` at run time (its base is loaded if needed and
        the adapter checked against it now: AdapterError says what does not fit)."""
        if name in self._specs or name in self._spellings or name in self._adapters:
            raise AdapterNameTakenError(f"the model id {name!r} is already in use on this server: choose another lora_name "
                                        "(or unload that adapter first)")
        base_id = self.resolve_id(base)
        if base_id in self._adapters:
            raise AdapterError(f"the base model {base!r} is itself an adapter; give the model the adapter was trained on")
        entry = AdapterEntry(base_id, Path(path))
        async with self.use(base_id) as served:
            await asyncio.wrap_future(served.engine.load_adapter(name, entry.path))
        self._adapters[name] = entry
        logger.info("adapter %s loaded on %s from %s", name, base_id, entry.path)
        return entry

    async def unload_adapter(self, name: str) -> None:
        """Stop offering adapter `name` (refused while requests use it)."""
        entry = self._adapters.get(name)
        if entry is None:
            raise ModelNotAvailableError(name, list(self._adapters) or ["(no adapters)"])
        served = self._loaded.get(entry.base_id)
        if served is not None and name in served.engine.adapters():
            await asyncio.wrap_future(served.engine.unload_adapter(name))
        del self._adapters[name]
        logger.info("adapter %s unloaded", name)

    async def _acquire(self, model_id: str) -> ServedModel:
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
        if not self._may_serve_adapters(model_id):
            config = replace(config, max_loras=0)  # no memory is set aside for adapters it will never run
        engine = Engine(loaded.model, loaded.tokenizer, loaded.context_length, config)
        return ServedModel(model_id, loaded, engine, detect_reasoning_tags(loaded.tokenizer))

    def _may_serve_adapters(self, model_id: str) -> bool:
        return self.settings.server.allow_runtime_lora or any(entry.base_id == model_id for entry in self._adapters.values())

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
