"""Paged KV-cache bookkeeping: allocation, prefix reuse, LRU of cached blocks, fork, invariants."""

from __future__ import annotations

import random

import pytest

from labs.engine import kv_blocks
from labs.engine.kv_blocks import BlockAllocator, BlockCopy, OutOfBlocksError, PrefixHit

BS = 4  # block size used throughout


def toks(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def computed(alloc: BlockAllocator, seq_id: object) -> None:
    """What the engine does after the prompt's forward: all its tokens now have KV."""
    alloc.mark_computed(seq_id, alloc.num_tokens(seq_id))


# ----------------------------------------------------------------------------- basics


def test_allocate_append_free_returns_usage_to_zero() -> None:
    alloc = BlockAllocator(num_blocks=8, block_size=BS)
    assert alloc.allocate("a", toks(6)) == PrefixHit(0, 0)
    assert alloc.block_table("a") == [0, 1] and alloc.num_used_blocks == 2
    for t in range(6):  # 6 -> 12 tokens: exactly three full blocks
        alloc.append_slot("a", 100 + t)
        alloc.check_invariants()
    assert alloc.num_tokens("a") == 12 and len(alloc.block_table("a")) == 3
    alloc.append_slot("a", 7)  # 13th token opens a fourth block
    assert len(alloc.block_table("a")) == 4
    alloc.allocate("b", toks(3, 500))
    assert alloc.usage == pytest.approx(5 / 8)
    alloc.free("a")
    alloc.free("b")
    alloc.check_invariants()
    assert alloc.num_used_blocks == 0 and alloc.usage == 0.0 and alloc.num_free_blocks == 8


def test_slot_mapping_follows_the_block_table() -> None:
    alloc = BlockAllocator(num_blocks=8, block_size=BS)
    alloc.allocate("x", toks(1))  # takes block 0
    alloc.allocate("a", toks(6))  # blocks 1, 2
    table = alloc.block_table("a")
    expected = [table[p // BS] * BS + p % BS for p in range(6)]
    assert alloc.slot_mapping("a") == expected
    assert alloc.slot_mapping("a", 4, 6) == expected[4:]
    assert alloc.slot("a", 5) == expected[5]
    new_slot = alloc.append_slot("a", 9)
    assert new_slot == alloc.slot("a", 6) == table[1] * BS + 2
    with pytest.raises(IndexError):
        alloc.slot("a", 7)
    with pytest.raises(IndexError):
        alloc.slot_mapping("a", 0, 8)


def test_errors_for_unknown_duplicate_and_empty() -> None:
    alloc = BlockAllocator(num_blocks=4, block_size=BS)
    alloc.allocate("a", toks(3))
    with pytest.raises(ValueError, match="already"):
        alloc.allocate("a", toks(3))
    with pytest.raises(ValueError, match="empty"):
        alloc.allocate("b", [])
    for call in (alloc.free, alloc.block_table, alloc.can_append, lambda s: alloc.append_slot(s, 1)):
        with pytest.raises(KeyError, match="unknown"):
            call("nope")
    with pytest.raises(ValueError):
        alloc.fork("a", "a")
    with pytest.raises(ValueError):
        BlockAllocator(0, 4)
    alloc.check_invariants()


def test_out_of_blocks_is_checked_and_atomic() -> None:
    alloc = BlockAllocator(num_blocks=3, block_size=BS)
    alloc.allocate("a", toks(8))  # 2 blocks
    assert not alloc.can_allocate(toks(5, 100))  # needs 2, 1 free
    with pytest.raises(OutOfBlocksError):
        alloc.allocate("b", toks(5, 100))
    assert "b" not in alloc and alloc.num_free_blocks == 1  # nothing leaked
    alloc.check_invariants()
    alloc.allocate("c", toks(4, 200))  # the last block
    assert alloc.can_append("c") is False and alloc.can_append("a") is False
    with pytest.raises(OutOfBlocksError):
        alloc.append_slot("c", 1)
    assert alloc.num_tokens("c") == 4
    alloc.check_invariants()
    alloc.free("c")
    assert alloc.can_append("a")
    alloc.append_slot("a", 1)
    alloc.check_invariants()


# ----------------------------------------------------------------------------- prefix caching

SYSTEM = toks(10, 1000)  # 2 full blocks + 2 tokens


def test_shared_system_prompt_hits_full_blocks() -> None:
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    alloc.allocate("a", SYSTEM + [1, 2, 3])
    computed(alloc, "a")
    hit = alloc.allocate("b", SYSTEM + [7, 8, 9, 10, 11])
    # 10 shared tokens -> 2 shared full blocks; block 3 differs (its last 2 tokens differ).
    assert hit == PrefixHit(num_cached_tokens=8, num_cached_blocks=2)
    assert alloc.block_table("b")[:2] == alloc.block_table("a")[:2]
    assert alloc.block_table("b")[2:] != alloc.block_table("a")[2:]
    assert alloc.num_used_blocks == 4 + 2
    alloc.check_invariants()
    alloc.free("a")
    alloc.check_invariants()
    assert alloc.num_used_blocks == 4  # shared blocks still referenced by b


def test_namespaces_never_share_blocks_even_when_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    alloc = BlockAllocator(num_blocks=32, block_size=BS)
    prompt = SYSTEM + [1, 2, 3]
    alloc.allocate("base", prompt)
    computed(alloc, "base")
    assert alloc.allocate("tone", prompt, namespace="lora:tone#1") == PrefixHit(0, 0)
    computed(alloc, "tone")
    assert alloc.allocate("tone-2", prompt, namespace="lora:tone#1") == PrefixHit(12, 3)
    assert alloc.block_table("tone-2")[:3] == alloc.block_table("tone")[:3] != alloc.block_table("base")[:3]
    assert alloc.allocate("base-2", prompt) == PrefixHit(12, 3)
    assert alloc.allocate("other", prompt, namespace="lora:other#2") == PrefixHit(0, 0)
    alloc.check_invariants()
    monkeypatch.setattr(kv_blocks, "hash_block_tokens", lambda parent, tokens: 42)  # every block collides
    alloc = BlockAllocator(num_blocks=32, block_size=BS)
    alloc.allocate("base", prompt)
    computed(alloc, "base")
    assert alloc.allocate("tone", prompt, namespace="lora:tone#1") == PrefixHit(0, 0)
    alloc.check_invariants()


def test_blocks_are_published_only_once_computed() -> None:
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    alloc.allocate("a", SYSTEM)
    # Prefill not done yet: its blocks may hold no KV, so no hit.
    assert alloc.allocate("b", SYSTEM) == PrefixHit(0, 0)
    alloc.mark_computed("a", 5)  # first chunk of a: only block 0 is full and computed
    assert alloc.allocate("c", SYSTEM) == PrefixHit(4, 1)
    alloc.append_slot("a", 55)  # appending implies the whole prompt was computed
    assert alloc.allocate("d", SYSTEM) == PrefixHit(8, 2)
    alloc.check_invariants()


def test_last_prompt_token_is_always_recomputed() -> None:
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    prompt = toks(8)  # exactly two full blocks
    alloc.allocate("a", prompt)
    computed(alloc, "a")
    hit = alloc.allocate("b", prompt)
    assert hit == PrefixHit(4, 1)  # block 1 holds the last token: computed again, not shared
    assert alloc.block_table("b")[0] == alloc.block_table("a")[0]
    assert alloc.block_table("b")[1] != alloc.block_table("a")[1]
    assert alloc.allocate("c", prompt + [99]) == PrefixHit(8, 2)
    alloc.check_invariants()


def test_hit_after_free_and_miss_after_reuse() -> None:
    alloc = BlockAllocator(num_blocks=4, block_size=BS)
    alloc.allocate("a", SYSTEM + [1])  # 3 blocks
    computed(alloc, "a")
    cached = alloc.block_table("a")[:2]
    alloc.free("a")
    assert alloc.num_used_blocks == 0 and alloc.num_cached_free_blocks == 2
    # Still cached while free: b hits both blocks.
    hit = alloc.allocate("b", SYSTEM + [2, 3])
    assert hit == PrefixHit(8, 2) and alloc.block_table("b")[:2] == cached
    alloc.check_invariants()
    alloc.free("b")
    # c needs all 4 blocks with other content: the cached ones get reused.
    alloc.allocate("c", toks(16, 5000))
    computed(alloc, "c")
    alloc.free("c")
    assert alloc.allocate("d", SYSTEM + [1]) == PrefixHit(0, 0)
    alloc.check_invariants()


def test_fresh_blocks_come_from_uncached_first() -> None:
    alloc = BlockAllocator(num_blocks=6, block_size=BS)
    alloc.allocate("a", toks(9, 0))  # blocks 0, 1, 2
    computed(alloc, "a")
    alloc.free("a")  # 0 and 1 cached (2 is partial: uncached)
    alloc.allocate("b", toks(12, 100))  # 3 fresh blocks, none of them a cached one
    assert not set(alloc.block_table("b")) & {0, 1}
    assert alloc.allocate("c", toks(9, 0)) == PrefixHit(8, 2)  # a's prefix survived
    alloc.check_invariants()


def test_lru_evicts_a_prefix_tail_before_its_head() -> None:
    alloc = BlockAllocator(num_blocks=3, block_size=BS)
    alloc.allocate("a", toks(9, 0))  # 0, 1 full and published, 2 partial
    computed(alloc, "a")
    alloc.free("a")
    alloc.allocate("x", [500])  # the uncached block
    alloc.allocate("y", [600])  # must evict a cached block: the tail (block 1)
    assert alloc.block_table("y") == [1]
    alloc.free("x")
    alloc.free("y")
    assert alloc.allocate("z", toks(9, 0)) == PrefixHit(4, 1)  # the head still hits
    alloc.check_invariants()


def test_hash_collision_never_shares_wrong_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_blocks, "hash_block_tokens", lambda parent, tokens: 42)
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    alloc.allocate("a", toks(5, 0))
    computed(alloc, "a")
    # Same hash, different tokens: no hit.
    assert alloc.allocate("b", toks(5, 100)) == PrefixHit(0, 0)
    alloc.check_invariants()


def test_hash_collision_same_block_tokens_different_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block [7,7,7,7] after different first blocks must not be shared (its KV differs)."""
    monkeypatch.setattr(kv_blocks, "hash_block_tokens", lambda parent, tokens: hash(tokens))
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    alloc.allocate("a", toks(4, 0) + [7] * 4 + [1])
    alloc.allocate("b", toks(4, 50) + [9])
    computed(alloc, "a")
    computed(alloc, "b")
    # c's first block matches b's, its second block's tokens match a's second block.
    hit = alloc.allocate("c", toks(4, 50) + [7] * 4 + [1])
    assert hit == PrefixHit(4, 1)
    assert alloc.block_table("c")[0] == alloc.block_table("b")[0]
    assert alloc.block_table("c")[1] != alloc.block_table("a")[1]
    alloc.check_invariants()


def test_stale_parent_is_detected_after_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached child whose parent block was reused for other content must not hit, even when
    the hash cannot tell the prefixes apart (here it ignores the parent entirely)."""
    monkeypatch.setattr(kv_blocks, "hash_block_tokens", lambda parent, tokens: hash(tokens))
    t0, t1, x = toks(4, 0), [7] * 4, toks(4, 60)
    alloc = BlockAllocator(num_blocks=5, block_size=BS)
    alloc.allocate("a", t0 + t1 + [1])  # blocks 0, 1, 2
    alloc.allocate("b", t0 + [2])  # blocks 3, 4: a second copy of t0 (a not computed yet)
    computed(alloc, "a")  # publishes 0 (t0) and 1 (t1 after block 0)
    computed(alloc, "b")  # publishes 3 (t0): newest copy wins, block 0 leaves the index
    alloc.free("a")
    alloc.allocate("d", [3])  # uncached block 2
    alloc.allocate("x", x)  # uncached block 0: now holds x
    assert alloc.block_table("x") == [0]
    computed(alloc, "x")
    alloc.free("b")
    # x's block hits; block 1 has the right tokens and hash, but was computed after t0, not x.
    assert alloc.allocate("c", x + t1 + [1]) == PrefixHit(4, 1)
    alloc.check_invariants()


def test_prefix_caching_disabled() -> None:
    alloc = BlockAllocator(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    alloc.allocate("a", SYSTEM)
    computed(alloc, "a")
    alloc.append_slot("a", 1)
    assert alloc.allocate("b", SYSTEM) == PrefixHit(0, 0)
    alloc.free("a")
    assert alloc.num_cached_free_blocks == 0
    alloc.check_invariants()


def test_reset_prefix_cache() -> None:
    alloc = BlockAllocator(num_blocks=8, block_size=BS)
    alloc.allocate("a", SYSTEM)
    computed(alloc, "a")
    alloc.free("a")
    alloc.reset_prefix_cache()
    assert alloc.num_cached_free_blocks == 0
    assert alloc.allocate("b", SYSTEM) == PrefixHit(0, 0)
    alloc.check_invariants()


def test_can_allocate_counts_hits_on_free_and_used_blocks() -> None:
    alloc = BlockAllocator(num_blocks=4, block_size=BS)
    alloc.allocate("a", SYSTEM)  # 3 blocks
    computed(alloc, "a")
    # 2 of b's 3 blocks are shared with a live sequence: only 1 free block needed.
    assert alloc.blocks_needed(SYSTEM + [5]) == 1 and alloc.can_allocate(SYSTEM + [5])
    assert not alloc.can_allocate(toks(5, 300))
    alloc.free("a")
    # Hits on free cached blocks still consume free blocks.
    assert alloc.blocks_needed(SYSTEM + [5]) == 3
    alloc.allocate("b", SYSTEM + [5])
    assert alloc.num_free_blocks == 1
    alloc.check_invariants()


# ----------------------------------------------------------------------------- fork


def test_fork_shares_full_blocks_and_copies_the_partial_one() -> None:
    alloc = BlockAllocator(num_blocks=8, block_size=BS)
    alloc.allocate("p", toks(6))
    computed(alloc, "p")
    copy = alloc.fork("p", "c")
    parent, child = alloc.block_table("p"), alloc.block_table("c")
    assert child[0] == parent[0] and child[1] != parent[1]
    assert copy == BlockCopy(src=parent[1], dst=child[1])
    alloc.check_invariants()
    # Both sides then write into their own last block.
    slot_p = alloc.append_slot("p", 1)
    slot_c = alloc.append_slot("c", 2)
    assert slot_p // BS == parent[1] and slot_c // BS == child[1]
    alloc.free("p")
    alloc.check_invariants()
    assert alloc.num_used_blocks == 2
    alloc.free("c")
    assert alloc.num_used_blocks == 0


def test_fork_at_block_boundary_needs_no_copy() -> None:
    alloc = BlockAllocator(num_blocks=4, block_size=BS)
    alloc.allocate("p", toks(8))
    computed(alloc, "p")
    assert alloc.fork("p", "c") is None
    assert alloc.block_table("c") == alloc.block_table("p") and alloc.num_used_blocks == 2
    alloc.append_slot("c", 1)  # new block for the child only
    alloc.append_slot("p", 2)
    assert alloc.block_table("c")[2] != alloc.block_table("p")[2]
    alloc.check_invariants()


def test_fork_out_of_blocks() -> None:
    alloc = BlockAllocator(num_blocks=2, block_size=BS)
    alloc.allocate("p", toks(6))
    assert not alloc.can_fork("p")
    with pytest.raises(OutOfBlocksError):
        alloc.fork("p", "c")
    assert "c" not in alloc
    alloc.check_invariants()


def test_forked_siblings_publish_shared_blocks_once() -> None:
    alloc = BlockAllocator(num_blocks=16, block_size=BS)
    alloc.allocate("p", toks(6))
    alloc.fork("p", "c")  # before any block is published
    for t in range(3):
        alloc.append_slot("p", 10 + t)
        alloc.append_slot("c", 20 + t)
        alloc.check_invariants()
    assert alloc.allocate("q", toks(6)) == PrefixHit(4, 1)
    assert alloc.allocate("r", toks(6) + [10, 11, 99]) == PrefixHit(8, 2)
    assert alloc.block_table("r")[1] == alloc.block_table("p")[1]
    alloc.check_invariants()


# ----------------------------------------------------------------------------- property test


def test_random_operations_keep_invariants() -> None:
    rng = random.Random(2024)
    for caching in (True, False):
        alloc = BlockAllocator(num_blocks=24, block_size=BS, enable_prefix_caching=caching)
        prefixes = [toks(rng.randrange(1, 14), 1000 * k) for k in range(4)]
        live: list[int] = []
        next_id = 0
        for _ in range(3000):
            op = rng.random()
            if op < 0.3 or not live:
                prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(0, 6))]
                if not prompt:
                    continue
                if alloc.can_allocate(prompt):
                    before = alloc.num_free_blocks
                    needed = alloc.blocks_needed(prompt)
                    hit = alloc.allocate(next_id, prompt)
                    assert alloc.num_free_blocks == before - needed
                    assert 0 <= hit.num_cached_tokens < len(prompt)
                    assert hit.num_cached_tokens == hit.num_cached_blocks * BS
                    live.append(next_id)
                    if rng.random() < 0.7:
                        alloc.mark_computed(next_id, rng.randrange(len(prompt) + 1))
                    next_id += 1
                else:
                    with pytest.raises(OutOfBlocksError):
                        alloc.allocate(next_id, prompt)
            elif op < 0.75:
                seq = rng.choice(live)
                if alloc.can_append(seq):
                    n = alloc.num_tokens(seq)
                    slot = alloc.append_slot(seq, rng.randrange(50))
                    assert slot == alloc.slot(seq, n)
                else:
                    with pytest.raises(OutOfBlocksError):
                        alloc.append_slot(seq, 0)
            elif op < 0.85:
                parent = rng.choice(live)
                if alloc.can_fork(parent):
                    copy = alloc.fork(parent, next_id)
                    if copy is not None:
                        assert copy.src == alloc.block_table(parent)[-1]
                        assert copy.dst == alloc.block_table(next_id)[-1]
                    live.append(next_id)
                    next_id += 1
            else:
                seq = live.pop(rng.randrange(len(live)))
                alloc.free(seq)
            alloc.check_invariants()
            slots = [s for seq in live for s in alloc.slot_mapping(seq)]
            assert all(0 <= s < 24 * BS for s in slots)
        for seq in live:
            alloc.free(seq)
        alloc.check_invariants()
        assert alloc.num_used_blocks == 0 and alloc.usage == 0.0
