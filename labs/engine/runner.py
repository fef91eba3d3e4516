"""The only code that builds batch tensors and calls the model forward.

A step's tokens (prefill chunks and one token per decoding sequence) are packed into a single
row with per-token positions; logits are computed only for the rows that are sampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labs.engine.attention import DecodeRows, PagedBatch, PrefillChunk, batch_context
from labs.engine.decode_buffer import DecodeBuffer
from labs.engine.errors import UnsupportedModelError
from labs.engine.adapters import AdapterSet
from labs.engine.fused_llama import FusedLlamaForward, supports
from labs.engine.kv_blocks import BlockAllocator
from labs.engine.kv_cache import KVCache, is_labs_model
from labs.engine.lora import LoraBatch, install_hooks, lora_context
from labs.engine.native import NativeKernels
from labs.engine.scheduler import SchedulerOutput
from labs.engine.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class StepLogits:
    sequences: list[Sequence]  # the sequences to sample for, in row order of `logits`
    logits: torch.Tensor  # [sum(1 + len(draft) for draft in drafts), vocab] float32
    drafts: list[list[int]]  # per sequence: the draft tokens it fed; its rows are 1 + len(draft) consecutive ones


class ModelRunner:
    """Runs the fused Llama-family forward where it applies (and `fused` allows), else the
    model's own Hugging Face forward through the registered paged attention."""

    def __init__(self, model: Any, cache: KVCache, allocator: BlockAllocator, fused: bool = True,
                 decode_buffer_bytes: int = 0, max_rows: int = 128, native_kernels: str = "auto",
                 native_cache_dir: Path | None = None) -> None:
        self.model = model
        self.cache = cache
        self.allocator = allocator
        self.device = next(model.parameters()).device
        self.block_size = cache.block_size
        # the dense buffer holds keys and values of one width: models whose values are narrower
        # (multi-head latent attention) gather their pages instead
        dense = decode_buffer_bytes and cache.shape.value_dim == cache.shape.head_dim
        self.buffer = DecodeBuffer(cache.shape, decode_buffer_bytes, max_rows, self.device) if dense else None
        self.fused: FusedLlamaForward | None = None
        if fused:
            reason = supports(model)
            if reason is None:
                self.fused = FusedLlamaForward(model)
            else:
                logger.info("running the model's own forward: the fused forward does not cover %s", reason)
        if self.fused is None and is_labs_model(model):
            raise UnsupportedModelError(f"{type(model).__name__} runs only through the engine's fused forward, which is "
                                        f"{'off (fused_forward = false)' if not fused else 'not available for it'}: load the "
                                        "model through transformers")
        self.native: NativeKernels | None = None
        if self.fused is not None and self.fused.kernels_apply:
            self.native = NativeKernels(native_kernels, native_cache_dir)
            if self.native.module is not None:
                self.fused.use_kernels(self.native.module)
        self.adapters: AdapterSet | None = None

    def serve_adapters(self, adapters: AdapterSet) -> None:
        """Apply LoRA adapters from `adapters` to the rows of the requests that name them (the
        model's own forward gets hooks on its linear layers; the fused one applies them itself)."""
        self.adapters = adapters
        if self.fused is None:
            install_hooks(self.model, adapters.slots)

    @torch.inference_mode()
    def run(self, scheduled: SchedulerOutput) -> StepLogits:
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sampled: list[Sequence] = []
        decodes, decode_slots = scheduled.decodes, scheduled.decode_slots
        drafts = scheduled.drafts or [[] for _ in decodes]
        draft_slots = scheduled.draft_slots or [[] for _ in decodes]
        extra = {seq.seq_id: len(draft) for seq, draft in zip(decodes, drafts) if draft}
        in_buffer = self.buffer.prepare(decodes, self._fill_row, extra) if self.buffer is not None and decodes else None
        if in_buffer is None and extra:
            # drafts are checked only in the decode buffer (exactly as a plain step would compute);
            # without room for their rows this step decodes plainly and the engine takes their slots back
            drafts, draft_slots, extra = [[] for _ in decodes], [[] for _ in decodes], {}
            in_buffer = self.buffer.prepare(decodes, self._fill_row) if self.buffer is not None else None
        if in_buffer is not None:  # decode rows follow the buffer's row order
            by_id = {seq.seq_id: row for seq, *row in zip(decodes, decode_slots, drafts, draft_slots)}
            decodes = in_buffer
            decode_slots, drafts, draft_slots = (list(column) for column in zip(*(by_id[seq.seq_id] for seq in decodes)))
        adapter_rows: dict[str, list[int]] = {}
        sampled_drafts: list[list[int]] = []
        for seq, slot, draft, slots_of_draft in zip(decodes, decode_slots, drafts, draft_slots):
            rows = 1 + len(draft)
            if seq.adapter is not None:
                adapter_rows.setdefault(seq.adapter, []).extend(range(len(tokens), len(tokens) + rows))
            sample_rows.extend(range(len(tokens), len(tokens) + rows))
            sampled.append(seq)
            sampled_drafts.append(draft)
            tokens.append(seq.output_token_ids[-1])
            tokens.extend(draft)
            positions.extend(range(seq.num_tokens - 1, seq.num_tokens + len(draft)))
            slots.append(slot)
            slots.extend(slots_of_draft)
        decode = None  # rows [0, decode rows) of the packed batch
        if in_buffer is not None:
            decode = self.buffer.rows(decodes, extra)
        elif decodes:
            decode = self._decode_rows(decodes)
        prefills: list[PrefillChunk] = []
        for item in scheduled.prefills:
            start, end = item.start, item.start + item.length
            row = len(tokens)
            if item.seq.adapter is not None:
                adapter_rows.setdefault(item.seq.adapter, []).extend(range(row, row + item.length))
            all_ids = item.seq.all_token_ids
            tokens.extend(all_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self.allocator.slot_mapping(item.seq.seq_id, start, end))
            context = torch.tensor(self.allocator.slot_mapping(item.seq.seq_id, 0, end), dtype=torch.long, device=self.device)
            prefills.append(PrefillChunk(row, row + item.length, start, context))
            if item.completes:
                sample_rows.append(row + item.length - 1)
                sampled.append(item.seq)
                sampled_drafts.append([])
        batch = PagedBatch(
            key_cache=self.cache.key,
            value_cache=self.cache.value,
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            decode=decode,
            prefills=prefills,
        )
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        position_ids = torch.tensor(positions, dtype=torch.long, device=self.device)
        # Logits only for sampled rows; a step that samples nothing (a middle prefill chunk)
        # still keeps one row, which costs less than a second forward signature.
        keep = torch.tensor(sample_rows or [len(tokens) - 1], dtype=torch.long, device=self.device)
        lora = self._lora_batch(adapter_rows, len(tokens))
        if self.fused is not None:
            logits = self.fused(input_ids, position_ids, batch, keep, lora)
        else:
            with batch_context(batch), lora_context(lora):
                output = self.model(input_ids=input_ids[None], position_ids=position_ids[None], use_cache=False, logits_to_keep=keep)
            logits = output.logits[0]
        return StepLogits(sampled, logits[:len(sample_rows)].float(), sampled_drafts)

    def _lora_batch(self, adapter_rows: dict[str, list[int]], total: int) -> LoraBatch | None:
        if not adapter_rows:
            return None
        return LoraBatch(self.adapters.stack, {
            name: None if len(rows) == total else torch.tensor(rows, dtype=torch.long)
            for name, rows in adapter_rows.items()
        }, total, self.device)

    @property
    def verifies_exactly(self) -> bool:
        """Draft tokens are checked with the very arithmetic a plain decode step would use (the
        fused forward's native kernels: per-row sums in a fixed order), so speculation never
        changes a token; elsewhere the engine does not speculate."""
        return self.fused is not None and self.fused.kernels is not None and self.buffer is not None

    def rewind(self, seq: Sequence) -> None:
        """After a step with drafts: keep the keys and values of the sequence's computed tokens
        only (the slots of rejected or unchecked drafts are taken back)."""
        self.allocator.truncate(seq.seq_id, seq.num_computed_tokens)
        if self.buffer is not None:
            self.buffer.rewind(seq.seq_id, seq.num_computed_tokens)

    def between_requests(self) -> None:
        """Nothing is running: the decode buffer holds no rows (its storage stays, like the
        pages'), and native kernels whose background build has finished take over now, so no
        request ever changes path halfway."""
        if self.buffer is not None:
            self.buffer.clear()
        if self.native is not None and self.fused.kernels is None and self.native.poll() is not None:
            self.fused.use_kernels(self.native.module)
            logger.info("the fused forward now runs the native kernels")

    def _fill_row(self, seq: Sequence, row: int, tokens: int) -> None:
        """Copy a sequence's first `tokens` keys/values from its pages into its buffer row."""
        slots = torch.tensor(self.allocator.slot_mapping(seq.seq_id, 0, tokens), dtype=torch.long, device=self.device)
        for layer in range(self.cache.shape.num_layers):
            keys, values = self.buffer.row_view(layer, row, tokens)
            keys.copy_(self.cache.key[layer].index_select(1, slots))
            values.copy_(self.cache.value[layer].index_select(1, slots))

    def _decode_rows(self, seqs: list[Sequence]) -> DecodeRows:
        """Block tables of the decoding sequences, padded to the longest, and the padding mask."""
        size = self.block_size
        tables = [self.allocator.block_table(seq.seq_id) for seq in seqs]
        width = max(len(t) for t in tables)
        padded = np.zeros((len(seqs), width), dtype=np.int64)
        for i, table in enumerate(tables):
            padded[i, :len(table)] = table
        lengths = np.array([seq.num_tokens for seq in seqs])
        padding = np.arange(width * size)[None, :] >= lengths[:, None]
        per_head = padded[None, :, :] + (np.arange(self.cache.shape.kv_heads) * self.cache.num_blocks)[:, None, None]
        return DecodeRows(
            count=len(seqs),
            block_size=size,
            block_tables=torch.from_numpy(per_head.reshape(-1)).to(self.device),
            padding=torch.from_numpy(padding).to(self.device)[None, :, None, :],
            lengths=torch.from_numpy(lengths).to(self.device)[None, :, None, None],
        )
