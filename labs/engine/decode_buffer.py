"""A dense copy of the decoding sequences' keys and values, one row per sequence.

Why: with a paged cache, every decode step must first gather each sequence's pages into one
tensor per layer before the attention matmuls; on CPU that copy costs as much as the attention
itself (at 32 sequences, ~11 of a ~65 ms step). Here each decoding sequence owns a row of a
[rows, kv_heads, capacity, head_dim] tensor per layer, filled once from its pages when it starts
decoding and then extended by one token per step, so the attention reads rows [0, B) in place as
a batched matmul. The paged cache stays the source of truth (prefix caching, preemption); the
buffer is a cache of it, bounded by its own share of the KV memory budget (a resize briefly
holds the old and the new tensors). When the running sequences do not fit in that share, the
step falls back to gathering pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from labs.engine.kv_cache import CacheShape
from labs.engine.sequence import Sequence

logger = logging.getLogger(__name__)

LENGTH_STEP = 128  # capacity grows in steps of this many positions
ROW_STEP = 8  # and of this many rows


@dataclass
class DenseDecodeRows:
    """The decoding sequences occupy rows [0, count) of the packed batch and of the buffer."""

    count: int
    length: int  # positions attended to: the longest context this step
    keys: list[torch.Tensor]  # per layer [rows, kv_heads, capacity, head_dim]
    values: list[torch.Tensor]
    write_index: torch.Tensor  # [count * kv_heads] flat (row, head, position) of each new key/value
    padding: torch.Tensor  # [count, 1, 1, length] bool, True past a sequence's length
    lengths: torch.Tensor  # [count, 1, 1, 1] tokens in each sequence's context (for sliding windows)


Fill = Callable[[Sequence, int, int], None]  # (sequence, row, tokens) copies its first tokens into row


class DecodeBuffer:
    def __init__(self, shape: CacheShape, max_bytes: int, max_rows: int, device: torch.device) -> None:
        self.shape = shape
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.device = device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.row_capacity = 0
        self.length_capacity = 0
        self.seq_ids: list[int] = []  # seq id of each row
        self.filled: list[int] = []  # positions of each row that hold keys/values

    def bytes_for(self, rows: int, length: int) -> int:
        return rows * length * self.shape.bytes_per_token

    @property
    def nbytes(self) -> int:
        return self.bytes_for(self.row_capacity, self.length_capacity)

    def release(self) -> None:
        self.keys, self.values = [], []
        self.row_capacity = self.length_capacity = 0
        self.seq_ids, self.filled = [], []

    def prepare(self, seqs: list[Sequence], fill: Fill) -> list[Sequence] | None:
        """Give exactly `seqs` (decoding this step) a row each, holding every position before
        their newest token; returns them in row order, or None (buffer released) when they do
        not fit in the memory share."""
        longest = _round_up(max(seq.num_tokens for seq in seqs), LENGTH_STEP)
        rows = max(min(_round_up(len(seqs), ROW_STEP), max(self.max_rows, len(seqs))), self.row_capacity)
        length = max(longest, self.length_capacity)
        if self.bytes_for(rows, length) > self.max_bytes:  # without spare capacity, then?
            rows, length = len(seqs), longest
            if self.bytes_for(rows, length) > self.max_bytes:
                if self.keys:
                    logger.debug("decode buffer: %d sequences x %d positions exceed its %d MiB; gathering pages instead",
                                 len(seqs), length, self.max_bytes // 2**20)
                    self.release()
                return None
        wanted = {seq.seq_id for seq in seqs}
        for row in reversed(range(len(self.seq_ids))):
            if self.seq_ids[row] not in wanted:
                self._remove(row)
        self._resize(rows, length)
        present = {seq_id: row for row, seq_id in enumerate(self.seq_ids)}
        for seq in seqs:
            row = present.get(seq.seq_id)
            if row is None:
                row = len(self.seq_ids)
                self.seq_ids.append(seq.seq_id)
                self.filled.append(0)
            if self.filled[row] != seq.num_tokens - 1:  # a new row, or one that fell behind
                fill(seq, row, seq.num_tokens - 1)
            self.filled[row] = seq.num_tokens  # after this step's write
        by_id = {seq.seq_id: seq for seq in seqs}
        return [by_id[seq_id] for seq_id in self.seq_ids]

    def rows(self, seqs: list[Sequence]) -> DenseDecodeRows:
        """The attention's view of the rows prepared for `seqs` (in row order)."""
        count, heads, capacity = len(seqs), self.shape.kv_heads, self.length_capacity
        lengths = torch.tensor([seq.num_tokens for seq in seqs], dtype=torch.long)
        length = int(lengths.max())
        row_head = torch.arange(count)[:, None] * heads + torch.arange(heads)[None, :]
        write_index = (row_head * capacity + (lengths - 1)[:, None]).reshape(-1)
        padding = torch.arange(length)[None, :] >= lengths[:, None]
        return DenseDecodeRows(
            count=count,
            length=length,
            keys=self.keys,
            values=self.values,
            write_index=write_index.to(self.device),
            padding=padding.to(self.device)[:, None, None, :],
            lengths=lengths.to(self.device)[:, None, None, None],
        )

    def _remove(self, row: int) -> None:
        """Keep rows contiguous: the last row moves into the freed one."""
        last = len(self.seq_ids) - 1
        if row != last:
            used = self.filled[last]
            for layer in range(self.shape.num_layers):
                self.keys[layer][row, :, :used].copy_(self.keys[layer][last, :, :used])
                self.values[layer][row, :, :used].copy_(self.values[layer][last, :, :used])
            self.seq_ids[row], self.filled[row] = self.seq_ids[last], self.filled[last]
        self.seq_ids.pop()
        self.filled.pop()

    def _resize(self, rows: int, length: int) -> None:
        """Reallocate to [rows, length] (growing, or trimming spare capacity), keeping the rows in use."""
        if rows == self.row_capacity and length == self.length_capacity:
            return
        shape = self.shape
        used_rows, kept = len(self.seq_ids), min(length, self.length_capacity)
        keys, values = [], []
        for layer in range(shape.num_layers):
            # zeros, not empty: masked positions get probability 0, and 0 x NaN garbage would be NaN
            k = torch.zeros(rows, shape.kv_heads, length, shape.head_dim, dtype=shape.dtype, device=self.device)
            v = torch.zeros_like(k)
            if used_rows:
                k[:used_rows, :, :kept].copy_(self.keys[layer][:used_rows, :, :kept])
                v[:used_rows, :, :kept].copy_(self.values[layer][:used_rows, :, :kept])
            keys.append(k)
            values.append(v)
        self.keys, self.values = keys, values
        self.row_capacity, self.length_capacity = rows, length
        logger.debug("decode buffer: %d rows x %d positions (%.0f MiB)", rows, length, self.nbytes / 2**20)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
