"""Which LoRA adapters an engine knows, and which of them are resident (in memory) right now.

Why a limit: every resident adapter takes memory reserved from the KV-cache budget at start
(`max_loras` adapters of up to `max_lora_rank`), so the set is bounded and least recently used
adapters leave when another is needed. An adapter that running requests use never leaves; a request
for a non-resident adapter waits in the queue until one can (its files are read again then).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from labs.engine.errors import AdapterError, EngineRequestError
from labs.engine.lora import AdapterStack, LoraAdapter, LoraSlot, read_adapter

logger = logging.getLogger(__name__)


class AdapterSet:
    def __init__(self, model: nn.Module, slots: list[LoraSlot], capacity: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.slots = slots
        self.capacity = capacity
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = device
        self.known: dict[str, Path] = {}  # replaced, never changed in place: other threads read it
        self.resident: OrderedDict[str, LoraAdapter] = OrderedDict()  # least recently used first
        self.stack = AdapterStack([])
        self.loads_total = 0

    def _read(self, name: str, path: Path) -> LoraAdapter:
        self.loads_total += 1
        return read_adapter(name, path, self.model, self.slots, self.max_rank, self.dtype, self.device)

    def add(self, name: str, path: Path, in_use: set[str]) -> LoraAdapter:
        """Register an adapter, checked against the model now (AdapterError if it does not fit)."""
        if self.capacity < 1:
            raise EngineRequestError("this engine serves no adapters (engine.max_loras = 0)")
        if name in self.known:
            raise EngineRequestError(f"an adapter named {name!r} is already loaded ({self.known[name]}); unload it first")
        adapter = self._read(name, Path(path))
        self.known = {**self.known, name: Path(path)}
        if self._make_room(in_use):
            self.resident[name] = adapter
            self._restack()
        return adapter

    def remove(self, name: str, in_use: set[str]) -> None:
        if name not in self.known:
            raise EngineRequestError(f"no adapter named {name!r} is loaded; loaded: {', '.join(self.known) or 'none'}")
        if name in in_use:
            raise EngineRequestError(f"adapter {name!r} is serving requests: unload it when they have finished")
        self.known = {key: value for key, value in self.known.items() if key != name}
        if self.resident.pop(name, None) is not None:
            self._restack()

    def get(self, name: str) -> LoraAdapter:
        return self.resident[name]

    def is_resident(self, name: str | None) -> bool:
        return name is None or name in self.resident

    def make_resident(self, names: list[str], in_use: set[str], fail: Callable[[str, str], Any]) -> None:
        """Bring the adapters the next waiting requests need into memory, in queue order, while room
        can be made; an adapter whose files no longer load fails its requests through `fail`."""
        needed = set(in_use)
        before = list(self.resident)
        for name in names:
            if name in self.resident:
                self.resident.move_to_end(name)
                needed.add(name)
                continue
            if not self._make_room(needed):
                break  # every resident adapter is in use: the request waits
            try:
                self.resident[name] = self._read(name, self.known[name])
            except AdapterError as error:
                fail(name, str(error))
                continue
            needed.add(name)
        if set(self.resident) != set(before):
            self._restack()

    def _restack(self) -> None:
        self.stack = AdapterStack(list(self.resident.values()))

    def _make_room(self, keep: set[str]) -> bool:
        while len(self.resident) >= self.capacity:
            victim = next((name for name in self.resident if name not in keep), None)
            if victim is None:
                return False
            logger.info("adapter %s leaves memory (least recently used)", victim)
            del self.resident[victim]
        return True
