"""Paged attention plugged into Hugging Face models' own forward code.

transformers lets a project register an attention function by name; every model whose
attention layers go through that interface (Llama, Qwen2/3, Mistral, Phi-3, Gemma, ...) then
calls ours with its query/key/value after its own projections and rotary embeddings. All tokens
scheduled in a step (prefill chunks and one token per decoding sequence) are packed into one row,
so the linear layers run once per step for the whole batch, and this function:

1. writes each new token's key/value in place into the preallocated cache (no cache growth);
2. decoding rows: gathers each sequence's context and attends with a grouped-query matmul
   (no `repeat_kv`; the CPU SDPA kernel is poor for a single query token);
3. prefill chunks: attends with SDPA over the cached prefix plus the chunk, causally.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from labs.engine.decode_buffer import DenseDecodeRows

ATTENTION_NAME = "labs_paged"


@dataclass
class PrefillChunk:
    """Query rows [start, end) of the packed batch: positions [first_position, first_position + end - start)
    of one sequence, attending to `context_slots` (positions 0 .. the chunk's last)."""

    start: int
    end: int
    first_position: int
    context_slots: torch.Tensor  # [context_len] slot ids, long


@dataclass
class DecodeRows:
    """The decoding sequences occupy rows [0, count) of the packed batch."""

    count: int
    block_size: int
    block_tables: torch.Tensor  # [kv_heads * count * blocks]: block ids per kv head (offset by head * num_blocks) and sequence
    padding: torch.Tensor  # [1, count, 1, L] bool, True past a sequence's length (L = blocks * block_size)
    lengths: torch.Tensor  # [1, count, 1, 1] tokens in each sequence's context (for sliding windows)


@dataclass
class PagedBatch:
    """What one forward needs to know about the cache layout; built by the runner."""

    key_cache: list[torch.Tensor]  # per layer [kv_heads, num_slots, head_dim]
    value_cache: list[torch.Tensor]
    slot_mapping: torch.Tensor  # [T] where each new token's key/value goes
    decode: DecodeRows | DenseDecodeRows | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)
    # labs.engine.native when the forward runs it (fp32 on CPU): cache writes and the decode
    # softmax then take one kernel call each instead of several PyTorch operations
    native: ModuleType | None = None


_current_batch: ContextVar[PagedBatch | None] = ContextVar("labs_paged_batch", default=None)


@contextmanager
def batch_context(batch: PagedBatch) -> Iterator[None]:
    """Make `batch` the one the attention layers of the forward run inside this block read.

    The batch travels beside the call, not as a keyword argument, so a model whose layers do not
    pass every keyword on to their attention (StableLM's decoder layer drops them) still gets it.
    """
    token = _current_batch.set(batch)
    try:
        yield
    finally:
        _current_batch.reset(token)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    labs_batch: PagedBatch | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """Signature of transformers' attention interface; returns ([1, T, heads, value_dim], None).

    `sliding_window` (Mistral, Qwen2, Gemma) lets a query at position p see keys in
    (p - window, p]; `softcap` (Gemma 2) squashes scores with tanh before the softmax; `s_aux`
    (GPT-OSS's attention sinks) is one learned logit per head that joins each softmax's
    denominator without a value.
    """
    batch = labs_batch if labs_batch is not None else _current_batch.get()
    if batch is None:
        raise RuntimeError("the labs_paged attention runs only inside the labs engine (no batch for this forward)")
    # [1, heads, T, D] -> [T, heads, D]
    out = paged_attention(module.layer_idx, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                          batch, scaling, sliding_window, softcap, s_aux)
    return out.unsqueeze(0), None


def paged_attention(layer: int, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: PagedBatch,
                    scaling: float | None = None, sliding_window: int | None = None, softcap: float | None = None,
                    sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Store the step's keys/values of `layer` in the cache and attend: q [T, heads, D], key
    [T, kv_heads, D] and value [T, kv_heads, Dv] (any strides) -> [T, heads, Dv].

    `sinks` ([heads], or None): attention sinks, a logit per head added to every softmax's
    denominator."""
    key_cache, value_cache = batch.key_cache[layer], batch.value_cache[layer]
    if batch.native is not None:
        batch.native.store_pages(key, value, key_cache, value_cache, batch.slot_mapping)
    else:
        key_cache.index_copy_(1, batch.slot_mapping, key.transpose(0, 1).to(key_cache.dtype))
        value_cache.index_copy_(1, batch.slot_mapping, value.transpose(0, 1).to(value_cache.dtype))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    decode = batch.decode
    if sliding_window is not None and sliding_window <= 0:
        sliding_window = None
    if sinks is not None:
        sinks = sinks.detach().float()
    decoded = None
    if isinstance(decode, DenseDecodeRows):
        decoded = _dense_decode_attention(q, key, value, layer, decode, scale, sliding_window, softcap, batch.native, sinks)
    elif decode is not None:
        decoded = _decode_attention(q, key_cache, value_cache, decode, scale, sliding_window, softcap, sinks)
    if not batch.prefills:
        return decoded
    out = torch.empty(q.shape[:-1] + (value_cache.shape[-1],), dtype=q.dtype, device=q.device)
    if decoded is not None:
        out[:decode.count] = decoded
    for chunk in batch.prefills:
        out[chunk.start:chunk.end] = _prefill_attention(q[chunk.start:chunk.end], key_cache, value_cache, chunk, scale,
                                                        sliding_window, softcap, sinks)
    return out


def _decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, decode: DecodeRows, scale: float,
                      sliding_window: int | None, softcap: float | None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence against its whole context.

    The cache is kv-head major ([kv_heads, slots, head_dim]) and a block of one head is one
    contiguous run of block_size * head_dim values, so a single `index_select` gathers every
    sequence's context, for every kv head, already in the layout of a batched matmul over
    (kv_head, sequence): no repeat_kv, no transposed copies.
    """
    rows = decode.count
    kv_heads, _, head_dim = key_cache.shape
    value_dim = value_cache.shape[-1]
    heads = q.shape[1]
    group = heads // kv_heads
    keys = key_cache.view(-1, decode.block_size * head_dim).index_select(0, decode.block_tables)
    values = value_cache.view(-1, decode.block_size * value_dim).index_select(0, decode.block_tables)
    keys = keys.view(kv_heads * rows, -1, head_dim)  # [kvh * B, L, D]
    values = values.view(kv_heads * rows, -1, value_dim)
    queries = q[:rows].reshape(rows, kv_heads, group, head_dim).transpose(0, 1).reshape(kv_heads * rows, group, head_dim)
    scores = torch.bmm(queries.to(keys.dtype), keys.transpose(1, 2))  # [kvh * B, group, L]
    scores = scores.view(kv_heads, rows, group, -1).mul_(scale)
    head_sinks = None if sinks is None else sinks.view(kv_heads, 1, group, 1)
    probs = _decode_probs(scores, decode.padding, decode.lengths, sliding_window, softcap, head_sinks)
    out = torch.bmm(probs.to(values.dtype).view(kv_heads * rows, group, -1), values).view(kv_heads, rows, group, value_dim)
    return out.transpose(0, 1).reshape(rows, heads, value_dim).to(q.dtype)


def _dense_decode_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, decode: DenseDecodeRows,
                            scale: float, sliding_window: int | None, softcap: float | None, native: ModuleType | None = None,
                            sinks: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence against its row of the decode buffer, read in place.

    Rows [0, count) of the buffer, cut to the longest context, are one batched matmul over
    (sequence, kv head) with no copy: keys [rows, kv_heads, head_dim, capacity] are already the
    scores matmul's right-hand side, values [rows, kv_heads, capacity, head_dim] the output's.
    """
    rows, length = decode.count, decode.length
    keys, values = decode.keys[layer], decode.values[layer]
    _, kv_heads, head_dim, _ = keys.shape
    heads = q.shape[1]
    group = heads // kv_heads
    plain = sliding_window is None and softcap is None and sinks is None
    if decode.buffer_rows is not None and not (native is not None and plain):
        raise RuntimeError("draft tokens are verified only by the native decode attention (the engine should not have proposed them)")
    if native is not None:
        native.store_decode_rows(key, value, keys, values, decode.lengths, decode.buffer_rows)
        if plain:  # the same bits alone or batched
            return native.decode_attention(q, keys, values, decode.lengths, scale, decode.buffer_rows).to(q.dtype)
    else:
        keys.view(-1).put_(decode.key_write_index, key[:rows].reshape(-1).to(keys.dtype))
        values.view(-1, head_dim).index_copy_(0, decode.value_write_index, value[:rows].reshape(-1, head_dim).to(values.dtype))
    keys = keys[:rows, :, :, :length].view(rows * kv_heads, head_dim, length)
    values = values[:rows, :, :length].view(rows * kv_heads, length, head_dim)
    queries = q[:rows].reshape(rows * kv_heads, group, head_dim)
    scores = torch.bmm(queries.to(keys.dtype), keys).view(rows, kv_heads, group, length)
    head_sinks = None if sinks is None else sinks.view(1, kv_heads, group, 1)
    probs = _decode_probs(scores.mul_(scale), decode.padding, decode.lengths, sliding_window, softcap, head_sinks)
    return torch.bmm(probs.to(values.dtype).view(rows * kv_heads, group, length), values).view(rows, heads, head_dim).to(q.dtype)


def _decode_probs(scores: torch.Tensor, padding: torch.Tensor, lengths: torch.Tensor, sliding_window: int | None,
                  softcap: float | None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled decode scores (last dim = context position) -> fp32 probabilities: soft-capping,
    then positions past each sequence's length (and outside its sliding window) masked out."""
    if softcap is not None:
        scores = torch.tanh(scores.div_(softcap)).mul_(softcap)
    masked = padding
    if sliding_window is not None:
        positions = torch.arange(scores.shape[-1], device=scores.device)
        masked = masked | (positions <= lengths - 1 - sliding_window)
    scores.masked_fill_(masked, float("-inf"))
    return _softmax(scores, sinks)


def _softmax(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """fp32 softmax over the last dim; with sinks (broadcastable to scores[..., :1]), each row's
    denominator also holds exp(sink): probabilities then sum to less than one."""
    if sinks is None:
        return torch.softmax(scores, dim=-1, dtype=torch.float32)
    scores = scores.float()
    total = torch.logaddexp(torch.logsumexp(scores, dim=-1, keepdim=True), sinks)
    return torch.exp(scores - total)


def _prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, chunk: PrefillChunk, scale: float,
                       sliding_window: int | None, softcap: float | None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    keys = key_cache.index_select(1, chunk.context_slots).unsqueeze(0).to(q.dtype)  # [1, kvh, L, D]
    values = value_cache.index_select(1, chunk.context_slots).unsqueeze(0).to(q.dtype)
    queries = q.transpose(0, 1).unsqueeze(0)  # [1, heads, q, D]
    length, context = q.shape[0], keys.shape[2]
    plain = softcap is None and sinks is None
    if chunk.first_position == 0 and sliding_window is None and plain:
        out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=scale, enable_gqa=True)
        return out[0].transpose(0, 1)
    query_positions = torch.arange(chunk.first_position, chunk.first_position + length, device=q.device)[:, None]
    key_positions = torch.arange(context, device=q.device)[None, :]
    allowed = key_positions <= query_positions
    if sliding_window is not None:
        allowed &= key_positions > query_positions - sliding_window
    if plain:
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed, scale=scale, enable_gqa=True)
        return out[0].transpose(0, 1)
    group = queries.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.matmul(queries, keys.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = _softmax(scores, None if sinks is None else sinks.view(1, -1, 1, 1)).to(values.dtype)
    return torch.matmul(probs, values)[0].transpose(0, 1)


def register_paged_attention() -> None:
    """Make `attn_implementation="labs_paged"` available to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
