"""Batched sampler on hand-made logits: each transform, seeded reproducibility, logprobs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from labs.engine.sampler import (
    RowState,
    Sampler,
    SamplerOutput,
    blocked_argmax,
    blocked_topk,
    make_generator,
)
from labs.engine.sampling import SamplingParams, SamplingParamsError


def row(
    params: SamplingParams | None = None,
    prompt: Sequence[int] = (),
    output: Sequence[int] = (),
    eos: Sequence[int] = (),
) -> RowState:
    params = params or SamplingParams()
    gen = make_generator(params.seed) if params.seed is not None else None
    return RowState(params, list(prompt), list(output), gen, frozenset(eos))


def draws(
    logits: Sequence[float] | torch.Tensor, params: SamplingParams, n: int, seed: int = 0
) -> np.ndarray:
    """Sample ``n`` times from one row of logits (n identical unseeded rows, one step)."""
    sampler = Sampler(torch.Generator().manual_seed(seed))
    batch = torch.as_tensor(logits, dtype=torch.float32).expand(n, -1)
    return np.array(sampler(batch, [row(params) for _ in range(n)]).token_ids)


def assert_frequencies(tokens: np.ndarray, probs: np.ndarray, sigmas: float = 5.0) -> None:
    """Empirical frequencies within ``sigmas`` binomial standard deviations of ``probs``."""
    n = len(tokens)
    counts = np.bincount(tokens, minlength=len(probs))
    for tok, (c, p) in enumerate(zip(counts, probs)):
        sd = math.sqrt(n * p * (1 - p)) + 1e-9
        assert abs(c - n * p) <= sigmas * sd + 1, (tok, c, n * p, counts.tolist())


def softmax(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    e = np.exp(a - a.max())
    return e / e.sum()


def processed_logprobs(logits: torch.Tensor, params: SamplingParams, **kw) -> list[float]:
    """All V logprobs of one row as the sampler reports them (greedy row, logprobs=V)."""
    vocab = logits.shape[-1]
    p = SamplingParams(**{**params.__dict__, "temperature": 0, "logprobs": min(vocab, 20)})
    out = Sampler()(logits[None], [row(p, **kw)])
    lp = dict(out.top_logprobs[0])  # type: ignore[index]
    return [lp[t] for t in range(vocab)]


# --- blocked kernels ------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [100, 4096, 49152, 50257])
def test_blocked_argmax_equals_argmax(vocab: int) -> None:
    torch.manual_seed(vocab)
    x = torch.randn(7, vocab)
    x[3, -1] = 100.0  # winner in the tail (when there is one)
    x[4, 0] = 100.0
    assert torch.equal(blocked_argmax(x), x.argmax(-1))


def test_blocked_argmax_first_index_on_ties() -> None:
    x = torch.zeros(2, 8192)
    x[0, [5000, 70, 8191]] = 3.0
    x[1, [8191, 8190]] = 2.0
    assert blocked_argmax(x).tolist() == [70, 8190]
    y = torch.zeros(1, 8200)  # 8200 = 128 blocks of 64 + a tail of 8
    y[0, [8195, 4000]] = 1.0
    assert blocked_argmax(y).tolist() == [4000]


@pytest.mark.parametrize("vocab", [300, 8192, 49152, 50257])
@pytest.mark.parametrize("k", [1, 5, 33, 64, 200, 300])
def test_blocked_topk_equals_topk(vocab: int, k: int) -> None:
    torch.manual_seed(k)
    x = torch.randn(5, vocab)
    x[1, -3:] = torch.tensor([50.0, 49.0, 48.0])  # best tokens in the tail
    vals, ids = blocked_topk(x, k)
    ref = x.topk(k, -1)
    assert torch.equal(vals, ref.values)
    assert torch.equal(x.gather(1, ids), vals)  # tied values may list their ids in another order
    assert all(len(set(r)) == k for r in ids.tolist())


# --- greedy, temperature, truncation ---------------------------------------------------------


def test_greedy_is_argmax_for_fp32_and_bf16() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 49152)
    rows = [row(SamplingParams(temperature=0)) for _ in range(6)]
    assert Sampler()(logits, rows).token_ids == logits.argmax(-1).tolist()
    bf16 = logits.bfloat16()
    assert Sampler()(bf16, rows).token_ids == bf16.float().argmax(-1).tolist()


def test_output_shape_and_no_logprobs_by_default() -> None:
    out = Sampler()(torch.randn(3, 10), [row() for _ in range(3)])
    assert isinstance(out, SamplerOutput)
    assert len(out.token_ids) == 3 and all(isinstance(t, int) for t in out.token_ids)
    assert out.logprobs is None and out.top_logprobs is None


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_distribution(temperature: float) -> None:
    logits = [0.0, 1.0, 2.0, 0.5]
    tokens = draws(logits, SamplingParams(temperature=temperature), 20000, seed=1)
    assert_frequencies(tokens, softmax(np.array(logits) / temperature))


def test_lower_temperature_is_more_peaked() -> None:
    logits = [0.0, 1.0, 2.0, 0.5]
    cold = (draws(logits, SamplingParams(temperature=0.3), 5000) == 2).mean()
    hot = (draws(logits, SamplingParams(temperature=1.5), 5000) == 2).mean()
    assert cold > 0.95 > 0.6 > hot


def test_top_k_one_equals_greedy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(16, 8192)
    rows = [row(SamplingParams(top_k=1, temperature=1.5, seed=i)) for i in range(16)]
    assert Sampler()(logits, rows).token_ids == logits.argmax(-1).tolist()


@pytest.mark.parametrize("vocab", [10, 8192])
def test_top_k_restricts_support(vocab: int) -> None:
    torch.manual_seed(2)
    logits = torch.randn(vocab) * 0.1
    best = [vocab - 1, 3, vocab // 2, 1, 7]
    logits[best] = torch.tensor([3.0, 2.9, 2.8, 2.7, 2.6])
    tokens = draws(logits, SamplingParams(top_k=5), 4000, seed=3)
    assert set(tokens.tolist()) == set(best)
    assert_frequencies(np.searchsorted(np.sort(best), tokens), softmax(logits[sorted(best)].tolist()))


def test_top_p_keeps_the_nucleus() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).tolist()
    # 0.75: tokens 0 (0 before it) and 1 (0.5 before it); token 2 has 0.8 before it.
    tokens = draws(logits, SamplingParams(top_p=0.75), 20000, seed=4)
    assert_frequencies(tokens, np.array([0.5, 0.3, 0, 0]) / 0.8)
    tokens = draws(logits, SamplingParams(top_p=0.85), 20000, seed=5)
    assert_frequencies(tokens, np.array([0.5, 0.3, 0.15, 0]) / 0.95)
    assert set(draws(logits, SamplingParams(top_p=0.1), 500).tolist()) == {0}


def reference_nucleus(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> set[int]:
    """HF TopPLogitsWarper semantics in float64 with a full sort."""
    p = torch.softmax(logits.double() / temperature, -1)
    sp, si = p.sort(descending=True)
    before = sp.cumsum(0) - sp
    return set(si[before < top_p].tolist())


@pytest.mark.parametrize("slope", [1e-1, 1e-2, 1e-4])  # nucleus of ~20, ~300, ~4000 tokens
def test_top_p_large_nucleus_widens_the_candidates(
    slope: float, caplog: pytest.LogCaptureFixture
) -> None:
    vocab = 8192
    g = torch.Generator().manual_seed(6)
    logits = -torch.arange(vocab, dtype=torch.float32) * slope
    logits = logits[torch.randperm(vocab, generator=g)]  # nucleus scattered over the vocab
    nucleus = reference_nucleus(logits, 0.6)
    with caplog.at_level(logging.DEBUG, logger="labs.engine.sampler"):
        tokens = draws(logits, SamplingParams(top_p=0.6), 1000, seed=7)
    assert set(tokens.tolist()) <= nucleus
    assert ("need more than" in caplog.text) == (len(nucleus) > 64)
    ranks = (-logits).argsort().argsort()  # 0 = best
    sampled_ranks = ranks[torch.as_tensor(tokens)]
    assert sampled_ranks.max().item() >= 0.8 * len(nucleus) - 1  # the whole nucleus is used


def test_min_p_drops_tokens_below_fraction_of_best() -> None:
    probs = np.array([0.5, 0.25, 0.2, 0.04, 0.01])
    tokens = draws(np.log(probs).tolist(), SamplingParams(min_p=0.1), 20000, seed=8)
    assert_frequencies(tokens, np.array([0.5, 0.25, 0.2, 0, 0]) / 0.95)


def test_top_k_then_top_p_renormalises_over_top_k() -> None:
    # top_k=2 leaves 0.5 and 0.3 -> 0.625 / 0.375; top_p=0.6 keeps only the first.
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    tokens = draws(np.log(probs).tolist(), SamplingParams(top_k=2, top_p=0.6), 2000, seed=9)
    assert set(tokens.tolist()) == {0}
    tokens = draws(np.log(probs).tolist(), SamplingParams(top_k=3, top_p=0.9, min_p=0.4), 20000, seed=9)
    assert_frequencies(tokens, np.array([0.5, 0.3, 0, 0]) / 0.8)


# --- penalties, bias, min_tokens ------------------------------------------------------------


def test_repetition_penalty_hf_semantics() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5])
    params = SamplingParams(repetition_penalty=2.0)
    got = processed_logprobs(logits, params, prompt=[0, 1], output=[1, 3, 3])
    expected = torch.log_softmax(torch.tensor([1.0, -4.0, 1.0, -2.0, 0.5]), -1)
    assert np.allclose(got, expected.tolist(), atol=1e-6)
    # A penalised favourite loses to the runner-up.
    greedy = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert Sampler()(torch.tensor([[2.0, 1.5]]), [row(greedy, prompt=[0])]).token_ids == [1]


def test_presence_and_frequency_penalties_count_output_only() -> None:
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    got = processed_logprobs(logits, params, prompt=[0, 0, 1], output=[2, 2, 3])
    expected = torch.log_softmax(torch.tensor([1.0, 1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25]), -1)
    assert np.allclose(got, expected.tolist(), atol=1e-6)


def test_negative_presence_penalty_encourages_repeats() -> None:
    logits = torch.tensor([[1.0, 1.2]])
    params = SamplingParams(temperature=0, presence_penalty=-1.0)
    assert Sampler()(logits, [row(params, output=[0])]).token_ids == [0]


def test_logit_bias_forces_and_bans() -> None:
    logits = [5.0, 0.0, -3.0, 4.0]
    assert set(draws(logits, SamplingParams(logit_bias={2: 100}), 1000).tolist()) == {2}
    banned = SamplingParams(temperature=0, logit_bias={0: -100})
    assert Sampler()(torch.tensor([logits]), [row(banned)]).token_ids == [3]


def test_logit_bias_out_of_vocab_raises() -> None:
    with pytest.raises(SamplingParamsError, match="logit_bias"):
        Sampler()(torch.zeros(1, 10), [row(SamplingParams(logit_bias={10: 1.0}))])


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    logits = torch.tensor([[9.0, 8.0, 1.0, 0.0, 7.0]])
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[1, 99])
    for done in range(3):
        out = Sampler()(logits, [row(params, output=[2] * done, eos=[0, 4])])
        assert out.token_ids == [2]
    assert Sampler()(logits, [row(params, output=[2] * 3, eos=[0, 4])]).token_ids == [0]
    sampled = SamplingParams(min_tokens=2, stop_token_ids=[1])
    tokens = draws([9.0, 8.0, 1.0, 0.0], sampled, 500)  # no output yet; eos not given here
    assert 1 not in tokens.tolist()


def test_ignore_eos_does_not_mask_eos() -> None:
    params = SamplingParams(temperature=0, ignore_eos=True)
    assert Sampler()(torch.tensor([[9.0, 1.0]]), [row(params, eos=[0])]).token_ids == [0]


def test_input_logits_are_not_modified() -> None:
    logits = torch.randn(2, 50)
    before = logits.clone()
    params = SamplingParams(repetition_penalty=1.5, presence_penalty=1, logit_bias={3: 50}, min_tokens=5)
    Sampler()(logits, [row(params, prompt=[1, 2], output=[3], eos=[0]) for _ in range(2)])
    assert torch.equal(logits, before)


# --- seeds ----------------------------------------------------------------------------------


def seeded_run(
    params_list: Sequence[SamplingParams], steps: int, vocab: int, watch: Sequence[int]
) -> dict[int, list[int]]:
    """Run ``steps`` steps of a batch; row i's logits depend only on (i's watch key, step)."""
    rows = [row(p) for p in params_list]
    sampler = Sampler(torch.Generator().manual_seed(123))
    seqs: dict[int, list[int]] = {i: [] for i in range(len(rows))}
    for step in range(steps):
        batch = []
        for key in watch:
            g = torch.Generator().manual_seed(1000 * key + step)
            scale = 0.3 + 4.0 * (key % 3)  # flat rows (wide nucleus) and peaked rows
            batch.append(torch.randn(vocab, generator=g) * scale)
        out = sampler(torch.stack(batch), rows)
        for i, tok in enumerate(out.token_ids):
            seqs[i].append(tok)
            rows[i].output_token_ids.append(tok)  # type: ignore[attr-defined]
    return seqs


SEEDED = [
    SamplingParams(seed=11),
    SamplingParams(seed=12, temperature=0.7, top_p=0.9),
    SamplingParams(seed=13, top_k=40, temperature=1.3),
    SamplingParams(seed=14, min_p=0.05, repetition_penalty=1.3),
    SamplingParams(seed=15, top_k=100, top_p=0.8, min_p=0.02, presence_penalty=0.5),
]
OTHERS = [
    SamplingParams(temperature=0),
    SamplingParams(),
    SamplingParams(top_p=0.95),
    SamplingParams(seed=99, top_k=5),
    SamplingParams(top_k=300, logprobs=3),
    SamplingParams(temperature=0.2, frequency_penalty=1.0, seed=7),
]


@pytest.mark.parametrize("vocab", [1000, 8192, 50257])
def test_seeded_rows_reproduce_alone_and_in_a_mixed_batch(vocab: int) -> None:
    steps = 25
    for key, params in enumerate(SEEDED):
        alone = seeded_run([params], steps, vocab, watch=[key])[0]
        # In the batch: the watched row sits in the middle, between rows with other settings.
        mixed = OTHERS[:3] + [params] + OTHERS[3:]
        keys = [50 + j for j in range(3)] + [key] + [60 + j for j in range(3)]
        batched = seeded_run(mixed, steps, vocab, watch=keys)[3]
        assert alone == batched, (key, params)


def test_different_seeds_give_different_draws() -> None:
    vocab = 1000
    a = seeded_run([SamplingParams(seed=1)], 20, vocab, watch=[0])[0]
    b = seeded_run([SamplingParams(seed=2)], 20, vocab, watch=[0])[0]
    a2 = seeded_run([SamplingParams(seed=1)], 20, vocab, watch=[0])[0]
    assert a != b and a == a2


def test_seeded_row_without_generator_is_refused() -> None:
    state = RowState(SamplingParams(seed=1), [], [], None, frozenset())
    with pytest.raises(ValueError, match="generator"):
        Sampler()(torch.zeros(1, 4), [state])


def test_default_generator_makes_unseeded_rows_repeatable() -> None:
    logits = torch.randn(8, 500)
    rows = [row() for _ in range(8)]
    a = Sampler(torch.Generator().manual_seed(5))(logits, rows).token_ids
    b = Sampler(torch.Generator().manual_seed(5))(logits, rows).token_ids
    assert a == b


# --- logprobs -------------------------------------------------------------------------------


def test_logprobs_are_those_of_the_processed_logits() -> None:
    torch.manual_seed(3)
    vocab = 5000
    logits = torch.randn(3, vocab) * 2
    params = [
        SamplingParams(temperature=0.5, top_p=0.9, logprobs=5, logit_bias={42: 10.0}, seed=1),
        SamplingParams(logprobs=0, seed=2),
        SamplingParams(temperature=0),
    ]
    out = Sampler()(logits, [row(p) for p in params])
    processed = logits.clone()
    processed[0, 42] += 10.0
    expected = torch.log_softmax(processed, -1)  # before temperature / top_p
    assert out.logprobs is not None and out.top_logprobs is not None
    for i in (0, 1):
        assert out.logprobs[i] == pytest.approx(expected[i, out.token_ids[i]].item(), abs=1e-5)
    top = out.top_logprobs[0]
    assert top is not None and len(top) == 5
    assert [t for t, _ in top] == expected[0].topk(5).indices.tolist()
    assert np.allclose([v for _, v in top], expected[0].topk(5).values.tolist(), atol=1e-5)
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    assert top[0][0] == 42
    assert out.top_logprobs[1] == []
    assert out.logprobs[2] is None and out.top_logprobs[2] is None


# --- mixed batch ----------------------------------------------------------------------------


def test_mixed_batch_matches_each_row_alone() -> None:
    vocab = 6000
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, repetition_penalty=1.8, logprobs=2),
        SamplingParams(seed=1, temperature=0.8),
        SamplingParams(seed=2, top_k=20, logprobs=4),
        SamplingParams(seed=3, top_p=0.7, presence_penalty=1.5, frequency_penalty=0.5),
        SamplingParams(seed=4, min_p=0.2, logit_bias={5: 8.0, 6: -100.0}),
        SamplingParams(seed=5, top_k=50, top_p=0.9, min_p=0.01, min_tokens=5, stop_token_ids=[7]),
        SamplingParams(seed=6, temperature=1.7, top_p=0.99, repetition_penalty=0.7, logprobs=1),
    ]
    torch.manual_seed(10)
    logits = torch.randn(len(params), vocab) * torch.tensor([0.5, 1, 2, 3, 0.5, 1, 2, 0.2])[:, None]
    logits[6, [0, 7]] += 20.0  # eos (0) and stop id (7) would win if not masked

    def make_rows() -> list[RowState]:
        return [row(p, prompt=[1, 2, 3, 5], output=[3, 3, 8, 9], eos=[0]) for p in params]

    batched = Sampler()(logits, make_rows())
    alone = [Sampler()(logits[i : i + 1], [r]) for i, r in enumerate(make_rows())]
    assert batched.token_ids == [a.token_ids[0] for a in alone]
    assert batched.token_ids[6] not in (0, 7)
    assert batched.logprobs is not None and batched.top_logprobs is not None
    for i, a in enumerate(alone):
        if params[i].logprobs is None:
            assert batched.logprobs[i] is None and a.logprobs is None
            continue
        assert a.logprobs is not None and a.top_logprobs is not None
        assert batched.logprobs[i] == pytest.approx(a.logprobs[0], abs=1e-5)
        got, ref = batched.top_logprobs[i], a.top_logprobs[0]
        assert got is not None and ref is not None and len(got) == params[i].logprobs
        assert [t for t, _ in got] == [t for t, _ in ref]
        assert np.allclose([v for _, v in got], [v for _, v in ref], atol=1e-5)
