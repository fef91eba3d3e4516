"""Batched sampler: logits [B, V] of B running sequences -> one token per sequence.

Every row carries its own :class:`SamplingParams`. Per row, in order: repetition penalty,
presence/frequency penalties, logit_bias, min_tokens masking ("processed logits"); then greedy
rows take the argmax and the other rows apply temperature, top_k, top_p, min_p and sample.

Design choices (measured on the 2-core CPU, B=32, V=49152, fp32):

- Random numbers: one uniform per sampled row per step, turned into a token by inverse CDF
  (cumsum + searchsorted) over the row's filtered distribution. A seeded row draws from its own
  ``torch.Generator`` and consumes exactly one number per step whatever else is in the batch,
  so its tokens do not depend on its neighbours. Per-row exponential noise
  (``argmax(p / Exp(1))``, no host sync) would need V numbers per row from per-row generators:
  ~35 ms per step here against ~0.06 ms for 32 uniforms; per-row ``torch.multinomial`` ~40 ms.
- Full-vocabulary sorts are avoided: sorting [32, 49152] costs ~60 ms. top_k and top_p work on
  the best few candidates found by a blocked top-k (block maxima first, ~2x faster than
  ``torch.topk`` here); top_p starts with 64 candidates and widens (512, 4096, then a sort)
  only for rows whose nucleus did not fit. min_p is a threshold and needs no sort at all.
- argmax is also blocked (``amax`` over blocks of 64, then argmax in the winning block): ~0.25 ms
  against ~1.4 ms for ``torch.argmax`` on this CPU, same first-index tie rule.
- Logprobs are those of the processed logits (after penalties, bias and min_tokens masking,
  before temperature / top_k / top_p / min_p): the model's distribution as this request shaped
  it, independent of how adventurous the sampling was. vLLM calls this "processed" vs "raw".

- Batch invariance: a row's token depends only on its own logits and uniform. Cumsums are
  sequential per row and row sums use a fixed blocked order (``_row_sum``); elementwise ops
  are per element. Seeded rows therefore give the same tokens alone or in any batch.

Everything stays on ``logits.device``; results reach the host in one or two ``tolist()`` calls
at the end (a mid-step host sync happens only for rows with top_p and no top_k, to learn
whether their nucleus fit in the candidates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labs.engine.sampling import SamplingParams, SamplingParamsError

log = logging.getLogger(__name__)

_TOP_P_CANDIDATES = (64, 512, 4096)  # candidate set sizes tried for top_p before a full sort
_BLOCK_MIN_VOCAB = 4096  # below this plain torch.topk / argmax are as fast


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A per-request generator; CPU by default so a seed gives the same draws on any device."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)  # negative int64 seeds wrap, as in torch
    return gen


@dataclass(slots=True)
class RowState:
    """What the sampler needs to know about one running sequence at this step.

    ``generator`` must be set (see :func:`make_generator`) when ``params.seed`` is, and the
    engine must keep it with the request across steps; any row may have one. Token ids must be
    below the logits' vocabulary size.
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int] = ()
    output_token_ids: Sequence[int] = ()
    generator: torch.Generator | None = None
    eos_token_ids: frozenset[int] = frozenset()


@dataclass(slots=True)
class SamplerOutput:
    """One token per row; logprob fields are None when no row asked, else None per such row."""

    token_ids: list[int]
    logprobs: list[float | None] | None = None
    top_logprobs: list[list[tuple[int, float]] | None] | None = None


class Sampler:
    """Turns a batch of logits into tokens; stateless apart from the default generator."""

    def __init__(self, default_generator: torch.Generator | None = None) -> None:
        # Unseeded rows draw from here (or torch's global RNG of the logits' device if None).
        self.default_generator = default_generator

    def __call__(self, logits: torch.Tensor, rows: Sequence[RowState]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, V], got {tuple(logits.shape)}")
        if not rows:
            return SamplerOutput(token_ids=[])
        vocab = logits.shape[1]
        for row in rows:
            row.params.validate_for_vocab(vocab)
            if row.params.seed is not None and row.generator is None:
                raise ValueError("a seeded row needs a generator kept by the engine (make_generator)")

        work = _process_logits(logits, rows)
        greedy = [i for i, r in enumerate(rows) if _is_greedy(r.params)]
        if len(greedy) == len(rows):
            tokens = blocked_argmax(work)
        else:
            tokens = torch.empty(len(rows), dtype=torch.long, device=work.device)
            sampled = [i for i, r in enumerate(rows) if not _is_greedy(r.params)]
            if greedy:
                g = _index(greedy, work.device)
                tokens[g] = blocked_argmax(work[g])
            tokens[_index(sampled, work.device)] = self._sample(work, rows, sampled)

        wants_lp = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not wants_lp:
            return SamplerOutput(token_ids=tokens.tolist())
        return _with_logprobs(work, tokens, rows, wants_lp)

    def _sample(self, work: torch.Tensor, rows: Sequence[RowState], idx: list[int]) -> torch.Tensor:
        """Tokens for the non-greedy rows ``idx`` of ``work`` (processed logits)."""
        device, vocab = work.device, work.shape[1]
        x = _take(work, idx)
        params = [rows[i].params for i in idx]
        temp = torch.tensor([p.temperature for p in params], device=device)
        u = self._uniforms([rows[i] for i in idx], device)
        truncated = [j for j, p in enumerate(params) if 0 < p.top_k < vocab or p.top_p < 1.0]
        if not truncated:
            return _sample_full(x, temp, [p.min_p for p in params], u)
        out = torch.empty(len(idx), dtype=torch.long, device=device)
        cut = set(truncated)
        full = [j for j in range(len(idx)) if j not in cut]
        if full:
            f = _index(full, device)
            out[f] = _sample_full(_take(x, full), temp[f], [params[j].min_p for j in full], u[f])
        t = _index(truncated, device)
        out[t] = _sample_truncated(_take(x, truncated), temp[t], [params[j] for j in truncated], u[t])
        return out

    def _uniforms(self, rows: Sequence[RowState], device: torch.device) -> torch.Tensor:
        """One U[0,1) per row: seeded rows from their own generator, the rest from the default."""
        own = [j for j, r in enumerate(rows) if r.generator is not None]
        shared = [j for j, r in enumerate(rows) if r.generator is None]
        parts: list[torch.Tensor] = []
        if shared:
            gen = self.default_generator
            dev = gen.device if gen is not None else device
            parts.append(torch.rand(len(shared), generator=gen, device=dev))
        for j in own:
            gen = rows[j].generator
            parts.append(torch.rand(1, generator=gen, device=gen.device))  # type: ignore[union-attr]
        if all(p.device == parts[0].device for p in parts):
            drawn = torch.cat(parts).to(device)
        else:
            drawn = torch.cat([p.to(device) for p in parts])
        if not own or not shared:
            return drawn
        u = torch.empty(len(rows), device=device)
        u[_index(shared + own, device)] = drawn
        return u


def _is_greedy(p: SamplingParams) -> bool:
    return p.temperature == 0.0 or p.top_k == 1  # top_k=1 leaves one candidate: the argmax


def _index(idx: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(idx, dtype=torch.long, device=device)


# ---------------------------------------------------------------------------------------------
# Logit processing: penalties, bias, min_tokens. Each edit touches only the ids involved, as
# flat indices into the [B * V] logits, built in numpy (~7x faster than torch from lists).


def _process_logits(logits: torch.Tensor, rows: Sequence[RowState]) -> torch.Tensor:
    """fp32 contiguous logits with the per-row edits applied; the input is never modified."""
    work = logits.float().contiguous()
    p = [r.params for r in rows]
    rep = [i for i, r in enumerate(rows) if p[i].repetition_penalty != 1.0]
    pf = [
        i
        for i, r in enumerate(rows)
        if (p[i].presence_penalty or p[i].frequency_penalty) and len(r.output_token_ids)
    ]
    bias = [i for i in range(len(rows)) if p[i].logit_bias]
    mask = [i for i, r in enumerate(rows) if len(r.output_token_ids) < p[i].min_tokens]
    if not (rep or pf or bias or mask):
        return work
    if work.data_ptr() == logits.data_ptr():
        work = work.clone()
    flat, vocab = work.view(-1), work.shape[1]
    if rep:
        _repetition_penalty(flat, vocab, rows, rep)
    if pf:
        _presence_frequency_penalty(flat, vocab, rows, pf)
    if bias:
        _logit_bias(flat, vocab, rows, bias)
    if mask:
        _mask_stop_tokens(flat, vocab, rows, mask)
    return work


def _repetition_penalty(
    flat: torch.Tensor, vocab: int, rows: Sequence[RowState], idx: list[int]
) -> None:
    """HF: logits of ids in prompt + output are divided (> 0) or multiplied (< 0) by it."""
    ids = [_ids(rows[i].prompt_token_ids, rows[i].output_token_ids) for i in idx]
    keys, owner = _flat_keys(ids, idx, vocab)
    pen_np = np.array([rows[i].params.repetition_penalty for i in idx], dtype=np.float32)[owner]
    keys_t = torch.from_numpy(keys).to(flat.device)
    pen = torch.from_numpy(pen_np).to(flat.device)
    vals = flat[keys_t]  # a repeated id reads the same value and writes the same result
    flat[keys_t] = torch.where(vals > 0, vals / pen, vals * pen)


def _presence_frequency_penalty(
    flat: torch.Tensor, vocab: int, rows: Sequence[RowState], idx: list[int]
) -> None:
    """OpenAI: logit -= presence * (count > 0) + frequency * count, over output tokens."""
    keys, _ = _flat_keys([_ids(rows[i].output_token_ids) for i in idx], idx, vocab)
    uniq, counts = torch.unique(torch.from_numpy(keys).to(flat.device), return_counts=True)
    presence = torch.tensor([r.params.presence_penalty for r in rows], device=flat.device)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows], device=flat.device)
    owner = uniq // vocab
    flat.index_add_(0, uniq, -(presence[owner] + frequency[owner] * counts))


def _logit_bias(flat: torch.Tensor, vocab: int, rows: Sequence[RowState], idx: list[int]) -> None:
    biases = [(i, rows[i].params.logit_bias or {}) for i in idx]
    keys = [i * vocab + t for i, b in biases for t in b]
    vals = [v for _, b in biases for v in b.values()]
    flat.index_add_(0, _index(keys, flat.device), torch.tensor(vals, device=flat.device))


def _mask_stop_tokens(
    flat: torch.Tensor, vocab: int, rows: Sequence[RowState], idx: list[int]
) -> None:
    """min_tokens not reached: EOS and stop_token_ids cannot be chosen (ignore_eos or not)."""
    keys = [
        i * vocab + t
        for i in idx
        for t in set(rows[i].eos_token_ids) | set(rows[i].params.stop_token_ids)
        if t < vocab  # an id the model cannot produce needs no mask
    ]
    if keys:
        flat.index_fill_(0, _index(keys, flat.device), float("-inf"))


def _ids(*seqs: Sequence[int]) -> np.ndarray:
    arrs = [_as_numpy(s) for s in seqs]
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)


def _as_numpy(s: Sequence[int]) -> np.ndarray:
    if isinstance(s, torch.Tensor):
        return s.detach().to("cpu", torch.int64).numpy()
    if isinstance(s, np.ndarray):
        return s.astype(np.int64, copy=False)
    return np.fromiter(s, dtype=np.int64, count=len(s))


def _flat_keys(ids: list[np.ndarray], rows: list[int], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the flattened [B*V] logits, and which entry of ``rows`` each belongs to."""
    owner = np.repeat(np.arange(len(rows)), [len(a) for a in ids])
    base = np.asarray(rows, dtype=np.int64)[owner] * vocab
    return base + np.concatenate(ids), owner


# ---------------------------------------------------------------------------------------------
# Sampling kernels. Temperature is applied as (x - max) * (1 / t): the best token's weight is
# exactly exp(0) = 1, so min_p = 1 still keeps it.


def _sample_full(
    x: torch.Tensor, temp: torch.Tensor, min_p: list[float], u: torch.Tensor
) -> torch.Tensor:
    """Sample over the whole vocabulary (no top_k / top_p); min_p is a threshold on p / p_max."""
    w = (x - x.amax(-1, keepdim=True)).mul_(temp.reciprocal()[:, None]).exp_()  # p / p_max
    _apply_min_p(w, min_p)
    return _inverse_cdf(w.cumsum_(-1), u)  # cumsum is sequential per row: batch-invariant


def _apply_min_p(w: torch.Tensor, min_p: list[float]) -> None:
    """Zero weights below min_p (w = p / p_max), in place.

    ``threshold_`` with a scalar is ~15x faster here than ``masked_fill_`` with a broadcast
    per-row comparison (0.13 vs 2.4 ms at [32, 49152]), so rows are grouped by value.
    """
    for value in set(min_p) - {0.0}:
        # keep w >= min_p  <=>  w > the float32 just below min_p
        below = float(np.nextafter(np.float32(value), np.float32(0.0)))
        rows = [j for j, m in enumerate(min_p) if m == value]
        if len(rows) == w.shape[0]:
            F.threshold_(w, below, 0.0)
        else:
            for j in rows:
                F.threshold_(w[j], below, 0.0)


def _sample_truncated(
    x: torch.Tensor, temp: torch.Tensor, params: Sequence[SamplingParams], u: torch.Tensor
) -> torch.Tensor:
    """Rows with top_k and/or top_p: sample among each row's best candidates.

    Rows with top_k need exactly k candidates. Rows with top_p only start with 64 and are
    redone with more (512, 4096, then a full sort) while their nucleus does not fit.
    """
    device, vocab = x.device, x.shape[1]
    top_k = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    k_lim = torch.tensor(top_k, device=device)
    inv_t = temp.reciprocal()
    top_p = torch.tensor([p.top_p for p in params], device=device)
    min_p = torch.tensor([p.min_p for p in params], device=device)
    out = torch.empty(len(params), dtype=torch.long, device=device)
    mass: torch.Tensor | None = None
    pending = list(range(len(params)))
    for size in [s for s in _TOP_P_CANDIDATES if s < vocab] + [vocab]:
        no_k = [j for j in pending if top_k[j] == 0]
        kc = max([top_k[j] for j in pending] + [size if no_k else 0])
        p = _index(pending, device)
        xs = _take(x, pending)
        vals, ids = blocked_topk(xs, kc)  # sorted; temperature keeps the order
        if mass is None:  # first round covers every row; vals[:, 0] is the row maximum
            mass = _vocab_mass(xs, vals[:, 0], inv_t, no_k)
        check = bool(no_k) and kc < vocab
        tok, fits = _pick_from_candidates(
            vals, ids, inv_t[p], k_lim[p], top_p[p], min_p[p], mass[p], u[p], check=check
        )
        if fits is None:
            out[p] = tok
            return out
        ok = fits.tolist()  # host sync: only rows whose nucleus did not fit are redone wider
        if any(ok):
            out[_index([j for j, c in zip(pending, ok) if c], device)] = tok[fits]
        pending = [j for j, c in zip(pending, ok) if not c]
        if not pending:
            return out
        log.debug("top_p: %d row(s) need more than %d candidates", len(pending), kc)
    raise AssertionError("unreachable: the last candidate set is the whole vocabulary")


def _vocab_mass(
    x: torch.Tensor, row_max: torch.Tensor, inv_t: torch.Tensor, rows: list[int]
) -> torch.Tensor:
    """sum(p / p_max) over the vocabulary for ``rows`` (top_p without top_k); 1 elsewhere."""
    mass = torch.ones(x.shape[0], device=x.device)
    if rows:
        r = _index(rows, x.device)
        w = (_take(x, rows) - row_max[r][:, None]).mul_(inv_t[r][:, None]).exp_()
        mass[r] = _row_sum(w)
    return mass


def _pick_from_candidates(
    vals: torch.Tensor,
    ids: torch.Tensor,
    inv_t: torch.Tensor,
    k_lim: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    mass: torch.Tensor,
    u: torch.Tensor,
    *,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample from sorted candidates ``vals``/``ids`` (``k_lim`` 0 = no top_k).

    With ``check``, also returns which rows' top_p nucleus lies inside the candidates (always
    true for top_k rows); the others must be redone with more candidates.
    """
    kc = vals.shape[1]
    w = (vals - vals[:, :1]).mul_(inv_t[:, None]).exp_()  # p / p_max; w[:, 0] == 1 exactly
    has_k = k_lim > 0
    w.masked_fill_(torch.arange(kc, device=w.device) >= torch.where(has_k, k_lim, kc)[:, None], 0.0)
    cum = w.cumsum(-1)
    mass = torch.where(has_k, cum[:, -1], mass)  # top_k rows renormalise over their k tokens
    limit = torch.where(top_p < 1.0, top_p * mass, torch.inf)
    before = F.pad(cum[:, :-1], (1, 0))  # mass ranked strictly above each candidate
    keep = (before < limit[:, None]) & (w >= min_p[:, None])  # HF top_p, then min_p
    tok = ids.gather(1, _inverse_cdf(w.mul_(keep).cumsum_(-1), u)[:, None]).squeeze(1)
    if not check:
        return tok, None
    return tok, has_k | (cum[:, -1] >= limit)  # the next candidate would already be cut


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] <= u * total < cdf[i]; zero-weight entries are never chosen."""
    total = cdf[:, -1:]
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _row_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums that do not depend on the batch size.

    ``x.sum(-1)`` splits a lone long row across threads, so a row summed alone and in a batch
    differ in the last bits (measured: 1 row vs 32 at V=49152), which would let a neighbour
    change a seeded row's top_p boundary. Blocks of 64, then float64 over the block sums.
    """
    rows, vocab = x.shape
    nb = vocab // 64
    total = x[:, : nb * 64].view(rows, nb, 64).sum(-1).double().sum(-1)
    if nb * 64 < vocab:
        total += x[:, nb * 64 :].double().sum(-1)
    return total.float()


def _take(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Rows ``idx`` (ascending, distinct) of x; no copy when that is every row."""
    return x if len(idx) == x.shape[0] else x[_index(idx, x.device)]


# ---------------------------------------------------------------------------------------------
# Blocked argmax / top-k: reduce blocks to their maxima first, then look inside the winners.


def blocked_argmax(x: torch.Tensor) -> torch.Tensor:
    """Same as ``x.argmax(-1)`` (first index on ties) for finite x, ~5x faster on CPU."""
    rows, vocab = x.shape
    bs = 64
    nb = vocab // bs
    if vocab < _BLOCK_MIN_VOCAB:
        return x.argmax(-1)
    blocks = x[:, : nb * bs].view(rows, nb, bs)
    best_block = blocks.amax(-1).argmax(-1)
    ar = torch.arange(rows, device=x.device)
    inside = blocks[ar, best_block]  # [rows, bs]
    val, pos = inside.max(-1)
    idx = best_block * bs + pos
    if nb * bs < vocab:  # tail shorter than a block: wins only if strictly larger
        tval, tpos = x[:, nb * bs :].max(-1)
        idx = torch.where(tval > val, nb * bs + tpos, idx)
    return idx


def blocked_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted top-k values and indices per row, as ``torch.topk`` (ties may order differently).

    The k best tokens lie in the k blocks with the highest maxima, so only those k blocks
    (plus a short tail) are searched: ~1 ms instead of ~2.4 ms for k=64 on [32, 49152].
    """
    rows, vocab = x.shape
    if k >= vocab:
        return x.sort(-1, descending=True)
    bs = 64 if k <= 32 else 32 if k <= 256 else 8  # measured best block sizes at V=49152
    nb = vocab // bs
    if vocab < _BLOCK_MIN_VOCAB or k > 1024 or k > nb:
        return x.topk(k, -1)
    blocks = x[:, : nb * bs].view(rows, nb, bs)
    top_blocks = blocks.amax(-1).topk(k, -1, sorted=False).indices  # [rows, k]
    cand = blocks.gather(1, top_blocks[..., None].expand(-1, -1, bs)).view(rows, k * bs)
    cand_ids = (top_blocks[..., None] * bs + torch.arange(bs, device=x.device)).view(rows, k * bs)
    if nb * bs < vocab:
        tail = x[:, nb * bs :]
        cand = torch.cat([cand, tail], 1)
        tail_ids = torch.arange(nb * bs, vocab, device=x.device).expand(rows, -1)
        cand_ids = torch.cat([cand_ids, tail_ids], 1)
    vals, pos = cand.topk(k, -1)
    return vals, cand_ids.gather(1, pos)


# ---------------------------------------------------------------------------------------------
# Logprobs.


def _with_logprobs(
    work: torch.Tensor, tokens: torch.Tensor, rows: Sequence[RowState], wants: list[int]
) -> SamplerOutput:
    """Chosen-token logprob and top-k alternatives from the processed logits (see module doc)."""
    w = _index(wants, work.device)
    x = _take(work, wants)
    # one row at a time: a batched logsumexp may split its sums differently by the number of rows,
    # and a request's logprobs must not depend on what else (or how many draft rows) ran beside it
    lse = torch.stack([torch.logsumexp(row, -1) for row in x]) if len(x) > 1 else torch.logsumexp(x, -1)
    chosen = x.gather(1, tokens[w][:, None]).squeeze(1) - lse
    kmax = max(rows[i].params.logprobs or 0 for i in wants)
    floats = [chosen]
    ints = [tokens]
    if kmax:
        vals, ids = blocked_topk(x, min(kmax, x.shape[1]))
        floats.append((vals - lse[:, None]).flatten())
        ints.append(ids.flatten())
    int_list = torch.cat(ints).tolist()
    float_list = torch.cat(floats).tolist()
    n = len(rows)
    token_ids, top_ids = int_list[:n], int_list[n:]
    lp_chosen, top_vals = float_list[: len(wants)], float_list[len(wants) :]
    logprobs: list[float | None] = [None] * n
    top: list[list[tuple[int, float]] | None] = [None] * n
    width = min(kmax, work.shape[1])
    for j, i in enumerate(wants):
        k = min(rows[i].params.logprobs or 0, width)
        logprobs[i] = lp_chosen[j]
        top[i] = list(zip(top_ids[j * width : j * width + k], top_vals[j * width : j * width + k]))
    return SamplerOutput(token_ids=token_ids, logprobs=logprobs, top_logprobs=top)


__all__ = [
    "RowState",
    "Sampler",
    "SamplerOutput",
    "SamplingParamsError",
    "blocked_argmax",
    "blocked_topk",
    "make_generator",
]
