"""LoRA adapters on one base model, applied per row so that requests for different adapters (and
for the base) share one engine, one KV cache and one batch.

Why per row and not merged: merging an adapter into the weights serves one adapter at a time and
costs a pass over every weight to switch. Here each linear layer computes its base product for the
whole batch, then adds `x[rows] @ A.T @ (B * scaling).T` for the rows of each adapter in the step
(grouped, so a step with one adapter costs two small matmuls per layer). Rows of the base model are
never touched, so their results are bit for bit the ones of a batch without adapters.

The adapter's tensors are laid out for the forward that runs them (`LoraSlot`): one slot per
linear module for the model's own forward, one per fused matmul (q|k|v, gate|up) for the fused
Llama forward, where the parts' A matrices are stacked and their B matrices placed block-diagonally.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from labs.engine.errors import AdapterError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
_load_ids = itertools.count(1)


@dataclass(frozen=True)
class LoraSlot:
    """Where the forward applies low-rank updates: the modules whose outputs one matmul computes
    side by side (one for the model's own forward; q|k|v or gate|up for the fused one)."""

    key: Any  # how the forward asks for it: a module name, or (layer index, group name)
    modules: tuple[str, ...]  # module names, in output order
    out_sizes: tuple[int, ...]
    in_features: int


@dataclass
class LoraAdapter:
    """One resident adapter: per slot, A [R, in] and B [out, R] with the scaling folded in."""

    name: str
    path: Path
    rank: int
    tables: dict[Any, tuple[torch.Tensor, torch.Tensor]]
    cache_key: str  # prefix-cache namespace: a reload (new weights) never hits the old entries

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.tables.values())


def is_adapter_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def adapter_base(path: Path) -> str | None:
    """The base model an adapter folder names (`base_model_name_or_path`), if any."""
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError):
        return None


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear-like module (nn.Linear and subclasses, int8, bitsandbytes, GPT-2's
    Conv1D); None for anything else."""
    if isinstance(module, nn.Linear) or (hasattr(module, "in_features") and hasattr(module, "out_features")):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf"):
        return int(module.nx), int(module.nf)
    return None


def module_slots(model: nn.Module) -> list[LoraSlot]:
    """One slot per linear module of the decoder (everything but the output head)."""
    head = model.get_output_embeddings()
    slots = []
    for name, module in model.named_modules():
        shape = linear_shape(module)
        if shape is not None and module is not head:
            slots.append(LoraSlot(name, (name,), (shape[1],), shape[0]))
    return slots


def slot_bytes(slots: list[LoraSlot], rank: int, dtype: torch.dtype) -> int:
    """Memory of one adapter of `rank` on every slot: what each resident adapter may take."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(len(s.modules) * rank * (s.in_features + sum(s.out_sizes)) * size for s in slots)


def read_adapter(name: str, path: Path, model: nn.Module, slots: list[LoraSlot], max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> LoraAdapter:
    """Load a PEFT LoRA adapter folder for `model`, checked against it; AdapterError says what does not fit."""
    config = _read_config(name, path)
    weights = _read_weights(name, path)
    pairs = _pair_weights(name, weights)
    modules = dict(model.named_modules())
    by_module = {module: slot for slot in slots for module in slot.modules}
    base = config.get("base_model_name_or_path")
    where = f" (it was trained on {base!r})" if base else ""
    rank = 0
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module_name, (a, b) in pairs.items():
        target = modules.get(module_name)
        if target is None:
            raise AdapterError(f"adapter {name!r} targets {module_name}, which this base model does not have{where}: "
                               "it was trained for another model")
        shape = linear_shape(target)
        if module_name not in by_module or shape is None:
            raise AdapterError(f"adapter {name!r} targets {module_name} ({type(target).__name__}); adapters may target "
                               "the linear layers of the decoder (attention and MLP projections), not the embeddings or the output head")
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != r or a.shape[1] != shape[0] or b.shape[0] != shape[1]:
            raise AdapterError(
                f"adapter {name!r} does not fit this base model{where}: {module_name} is {shape[0]} -> {shape[1]} here, "
                f"but the adapter's matrices are {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if r > max_rank:
            raise AdapterError(f"adapter {name!r} has rank {r} at {module_name}, above engine.max_lora_rank = {max_rank}: "
                               "raise LABS_MAX_LORA_RANK")
        rank = max(rank, r)
        updates[module_name] = (a.to(torch.float32), b.to(torch.float32) * _scaling(config, module_name, r))
    if not updates:
        raise AdapterError(f"adapter {name!r} holds no LoRA weights ({path})")
    tables = {}
    for slot in slots:
        parts = [updates.get(module) for module in slot.modules]
        if any(part is not None for part in parts):
            tables[slot.key] = _stack(slot, parts, dtype, device)
    adapter = LoraAdapter(name, path, rank, tables, f"lora:{name}#{next(_load_ids)}")
    logger.info("adapter %s: rank %d on %d modules (%.1f MiB)", name, rank, len(updates), adapter.nbytes / 2**20)
    return adapter


def _read_config(name: str, path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise AdapterError(f"adapter {name!r}: {path} is not a folder (expected a PEFT adapter folder with {CONFIG_FILE})")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError(f"adapter {name!r}: {path} has no {CONFIG_FILE}; is it a PEFT adapter folder?") from None
    except (OSError, ValueError) as error:
        raise AdapterError(f"adapter {name!r}: cannot read {path / CONFIG_FILE}: {error}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {name!r}: {path / CONFIG_FILE} is not a JSON object")
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise AdapterError(f"adapter {name!r} is a {kind} adapter; labs serves LoRA adapters only")
    refusals = {
        "use_dora": "it is a DoRA adapter (weight-decomposed): merge it into the model with PEFT's merge_and_unload, "
                    "or train with use_dora=False",
        "modules_to_save": "it replaces whole modules (modules_to_save), which cannot be shared by one batch: merge it "
                           "with PEFT's merge_and_unload and serve the result as its own model",
        "trainable_token_indices": "it trains token embeddings (trainable_token_indices)",
        "lora_bias": "it trains biases of its LoRA B matrices (lora_bias)",
        "layer_replication": "it replicates layers (layer_replication)",
    }
    for key, why in refusals.items():
        if config.get(key):
            raise AdapterError(f"adapter {name!r} cannot be served: {why}")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {name!r} cannot be served: it trains the base model's biases (bias={config['bias']!r}); "
                           "merge it with PEFT's merge_and_unload and serve the result as its own model")
    return config


def _read_weights(name: str, path: Path) -> dict[str, torch.Tensor]:
    for file_name in WEIGHT_FILES:
        file = path / file_name
        if not file.is_file():
            continue
        try:
            if file_name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file))
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise AdapterError(f"adapter {name!r}: cannot read {file}: {error}") from None
    raise AdapterError(f"adapter {name!r}: {path} has no weights ({' or '.join(WEIGHT_FILES)})")


_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def _pair_weights(name: str, weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A, B)} from PEFT's keys `base_model.model.<module>.lora_A.weight`."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"adapter {name!r} holds {key!r}, which is not a LoRA A/B matrix of a linear layer "
                               "(embedding LoRA, DoRA magnitudes and saved modules are not served)")
        module = match["module"].removeprefix(_PREFIX)
        halves.setdefault(module, {})[match["which"]] = tensor
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            raise AdapterError(f"adapter {name!r} has lora_{next(iter(half))} for {module} but not its pair")
        pairs[module] = (half["A"], half["B"])
    return pairs


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """lora_alpha / r (or / sqrt(r) with rsLoRA), with PEFT's per-module alpha_pattern."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _stack(slot: LoraSlot, parts: list[tuple[torch.Tensor, torch.Tensor] | None], dtype: torch.dtype,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A [R, in] stacked and B [sum(out), R] block-diagonal over the slot's parts (zeros where a part
    has no update)."""
    if len(parts) == 1:
        a, b = parts[0]
        return a.to(device=device, dtype=dtype).contiguous(), b.to(device=device, dtype=dtype).contiguous()
    present = [part for part in parts if part is not None]
    a = torch.cat([part[0] for part in present])
    b = torch.zeros(sum(slot.out_sizes), a.shape[0])
    row = column = 0
    for size, part in zip(slot.out_sizes, parts):
        if part is not None:
            rank = part[0].shape[0]
            b[row:row + size, column:column + rank] = part[1]
            column += rank
        row += size
    return a.to(device=device, dtype=dtype).contiguous(), b.to(device=device, dtype=dtype).contiguous()


class AdapterStack:
    """The resident adapters' tables stacked per slot: A [n, R, in] and B transposed, [n, R, out]
    (ranks padded with zeros, an adapter without this slot all zeros), adapter i at index i.

    Why: a step mixing several adapters then runs each slot as one gather, two batched matmuls and
    one scatter-add, whatever the number of adapters; each adapter's own tables are views of the
    stack (used when a step has one adapter on every row), so memory is not doubled.
    """

    def __init__(self, adapters: list[LoraAdapter]) -> None:
        self.index = {adapter.name: i for i, adapter in enumerate(adapters)}
        self.tables: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.owners: dict[Any, set[str]] = {}
        for key in dict.fromkeys(key for adapter in adapters for key in adapter.tables):
            owners = [adapter for adapter in adapters if key in adapter.tables]
            a0, b0 = owners[0].tables[key]
            rank = max(adapter.tables[key][0].shape[0] for adapter in owners)
            a_all = a0.new_zeros(len(adapters), rank, a0.shape[1])
            bt_all = b0.new_zeros(len(adapters), rank, b0.shape[0])
            for adapter in owners:
                a, b = adapter.tables[key]
                i, r = self.index[adapter.name], a.shape[0]
                a_all[i, :r], bt_all[i, :r] = a, b.t()
                adapter.tables[key] = (a_all[i, :r], bt_all[i, :r].t())
            self.tables[key] = (a_all, bt_all)
            self.owners[key] = {adapter.name for adapter in owners}


class LoraBatch:
    """The adapters of one step and the token rows each applies to (None: every row)."""

    def __init__(self, stack: AdapterStack, rows: dict[str, torch.Tensor | None], tokens: int, device: torch.device) -> None:
        self.stack = stack
        self.rows = rows
        self.tokens = tokens
        self.single = next(iter(rows)) if len(rows) == 1 and None in rows.values() else None
        self._row_adapters: torch.Tensor | None = None
        if self.single is None:
            # rows grouped by adapter, each group padded to the largest: padding gathers an extra zero
            # row of x and adds its (zero) update to row 0
            width = max(len(r) for r in rows.values())
            gather = torch.full((len(stack.index), width), tokens, dtype=torch.long)
            for name, r in rows.items():
                gather[stack.index[name], :len(r)] = r
            self.gather = gather.view(-1).to(device)
            self.scatter = torch.where(self.gather == tokens, 0, self.gather)
            self.width = width

    @property
    def row_adapters(self) -> torch.Tensor:
        """Each row's adapter as its index in the stack, -1 for base rows (what the native kernel reads)."""
        if self._row_adapters is None:
            index = torch.full((self.tokens,), -1, dtype=torch.long)
            for name, rows in self.rows.items():
                if rows is None:
                    index.fill_(self.stack.index[name])
                else:
                    index[rows] = self.stack.index[name]
            self._row_adapters = index
        return self._row_adapters

    def touches(self, key: Any) -> bool:
        owners = self.stack.owners.get(key, ())
        return any(name in owners for name in self.rows)

    def delta(self, x: torch.Tensor, key: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(update, rows): the update of every row, or of the gathered rows to add at `rows`."""
        a_all, bt_all = self.stack.tables[key]
        if self.single is not None:
            index = self.stack.index[self.single]
            return torch.mm(torch.mm(x, a_all[index].t()), bt_all[index]), None
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, self.gather).view(a_all.shape[0], self.width, -1)
        update = torch.bmm(torch.bmm(padded, a_all.transpose(1, 2)), bt_all)
        return update.view(-1, bt_all.shape[2]), self.scatter

    def add_to(self, out: torch.Tensor, x: torch.Tensor, key: Any) -> torch.Tensor:
        """out += (x @ A.T) @ B.T, each row with its own adapter's A and B (none for base rows), in place."""
        if not self.touches(key):
            return out
        update, rows = self.delta(x, key)
        return out.add_(update) if rows is None else out.index_add_(0, rows, update)


_current: list[LoraBatch | None] = [None]


@contextmanager
def lora_context(batch: LoraBatch | None) -> Iterator[None]:
    """Make `batch` the one the hooked modules of the model's own forward read (torch thread only)."""
    _current[0] = batch
    try:
        yield
    finally:
        _current[0] = None


def install_hooks(model: nn.Module, slots: list[LoraSlot]) -> list[Any]:
    """Forward hooks that add the current step's updates to each slot module's output."""
    modules = dict(model.named_modules())
    handles = []
    for slot in slots:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor, key: Any = slot.key) -> torch.Tensor | None:
            batch = _current[0]
            if batch is None:
                return None
            x = args[0]
            flat_out = output.reshape(-1, output.shape[-1])
            batch.add_to(flat_out, x.reshape(-1, x.shape[-1]).to(flat_out.dtype), key)
            return flat_out.view(output.shape)
        handles.append(modules[slot.key].register_forward_hook(hook))
    return handles
