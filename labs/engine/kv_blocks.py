"""Paged KV-cache bookkeeping: which physical blocks hold each sequence's tokens.

The engine preallocates ``num_blocks`` blocks of ``block_size`` token slots; token position ``p``
of a sequence lives in slot ``table[p // block_size] * block_size + p % block_size``. This module
owns only that mapping (pure Python, no torch), in the spirit of nano-vllm's BlockManager:

* Blocks are reference counted, so sequences can share them (a common prompt prefix, or the n
  samples of one prompt after ``fork``).
* Prefix caching: a *full* block whose KV has been computed is published under a chained hash
  ``hash(parent_hash, block_tokens)``. A later prompt with the same prefix reuses it instead of
  recomputing. A hit is accepted only if the block's stored tokens match and its parent is the
  very block (and generation) matched just before, so a hash collision can never share wrong KV.
* Freed blocks keep their published hash and sit in an LRU; a later identical prefix can still
  hit them until the block is taken for new content. Fresh allocations take never-published
  blocks first, then the least recently freed cached block.
* A block is published only once its KV is known to be computed: ``append_slot`` implies every
  earlier token was fed to the model, ``mark_computed`` says so explicitly (after a prefill
  chunk). Publishing at allocation time would let a second prompt "hit" blocks whose KV is
  still being written by a chunked prefill.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Parent key of a sequence's first block: (block id, generation) of "no block".
_ROOT: tuple[int, Any] = (-1, 0)


def _root(namespace: str | None) -> tuple[tuple[int, Any], int | None]:
    """Parent key and hash of a sequence's first block. Prompts in different namespaces (say, one
    per LoRA adapter, whose keys and values differ for the same tokens) never share blocks."""
    if namespace is None:
        return _ROOT, None
    return (-1, namespace), hash(("namespace", namespace))


def hash_block_tokens(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained hash of one full block given the hash of the block before it.

    Python's hash of int tuples is not randomised per process, so it is stable across runs.
    It only indexes the cache; correctness never depends on it being collision free.
    """
    return hash((parent_hash, token_ids))


class OutOfBlocksError(RuntimeError):
    """Not enough free KV blocks; the scheduler should have checked ``can_*`` first."""


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """Prompt tokens whose KV is already cached; the engine computes only the rest."""

    num_cached_tokens: int
    num_cached_blocks: int


@dataclass(frozen=True, slots=True)
class BlockCopy:
    """Copy-on-write order: copy the KV data of block ``src`` into block ``dst``."""

    src: int
    dst: int


@dataclass(slots=True)
class _Block:
    block_id: int
    ref_count: int = 0
    generation: int = 0  # bumped each time the block is taken for new content
    hash: int | None = None  # set while this block is the cache entry for that hash
    token_ids: tuple[int, ...] = ()  # content, kept while published
    parent: tuple[int, Any] = _ROOT  # (block id, generation) of the block before it


@dataclass(slots=True)
class _SeqState:
    table: list[int]
    num_tokens: int
    num_hashed: int  # leading full blocks already published (or hit)
    last_hash: int | None  # hash of block ``num_hashed - 1``
    tail: list[int]  # tokens after the hashed blocks (empty when caching is off)
    root: tuple[int, Any] = _ROOT  # parent key of the first block (its namespace)


class BlockAllocator:
    """Assigns KV-cache blocks to sequences; reference counts, prefix cache, copy-on-write."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free_uncached: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # LRU: oldest first
        self._cached: dict[int, int] = {}  # hash -> block id
        self._seqs: dict[object, _SeqState] = {}

    # ----------------------------------------------------------------- accounting

    @property
    def num_free_blocks(self) -> int:
        """Blocks no live sequence references (cached free blocks included)."""
        return len(self._free_uncached) + len(self._free_cached)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one live sequence."""
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a reusable prefix."""
        return len(self._free_cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by live sequences."""
        return self.num_used_blocks / self.num_blocks

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def num_tokens(self, seq_id: object) -> int:
        """Tokens with a slot in the sequence's blocks."""
        return self._seq(seq_id).num_tokens

    def block_table(self, seq_id: object) -> list[int]:
        """The sequence's block ids in position order (a copy)."""
        return list(self._seq(seq_id).table)

    def slot(self, seq_id: object, position: int) -> int:
        """Physical slot index of one token position."""
        state = self._seq(seq_id)
        if not 0 <= position < state.num_tokens:
            raise IndexError(f"position {position} outside 0..{state.num_tokens - 1} of {seq_id!r}")
        block_size = self.block_size
        return state.table[position // block_size] * block_size + position % block_size

    def slot_mapping(self, seq_id: object, start: int = 0, end: int | None = None) -> list[int]:
        """Physical slot indices of positions ``start..end-1`` (the tokens a forward writes)."""
        state = self._seq(seq_id)
        end = state.num_tokens if end is None else end
        if not 0 <= start <= end <= state.num_tokens:
            raise IndexError(f"range {start}..{end} outside 0..{state.num_tokens} of {seq_id!r}")
        block_size, table = self.block_size, state.table
        return [table[p // block_size] * block_size + p % block_size for p in range(start, end)]

    # ----------------------------------------------------------------- prompts

    def blocks_needed(self, token_ids: Sequence[int], namespace: str | None = None) -> int:
        """Free blocks that ``allocate(token_ids)`` would consume, prefix hits accounted."""
        matched, _ = self._match_prefix(token_ids, namespace)
        in_use = sum(1 for bid in matched if self._blocks[bid].ref_count > 0)
        return self._blocks_for(len(token_ids)) - in_use

    def can_allocate(self, token_ids: Sequence[int], namespace: str | None = None) -> bool:
        """True if the whole prompt fits now."""
        return self.blocks_needed(token_ids, namespace) <= self.num_free_blocks

    def allocate(self, seq_id: object, token_ids: Sequence[int], namespace: str | None = None) -> PrefixHit:
        """Gives a new sequence blocks for its whole prompt, reusing cached prefix blocks of the
        same namespace.

        The hit never covers the last prompt token: the engine needs its logits.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        if not token_ids:
            raise ValueError("cannot allocate blocks for an empty prompt")
        matched, last_hash = self._match_prefix(token_ids, namespace)
        total = self._blocks_for(len(token_ids))
        needed = total - sum(1 for bid in matched if self._blocks[bid].ref_count > 0)
        if needed > self.num_free_blocks:
            raise OutOfBlocksError(
                f"prompt of {len(token_ids)} tokens needs {needed} free blocks, {self.num_free_blocks} free"
            )
        # Claim the hit blocks before taking fresh ones, so the LRU cannot evict them meanwhile.
        for bid in matched:
            self._claim_cached(bid)
        table = matched + [self._take_free_block() for _ in range(total - len(matched))]
        num_hit_tokens = len(matched) * self.block_size
        tail = list(token_ids[num_hit_tokens:]) if self.enable_prefix_caching else []
        self._seqs[seq_id] = _SeqState(table, len(token_ids), len(matched), last_hash, tail, _root(namespace)[0])
        if matched:
            logger.debug("seq %r: prefix hit of %d tokens", seq_id, num_hit_tokens)
        return PrefixHit(num_hit_tokens, len(matched))

    # ----------------------------------------------------------------- decoding

    def can_append(self, seq_id: object) -> bool:
        """True if one more token fits (room in the last block, or a free block)."""
        state = self._seq(seq_id)
        return state.num_tokens % self.block_size != 0 or self.num_free_blocks > 0

    def append_slot(self, seq_id: object, token_id: int) -> int:
        """Adds one token to the sequence; returns its physical slot.

        Appending means every earlier token was fed to the model, so full blocks before it are
        published for prefix reuse.
        """
        state = self._seq(seq_id)
        if state.num_tokens % self.block_size == 0 and self.num_free_blocks == 0:
            raise OutOfBlocksError(f"no free block to extend sequence {seq_id!r}")
        self._publish_full_blocks(state, state.num_tokens)
        return self._append(state, token_id)

    def can_append_tokens(self, seq_id: object, count: int) -> bool:
        """True if `count` more tokens fit (room in the last block plus free blocks)."""
        state = self._seq(seq_id)
        return self._blocks_for(state.num_tokens + count) - len(state.table) <= self.num_free_blocks

    def append_draft_slots(self, seq_id: object, token_ids: Sequence[int]) -> list[int]:
        """Adds the newest token and draft tokens after it (speculative decoding); returns their slots.

        Only blocks before the newest token are published: the drafts may be rejected, and
        `truncate` then takes them back."""
        state = self._seq(seq_id)
        if not self.can_append_tokens(seq_id, len(token_ids)):
            raise OutOfBlocksError(f"no free blocks to extend sequence {seq_id!r} by {len(token_ids)} tokens")
        self._publish_full_blocks(state, state.num_tokens)
        return [self._append(state, token_id) for token_id in token_ids]

    def truncate(self, seq_id: object, num_tokens: int) -> None:
        """Drop the sequence's tokens from `num_tokens` on (rejected drafts), freeing blocks left empty."""
        state = self._seq(seq_id)
        hashed = state.num_hashed * self.block_size
        if not hashed <= num_tokens <= state.num_tokens:
            raise ValueError(f"cannot truncate {seq_id!r} to {num_tokens} tokens (it has {state.num_tokens}, {hashed} published)")
        if self.enable_prefix_caching:
            del state.tail[num_tokens - hashed:]
        state.num_tokens = num_tokens
        while len(state.table) > self._blocks_for(num_tokens):
            self._release(state.table.pop())

    def mark_computed(self, seq_id: object, num_computed_tokens: int) -> None:
        """Tells that the KV of the first ``num_computed_tokens`` tokens is written (e.g. after
        a prefill chunk), so their full blocks can serve other prompts."""
        self._publish_full_blocks(self._seq(seq_id), num_computed_tokens)

    # ----------------------------------------------------------------- n > 1 samples

    def can_fork(self, parent_seq_id: object) -> bool:
        """True if ``fork`` would find the block it needs for copy-on-write."""
        state = self._seq(parent_seq_id)
        return state.num_tokens % self.block_size == 0 or self.num_free_blocks > 0

    def fork(self, parent_seq_id: object, child_seq_id: object) -> BlockCopy | None:
        """Gives a child the parent's blocks: full blocks shared, the partial last block copied.

        Returns the copy the engine must do on the KV tensors (None if the last block is full).
        Fork after the parent's tokens are computed, or the copied block holds no data yet.
        """
        parent = self._seq(parent_seq_id)
        if child_seq_id in self._seqs:
            raise ValueError(f"sequence {child_seq_id!r} already has blocks")
        partial = parent.num_tokens % self.block_size != 0
        if partial and self.num_free_blocks == 0:
            raise OutOfBlocksError(f"no free block to fork sequence {parent_seq_id!r}")
        shared = parent.table[:-1] if partial else parent.table
        for bid in shared:
            self._blocks[bid].ref_count += 1
        table = list(shared)
        copy = None
        if partial:
            dst = self._take_free_block()
            table.append(dst)
            copy = BlockCopy(parent.table[-1], dst)
        self._seqs[child_seq_id] = _SeqState(
            table, parent.num_tokens, parent.num_hashed, parent.last_hash, list(parent.tail), parent.root
        )
        return copy

    # ----------------------------------------------------------------- release

    def free(self, seq_id: object) -> None:
        """Drops a sequence; its unshared blocks become free (cached ones stay hit-able)."""
        state = self._seqs.pop(seq_id, None)
        if state is None:
            raise KeyError(f"unknown sequence {seq_id!r}")
        # Last blocks first: the LRU then evicts a prefix's tail before its head.
        for bid in reversed(state.table):
            self._release(bid)

    def reset_prefix_cache(self) -> None:
        """Forgets every published block (e.g. after the weights changed)."""
        for bid in list(self._cached.values()):
            self._unpublish(self._blocks[bid])

    # ----------------------------------------------------------------- checks

    def check_invariants(self) -> None:
        """Raises AssertionError if the bookkeeping is inconsistent (used by tests)."""
        refs = [0] * self.num_blocks
        for seq_id, state in self._seqs.items():
            _check(len(set(state.table)) == len(state.table), f"{seq_id!r}: block twice in table")
            _check(len(state.table) == self._blocks_for(state.num_tokens), f"{seq_id!r}: table size")
            for bid in state.table:
                refs[bid] += 1
            if state.num_tokens % self.block_size:
                last = self._blocks[state.table[-1]]
                _check(last.ref_count == 1 and last.hash is None, f"{seq_id!r}: shared partial block")
        free_uncached, free_cached = set(self._free_uncached), set(self._free_cached)
        _check(len(free_uncached) == len(self._free_uncached), "duplicate in free list")
        _check(not free_uncached & free_cached, "block in both free lists")
        for block in self._blocks:
            bid = block.block_id
            _check(block.ref_count == refs[bid], f"block {bid}: ref {block.ref_count} != {refs[bid]}")
            is_free = bid in free_uncached or bid in free_cached
            _check(is_free == (block.ref_count == 0), f"block {bid}: free/used mismatch")
            if bid in free_cached:
                _check(block.hash is not None, f"block {bid}: cached free block without hash")
            if bid in free_uncached:
                _check(block.hash is None, f"block {bid}: uncached free block with hash")
            if block.hash is not None:
                _check(self._cached.get(block.hash) == bid, f"block {bid}: hash not indexed")
                _check(len(block.token_ids) == self.block_size, f"block {bid}: published but not full")
        for h, bid in self._cached.items():
            _check(self._blocks[bid].hash == h, f"hash index points to block {bid} with another hash")

    # ----------------------------------------------------------------- internals

    def _seq(self, seq_id: object) -> _SeqState:
        state = self._seqs.get(seq_id)
        if state is None:
            raise KeyError(f"unknown sequence {seq_id!r}")
        return state

    def _append(self, state: _SeqState, token_id: int) -> int:
        """One token after the sequence's last (a new block when the last is full); its slot."""
        if state.num_tokens % self.block_size == 0:
            state.table.append(self._take_free_block())
        position = state.num_tokens
        state.num_tokens += 1
        if self.enable_prefix_caching:
            state.tail.append(int(token_id))
        return state.table[-1] * self.block_size + position % self.block_size

    def _release(self, bid: int) -> None:
        """One reference to a block less; unreferenced, it is free (and stays hit-able if published)."""
        block = self._blocks[bid]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None:
                self._free_cached[bid] = None
            else:
                self._free_uncached.append(bid)

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _match_prefix(self, token_ids: Sequence[int], namespace: str | None = None) -> tuple[list[int], int | None]:
        """Published blocks holding the prompt's leading full blocks, and the last one's hash."""
        matched: list[int] = []
        parent_key, parent_hash = _root(namespace)
        if not self.enable_prefix_caching:
            return matched, parent_hash
        block_size = self.block_size
        for i in range((len(token_ids) - 1) // block_size):  # never the last prompt token
            tokens = tuple(token_ids[i * block_size : (i + 1) * block_size])
            h = hash_block_tokens(parent_hash, tokens)
            bid = self._cached.get(h)
            if bid is None:
                break
            block = self._blocks[bid]
            if block.token_ids != tokens or block.parent != parent_key:
                break  # hash collision: same hash, different prefix
            matched.append(bid)
            parent_hash, parent_key = h, (bid, block.generation)
        return matched, parent_hash

    def _claim_cached(self, bid: int) -> None:
        block = self._blocks[bid]
        if block.ref_count == 0:
            del self._free_cached[bid]
        block.ref_count += 1

    def _take_free_block(self) -> int:
        """A block for new content: never-published blocks first, then the LRU cached one."""
        if self._free_uncached:
            bid = self._free_uncached.popleft()
        elif self._free_cached:
            bid, _ = self._free_cached.popitem(last=False)
            self._unpublish(self._blocks[bid])
        else:
            raise OutOfBlocksError("no free KV block")
        block = self._blocks[bid]
        block.generation += 1
        block.ref_count = 1
        return bid

    def _publish_full_blocks(self, state: _SeqState, num_computed: int) -> None:
        """Publishes the sequence's full blocks within the first ``num_computed`` tokens."""
        if not self.enable_prefix_caching:
            return
        block_size = self.block_size
        num_full = min(num_computed, state.num_tokens) // block_size
        while state.num_hashed < num_full:
            i = state.num_hashed
            tokens = tuple(state.tail[:block_size])
            del state.tail[:block_size]
            h = hash_block_tokens(state.last_hash, tokens)
            parent_key = state.root
            if i:
                prev = self._blocks[state.table[i - 1]]
                parent_key = (prev.block_id, prev.generation)
            self._publish(self._blocks[state.table[i]], h, tokens, parent_key)
            state.last_hash = h
            state.num_hashed += 1

    def _publish(self, block: _Block, h: int, tokens: tuple[int, ...], parent: tuple[int, int]) -> None:
        if block.hash == h:
            return  # already published (a forked sibling got there first)
        if block.hash is not None:
            self._unpublish(block)
        previous = self._cached.get(h)
        if previous is not None:
            self._unpublish(self._blocks[previous])  # newest wins; the older copy stays usable
        block.hash, block.token_ids, block.parent = h, tokens, parent
        self._cached[h] = block.block_id

    def _unpublish(self, block: _Block) -> None:
        """Removes a block from the prefix index; a free cached block becomes plain free."""
        del self._cached[block.hash]
        block.hash, block.token_ids, block.parent = None, (), _ROOT
        if block.ref_count == 0 and block.block_id in self._free_cached:
            del self._free_cached[block.block_id]
            self._free_uncached.append(block.block_id)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
