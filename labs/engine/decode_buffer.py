"""A dense copy of the decoding sequences' keys and values, one row per sequence.

Why: with a paged cache, every decode step must first gather each sequence's pages into one
tensor per layer before the attention matmuls; on CPU that copy costs as much as the attention
itself (at 32 sequences, ~11 of a ~65 ms step). Here each decoding sequence owns a row of a
dense tensor per layer, filled once from its pages when it starts decoding and then extended by
one token per step, so the attention reads rows [0, B) in place as a batched matmul. Keys are
stored transposed, [rows, kv_heads, head_dim, capacity]: the scores matmul then reads them in
the layout it streams fastest (2x faster than through a transposed view on CPU, ~4 ms of a
55 ms step at 32 sequences); values are [rows, kv_heads, capacity, head_dim].

The paged cache stays the source of truth (prefix caching, preemption); the buffer is a cache
of it, in one storage of its own share of the KV memory budget, allocated (and zeroed) once
like the pages. Every layer's keys and values have a fixed region of it, so more rows extend a
region in place and only a new capacity moves rows (in place, without a second buffer); the
capacity is sized up front for the longest the sequences can get, so it rarely changes. When
the running sequences do not fit in the share, the step falls back to gathering pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from labs.engine.kv_cache import CacheShape, zeros
from labs.engine.sequence import Sequence

logger = logging.getLogger(__name__)

LENGTH_STEP = 128  # capacity grows in steps of this many positions
ROW_STEP = 8  # and of this many rows


@dataclass
class DenseDecodeRows:
    """The decoding sequences occupy rows [0, count) of the packed batch and of the buffer."""

    count: int
    length: int  # positions attended to: the longest context this step
    keys: list[torch.Tensor]  # per layer [rows, kv_heads, head_dim, capacity] (transposed)
    values: list[torch.Tensor]  # per layer [rows, kv_heads, capacity, head_dim]
    key_write_index: torch.Tensor  # [count * kv_heads * head_dim] flat (row, head, dim, position) of each new key value
    value_write_index: torch.Tensor  # [count * kv_heads] flat (row, head, position) of each new value vector
    padding: torch.Tensor  # [count, 1, 1, length] bool, True past a sequence's length
    lengths: torch.Tensor  # [count, 1, 1, 1] tokens in each sequence's context (for sliding windows)
    # the buffer row of each query row, when a sequence verifying drafts has several (else row i is buffer row i)
    buffer_rows: torch.Tensor | None = None


Fill = Callable[[Sequence, int, int], None]  # (sequence, row, tokens) copies its first tokens into row


class DecodeBuffer:
    def __init__(self, shape: CacheShape, max_bytes: int, max_rows: int, device: torch.device) -> None:
        self.shape = shape
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.device = device
        # one region per layer for keys, one for values; zeros, so nothing read is ever garbage
        self._region = max_bytes // (2 * shape.num_layers) // (torch.finfo(shape.dtype).bits // 8)
        self.storage = zeros((2 * shape.num_layers * self._region,), shape.dtype, device)
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
        """Bytes of the storage the current layout uses."""
        return self.bytes_for(self.row_capacity, self.length_capacity)

    def row_view(self, layer: int, row: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one row's first `tokens` keys and values, both [kv_heads, tokens, head_dim]."""
        return _row_view(self.keys[layer], self.values[layer], row, tokens)

    def clear(self) -> None:
        """Forget every row (the storage and its layout stay)."""
        self.seq_ids, self.filled = [], []

    def prepare(self, seqs: list[Sequence], fill: Fill, drafts: dict[int, int] | None = None) -> list[Sequence] | None:
        """Give exactly `seqs` (decoding this step) a row each, holding every position before
        their newest token; returns them in row order, or None (rows cleared) when they do
        not fit in the memory share. `drafts`: seq id -> draft tokens it also feeds this step."""
        drafts = drafts or {}
        longest = _round_up(max(seq.num_tokens + drafts.get(seq.seq_id, 0) for seq in seqs), LENGTH_STEP)
        # the most positions these sequences can reach: sized for it up front, rows never have
        # to move while they decode
        final = _round_up(max(len(seq.prompt_token_ids) + seq.max_tokens for seq in seqs), LENGTH_STEP)
        rows = max(min(_round_up(len(seqs), ROW_STEP), max(self.max_rows, len(seqs))), self.row_capacity)
        for length in (max(final, longest, self.length_capacity), max(longest, self.length_capacity)):
            if self.bytes_for(rows, length) <= self.max_bytes:
                break
        else:  # without spare capacity, then?
            rows, length = len(seqs), longest
            if self.bytes_for(rows, length) > self.max_bytes:
                if self.seq_ids:
                    logger.debug("decode buffer: %d sequences x %d positions exceed its %d MiB; gathering pages instead",
                                 len(seqs), length, self.max_bytes // 2**20)
                    self.clear()
                return None
        wanted = {seq.seq_id for seq in seqs}
        for row in reversed(range(len(self.seq_ids))):
            if self.seq_ids[row] not in wanted:
                self._remove(row)
        self._relayout(rows, length)
        present = {seq_id: row for row, seq_id in enumerate(self.seq_ids)}
        for seq in seqs:
            row = present.get(seq.seq_id)
            if row is None:
                row = len(self.seq_ids)
                self.seq_ids.append(seq.seq_id)
                self.filled.append(0)
            if self.filled[row] != seq.num_tokens - 1:  # a new row, or one that fell behind
                fill(seq, row, seq.num_tokens - 1)
                self._zero_values_from(row, seq.num_tokens - 1)
            self.filled[row] = seq.num_tokens + drafts.get(seq.seq_id, 0)  # after this step's writes
        by_id = {seq.seq_id: seq for seq in seqs}
        return [by_id[seq_id] for seq_id in self.seq_ids]

    def rows(self, seqs: list[Sequence], drafts: dict[int, int] | None = None) -> DenseDecodeRows:
        """The attention's view of the rows prepared for `seqs` (in row order). A sequence with
        drafts has 1 + drafts query rows on its buffer row, each seeing one more position."""
        drafts = drafts or {}
        count, heads, capacity, dims = len(seqs), self.shape.kv_heads, self.length_capacity, self.shape.head_dim
        buffer_rows = None
        if drafts:
            per_row = [1 + drafts.get(seq.seq_id, 0) for seq in seqs]
            buffer_rows = torch.repeat_interleave(torch.arange(count), torch.tensor(per_row))
            lengths = torch.tensor([seq.num_tokens + extra for seq in seqs for extra in range(1 + drafts.get(seq.seq_id, 0))],
                                   dtype=torch.long)
            count = len(lengths)
        else:
            lengths = torch.tensor([seq.num_tokens for seq in seqs], dtype=torch.long)
        length = int(lengths.max())
        newest = (lengths - 1)[:, None]
        row_of = torch.arange(count) if buffer_rows is None else buffer_rows
        row_head = row_of[:, None] * heads + torch.arange(heads)[None, :]  # [count, heads]
        value_write_index = (row_head * capacity + newest).reshape(-1)
        row_head_dim = row_head.reshape(-1, 1) * dims + torch.arange(dims)[None, :]  # [count * heads, dims]
        key_write_index = (row_head_dim * capacity + newest.repeat_interleave(heads, dim=0)).reshape(-1)
        padding = torch.arange(length)[None, :] >= lengths[:, None]
        return DenseDecodeRows(
            count=count,
            length=length,
            keys=self.keys,
            values=self.values,
            key_write_index=key_write_index.to(self.device),
            value_write_index=value_write_index.to(self.device),
            padding=padding.to(self.device)[:, None, None, :],
            lengths=lengths.to(self.device)[:, None, None, None],
            buffer_rows=None if buffer_rows is None else buffer_rows.to(self.device),
        )

    def rewind(self, seq_id: int, tokens: int) -> None:
        """A sequence's row holds valid keys and values for its first `tokens` positions only
        (rejected drafts after them are overwritten by the next steps, never read before)."""
        if seq_id in self.seq_ids:
            row = self.seq_ids.index(seq_id)
            self.filled[row] = min(self.filled[row], tokens)

    def _zero_values_from(self, row: int, start: int) -> None:
        """Zero a row's values past its filled positions, whatever a previous occupant left
        there: masked positions get probability 0, and 0 x NaN would poison the attention.
        (Keys past the length need no zeroing: their scores are replaced by -inf.)"""
        for layer in range(self.shape.num_layers):
            self.values[layer][row, :, start:].zero_()

    def _remove(self, row: int) -> None:
        """Keep rows contiguous: the last row moves into the freed one."""
        last = len(self.seq_ids) - 1
        if row != last:
            used = self.filled[last]
            for layer in range(self.shape.num_layers):
                for target, source in zip(self.row_view(layer, row, used), self.row_view(layer, last, used)):
                    target.copy_(source)
            self._zero_values_from(row, used)
            self.seq_ids[row], self.filled[row] = self.seq_ids[last], self.filled[last]
        self.seq_ids.pop()
        self.filled.pop()

    def _relayout(self, rows: int, length: int) -> None:
        """Lay the regions out as [rows, length], keeping the rows in use.

        More rows at the same capacity only extend each region. A new capacity changes the row
        stride, so rows move inside their region: one at a time through a small copy, last row
        first when the stride grows (a row's new place overlaps only rows after it) and first
        row first when it shrinks."""
        if rows == self.row_capacity and length == self.length_capacity:
            return
        shape = self.shape
        old_keys, old_values, old_length = self.keys, self.values, self.length_capacity
        self.keys, self.values = [], []
        size = rows * shape.kv_heads * shape.head_dim * length
        for layer in range(shape.num_layers):
            base = 2 * layer * self._region
            self.keys.append(self.storage[base:base + size].view(rows, shape.kv_heads, shape.head_dim, length))
            self.values.append(self.storage[base + self._region:base + self._region + size].view(rows, shape.kv_heads, length, shape.head_dim))
        if length != old_length and self.seq_ids:
            order = range(len(self.seq_ids))
            for row in (reversed(order) if length > old_length else order):
                used = self.filled[row]
                for layer in range(shape.num_layers):
                    old = _row_view(old_keys[layer], old_values[layer], row, used)
                    for target, source in zip(self.row_view(layer, row, used), old):
                        target.copy_(source.clone())  # the old and new places may overlap
                self._zero_values_from(row, used)
        self.row_capacity, self.length_capacity = rows, length
        logger.debug("decode buffer: %d rows x %d positions (%.0f of %.0f MiB)", rows, length,
                     self.nbytes / 2**20, self.max_bytes / 2**20)


def _row_view(keys: torch.Tensor, values: torch.Tensor, row: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's keys [rows, kv_heads, head_dim, capacity] and values [rows, kv_heads, capacity,
    head_dim] -> views of a row's first `tokens` positions, both [kv_heads, tokens, head_dim]."""
    return keys[row, :, :, :tokens].transpose(-1, -2), values[row, :, :tokens]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
