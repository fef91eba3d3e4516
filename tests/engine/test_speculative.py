"""Speculative decoding by prompt lookup (labs.engine.ngram): the drafter's guesses, the cache's
bookkeeping for drafts, and, through the engine, exactly the tokens (and logprobs) a request gets
without it, in fewer steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from labs.engine.core import SPECULATE_BELOW, EngineConfig, EngineCore
from labs.engine.kv_blocks import BlockAllocator
from labs.engine.native import missing_toolchain
from labs.engine.ngram import NgramDrafter
from labs.engine.sampling import SamplingParams
from labs.models.int8 import quantize_linears_int8
from tests.engine.test_engine import Collector, assert_cache_empty, load_fp32, run_all, tiny_core

needs_native = pytest.mark.skipif(missing_toolchain() is not None, reason=f"no toolchain to build native kernels: {missing_toolchain()}")


# ---------------------------------------------------------------------------- the drafter

def test_the_drafter_proposes_what_followed_the_longest_recent_match() -> None:
    drafter = NgramDrafter(max_n=3, min_n=1)
    drafter.extend([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # "1 2 3" ended at 4 earlier (the trigram wins over the more recent "2 3" -> 7)
    assert drafter.propose(3) == [4, 5, 9]
    drafter.extend([4, 5, 9, 2, 3])
    assert drafter.propose(2) == [7, 8]  # "9 2 3" occurred once before, followed by 7 8
    assert drafter.propose(0) == []


def test_a_draft_is_no_longer_than_the_match_it_came_from() -> None:
    drafter = NgramDrafter(max_n=3, min_n=1)
    drafter.extend([1, 2, 3, 4, 5, 6, 7, 8, 9, 2])
    assert drafter.propose(4) == [3]  # only "2" matched: one token
    drafter.extend([3])
    assert drafter.propose(4) == [4, 5]  # "2 3": two
    drafter.extend([4])
    assert drafter.propose(4) == [5, 6, 7]  # "2 3 4": three (max_n)


def test_the_drafter_never_matches_the_text_against_itself() -> None:
    drafter = NgramDrafter()
    drafter.extend([5, 6, 7])
    assert drafter.propose(4) == []  # no earlier occurrence of any tail
    drafter.extend([6])
    assert drafter.propose(4) == [7]  # "6" was followed by 7 (and a one-token match drafts one token)
    drafter.extend([7, 5, 6, 7])
    assert drafter.propose(4) == [6, 7, 5]  # "5 6 7" began the text, then 6 7 5; not the "5 6 7" that ends it
    with pytest.raises(ValueError, match="min_n <= max_n"):
        NgramDrafter(max_n=1, min_n=2)


def test_the_drafter_indexes_each_token_once_as_the_text_grows() -> None:
    one, many = NgramDrafter(), NgramDrafter()
    text = torch.randint(0, 6, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    one.extend(text)
    for token in text:
        many.extend([token])
    assert one.propose(5) == many.propose(5) and one._follows == many._follows


# ---------------------------------------------------------------------------- the cache

def test_draft_slots_are_taken_back_and_never_published_before_they_are_confirmed() -> None:
    allocator = BlockAllocator(num_blocks=8, block_size=4)
    allocator.allocate("a", [1, 2, 3, 4, 5, 6])
    allocator.mark_computed("a", 6)
    assert allocator.can_append_tokens("a", 6) and not allocator.can_append_tokens("a", 4 * 7)
    slots = allocator.append_draft_slots("a", [7, 8, 9, 10, 11])  # the newest token and four drafts
    assert slots == allocator.slot_mapping("a", 6, 11) and allocator.num_tokens("a") == 11
    assert allocator.num_used_blocks == 3
    allocator.check_invariants()
    allocator.truncate("a", 8)  # the newest token and one draft confirmed
    assert allocator.num_tokens("a") == 8 and allocator.num_used_blocks == 2
    allocator.check_invariants()
    # the confirmed block is published once the next token is appended, with its real tokens
    allocator.append_slot("a", 12)
    allocator.free("a")
    hit = allocator.allocate("b", [1, 2, 3, 4, 5, 6, 7, 8, 99])
    assert hit.num_cached_tokens == 8
    with pytest.raises(ValueError, match="cannot truncate 'b' to 3 tokens"):
        allocator.truncate("b", 3)  # published blocks are never taken back
    allocator.check_invariants()


# ---------------------------------------------------------------------------- through the engine

@pytest.fixture(scope="module")
def smol_int8(default_model_dir: Path) -> tuple[Any, Any]:
    """The default model in int8 (real text: its answers repeat and drift, so drafts are both
    accepted and rejected; a tiny random model only repeats one token)."""
    model, tokenizer = load_fp32(default_model_dir)
    quantize_linears_int8(model)
    return model, tokenizer


def smol_core(smol: tuple[Any, Any], drafts: int) -> EngineCore:
    """A cache whose decode buffer holds a few sequences (drafts are checked only there)."""
    model, tokenizer = smol
    return EngineCore(model, tokenizer, 2048, EngineConfig(kv_cache_memory=256 * 2**20, native_kernels="on", speculative_tokens=drafts))


def chat_prompts(tokenizer: Any) -> list[list[int]]:
    from labs.models.prompting import prompt_token_ids

    return [prompt_token_ids(tokenizer, messages=[{"role": "user", "content": question}]) for question in (
        "List the days of the week, one per line, each followed by its number.",
        "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
        "Why is the sky blue?",
    )]


def repetitive_prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    phrase = torch.randint(3, 4000, (9,), generator=generator).tolist()
    other = torch.randint(3, 4000, (23,), generator=generator).tolist()
    return [phrase * 4, other + phrase * 2 + other[:5], phrase + other + phrase[:4]]


def generate(core: EngineCore, prompts: list[list[int]], params: SamplingParams, together: bool) -> Collector:
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, params, sink)
        if not together:
            run_all(core)
    run_all(core)
    assert_cache_empty(core)
    return sink


@needs_native
@pytest.mark.parametrize("together", [False, True], ids=["one at a time", "batched"])
def test_drafts_change_no_token_and_no_logprob_only_the_number_of_steps(smol_int8, together: bool) -> None:  # noqa: ANN001
    prompts = chat_prompts(smol_int8[1])
    assert len(prompts) < SPECULATE_BELOW
    params = SamplingParams(max_tokens=40, temperature=0, min_tokens=40, logprobs=2)
    plain, fast = smol_core(smol_int8, 0), smol_core(smol_int8, 4)
    assert fast.runner.verifies_exactly
    want, got = generate(plain, prompts, params, together), generate(fast, prompts, params, together)
    for i in range(len(prompts)):
        assert got.tokens(f"r{i}") == want.tokens(f"r{i}"), f"request {i}"
        # the same bits, not merely the same argmax
        assert [o.logprobs for o in got.outputs[f"r{i}"]] == [o.logprobs for o in want.outputs[f"r{i}"]]
        assert [o.top_logprobs for o in got.outputs[f"r{i}"]] == [o.top_logprobs for o in want.outputs[f"r{i}"]]
        assert got.text(f"r{i}") == want.text(f"r{i}")
        assert got.final(f"r{i}").completion_tokens == 40
    assert fast.stats.draft_tokens_total > fast.stats.accepted_draft_tokens_total > 0  # some rejected, some kept
    # batched, the steps are those of the sequence that gained least (all run to 40 tokens)
    assert fast.stats.steps_total <= plain.stats.steps_total if together else fast.stats.steps_total < plain.stats.steps_total
    assert plain.stats.draft_tokens_total == 0


@needs_native
def test_a_request_ending_inside_a_run_of_accepted_drafts_ends_where_it_would_have(smol_int8) -> None:  # noqa: ANN001
    prompts = chat_prompts(smol_int8[1])[:2]
    plain = smol_core(smol_int8, 0)
    reference = generate(plain, prompts, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), together=False)
    for i in range(len(prompts)):
        tokens = reference.tokens(f"r{i}")
        stop_at = tokens[len(tokens) // 2]
        first_stop = tokens.index(stop_at)
        for params, expected in (
            (SamplingParams(max_tokens=13, temperature=0, ignore_eos=True), tokens[:13]),
            (SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop_token_ids=[stop_at]), tokens[:first_stop + 1]),
        ):
            got = generate(smol_core(smol_int8, 4), [prompts[i]], params, together=False)
            assert got.tokens("r0") == expected, f"request {i}, {params}"
            assert got.final("r0").finish_reason in ("length", "stop")


@needs_native
def test_the_prefix_cache_holds_only_confirmed_tokens_after_speculation(smol_int8) -> None:  # noqa: ANN001
    """A follow-up reuses the blocks written while drafts were checked and rejected; it gets what
    it gets after the same turn decoded plainly (the same cached blocks, the same bits in them)."""
    params = SamplingParams(max_tokens=30, temperature=0, min_tokens=30)
    prompt = chat_prompts(smol_int8[1])[1]
    results = []
    for drafts in (0, 4):
        core = smol_core(smol_int8, drafts)
        first = generate(core, [prompt], params, together=False)
        follow_up = prompt + first.tokens("r0") + [17, 18, 19]
        again = Collector()
        core.add_request("again", follow_up, params, again)
        run_all(core)
        assert_cache_empty(core)
        results.append((first.tokens("r0"), again.tokens("again"), again.final("again").cached_prompt_tokens, core.stats))
    (plain_first, plain_again, plain_cached, _), (first, again, cached, stats) = results
    assert stats.draft_tokens_total > stats.accepted_draft_tokens_total > 0  # some rejected, some kept
    assert first == plain_first and again == plain_again
    assert cached == plain_cached >= 16 * ((len(prompt) + 25) // 16)  # blocks written under speculation were reused


@needs_native
def test_sampled_and_crowded_requests_are_never_given_drafts(smol_int8) -> None:  # noqa: ANN001
    prompts = chat_prompts(smol_int8[1])
    fast = smol_core(smol_int8, 4)
    generate(fast, prompts, SamplingParams(max_tokens=20, temperature=0.8, seed=1), together=True)
    assert fast.stats.draft_tokens_total == 0
    crowd = (prompts * 2)[:SPECULATE_BELOW]
    generate(fast, crowd, SamplingParams(max_tokens=20, temperature=0, min_tokens=20), together=True)
    # all of them decode together from the first step on: no drafts until some finish (none do early)
    assert fast.stats.draft_tokens_total == 0


@needs_native
def test_a_step_whose_drafts_do_not_fit_the_decode_buffer_decodes_plainly(smol_int8) -> None:  # noqa: ANN001
    """Three sequences x their longest context exceed the buffer of a 64 MiB cache: steps gather
    pages instead, where drafts are not checked (their slots go back), and nothing changes."""
    model, tokenizer = smol_int8
    prompts = chat_prompts(tokenizer)
    params = SamplingParams(max_tokens=40, temperature=0, min_tokens=40)
    small = [EngineCore(model, tokenizer, 2048, EngineConfig(kv_cache_memory=64 * 2**20, native_kernels="on", speculative_tokens=drafts))
             for drafts in (0, 4)]
    want, got = (generate(core, prompts, params, together=True) for core in small)
    assert all(got.tokens(f"r{i}") == want.tokens(f"r{i}") for i in range(len(prompts)))
    assert small[1].stats.draft_tokens_total == 0


def test_without_native_kernels_the_engine_does_not_speculate(tiny_model_dir: Path) -> None:
    core = tiny_core(load_fp32(tiny_model_dir), speculative_tokens=4)  # fp32 weights: the PyTorch forward
    assert not core.runner.verifies_exactly
    generate(core, repetitive_prompts(), SamplingParams(max_tokens=20, temperature=0), together=False)
    assert core.stats.draft_tokens_total == 0


@needs_native
def test_the_default_model_answers_the_same_with_drafts_in_fewer_steps(smol_int8) -> None:  # noqa: ANN001
    """Real text: chat answers that list and repeat, greedy, in int8 with the native kernels."""
    prompts = chat_prompts(smol_int8[1])[:2]
    params = SamplingParams(max_tokens=48, temperature=0)
    plain, fast = smol_core(smol_int8, 0), smol_core(smol_int8, 4)
    want, got = generate(plain, prompts, params, together=False), generate(fast, prompts, params, together=False)
    for i in range(len(prompts)):
        assert got.tokens(f"r{i}") == want.tokens(f"r{i}") and got.text(f"r{i}") == want.text(f"r{i}")
    decode_steps = fast.stats.steps_total - len(prompts)  # one prefill step each
    assert plain.stats.generation_tokens_total / decode_steps > 1.2, (decode_steps, fast.stats.accepted_draft_tokens_total)
