"""Check, once when an engine is built, that the engine computes what the model computes.

The engine swaps a model's attention for its paged one (or runs the fused Llama forward); a model
whose layers do something that swap misses (its own attention code, attention sinks, a layer
mixing positions outside attention, keyword arguments dropped on the way) would give wrong tokens
silently. So the engine's forward is run on a few random tokens of two sequences, through the
paths a real step takes (a prefill from position 0, a prefill chunk that continues one, decode
rows next to a prefill in the same packed batch, two decode rows), and its logits are compared
with the model's own eager forward over the same tokens, in the model's dtype. A model whose
logits differ by more than that dtype's rounding is refused with a one-line reason.

Cost: three engine steps of at most 7 tokens and one forward of 2 x 7 tokens (see the report in
the load log line); nothing of it stays in the cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from labs.engine.errors import UnsupportedModelError
from labs.engine.kv_cache import describe
from labs.engine.sampling import SamplingParams
from labs.engine.scheduler import ScheduledPrefill, SchedulerOutput
from labs.engine.sequence import Sequence

logger = logging.getLogger(__name__)

# Largest root-mean-square logit difference allowed, as a share of the spread (standard deviation)
# of the reference logits, per row. Measured on SmolLM2-135M (30 layers) with random tokens, a
# correct engine differs by: fp32 0.0000, fp16 0.02, bf16 0.13, int8 weights 0.45-0.51 (its
# per-row activation quantization rounds the fused and the model's own forward apart). A wrong
# attention differs by far more: a 1.2x wrong scale 0.6-1.2, a window of 3 tokens 2.3-5.9, zero
# attention sinks added 1.5-2.1; on the tiny test models 0.3 and more.
TOLERANCE = {torch.float32: 0.02, torch.float16: 0.1, torch.bfloat16: 0.35}
QUANTIZED_TOLERANCE = 1.0  # int8 (labs' CPU int8) or bitsandbytes weights
PROBE_LENGTHS = (7, 5)  # tokens of the two probe sequences
ENGINE_ATTENTION = "labs_paged"


def _probe_sequence(prompt: list[int], max_tokens: int) -> Sequence:
    """A scheduler-less sequence for the probe: the runner reads only its ids and tokens."""
    return Sequence("labs-probe", 0, prompt, SamplingParams(max_tokens=max_tokens), max_tokens,
                    detokenizer=None, sink=lambda _: None)  # type: ignore[arg-type] - never detokenized


@dataclass
class ProbeResult:
    difference: float  # largest root-mean-square logit difference of a row, as a share of the reference logits' spread
    tolerance: float
    seconds: float


def verify_engine_matches_model(core: Any) -> ProbeResult | None:
    """Refuse (UnsupportedModelError) a model whose logits through `core`'s runner differ from its
    own forward's; None when the cache is too small to hold the probe (nothing checked)."""
    started = time.perf_counter()
    model, runner, allocator = core.model, core.runner, core.allocator
    name = f"the labs engine cannot run {describe(model)}"
    rows = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, rows, (n,), generator=generator).tolist() for n in PROBE_LENGTHS]
    if max(PROBE_LENGTHS) >= core.context_length or sum(-(-n // allocator.block_size) for n in PROBE_LENGTHS) > allocator.num_free_blocks:
        logger.warning("not checking %s against its own forward: the KV cache or the context is too small for the probe", describe(model))
        return None
    try:
        engine_logits = _engine_logits(runner, allocator, core.cache, tokens)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - the user gets one line; the log has the traceback
        logger.debug("the engine's forward failed on the probe", exc_info=True)
        raise UnsupportedModelError(f"{name}: its forward fails on the engine's paged KV cache ({_one_line(error)})") from None
    try:
        reference = _reference_logits(model, tokens)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - not the engine's fault: nothing to compare with
        logger.warning("not checking %s against its own forward: its eager forward fails", describe(model), exc_info=True)
        return None
    if not all(bool(torch.isfinite(logits).all()) for logits in reference):
        logger.warning("not checking %s against its own forward: its eager forward overflows on the probe's random tokens",
                       describe(model))
        return None
    difference = 0.0
    for (sequence, position), logits in engine_logits:
        expected = reference[sequence][position]
        spread = float(expected.std()) or 1.0
        difference = max(difference, float((logits - expected).pow(2).mean().sqrt()) / spread)
    tolerance = _tolerance(model)
    seconds = time.perf_counter() - started
    if not difference <= tolerance:  # NaN too
        raise UnsupportedModelError(
            f"{name}: through the engine its logits differ from its own forward's by {difference:.3g} of their spread "
            f"(at most {tolerance:g} is rounding in {_precision(model)}), so it would generate wrong tokens: its layers "
            "do something the engine's paged attention does not"
        )
    logger.info("checked %s against its own forward: logits agree within %.2g of their spread (%.0f ms)", describe(model),
                difference, seconds * 1000)
    return ProbeResult(difference, tolerance, seconds)


def _engine_logits(runner: Any, allocator: Any, cache: Any, tokens: list[list[int]]) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Three steps of the runner over the two probe sequences; [((sequence, position), logits)]."""
    a_tokens, b_tokens = tokens
    a = _probe_sequence(a_tokens[:len(a_tokens) - 2], max_tokens=2)
    b = _probe_sequence(b_tokens[:len(b_tokens) - 1], max_tokens=1)
    probes = {id(a): 0, id(b): 1}
    out: list[tuple[tuple[int, int], torch.Tensor]] = []

    def run(scheduled: SchedulerOutput) -> None:
        step = runner.run(scheduled)
        out.extend(((probes[id(seq)], seq.num_tokens - 1), logits) for seq, logits in zip(step.sequences, step.logits))

    def decode(*seqs: Sequence) -> tuple[list[Sequence], list[int]]:
        slots = []
        for seq in seqs:
            seq.output_token_ids.append(tokens[probes[id(seq)]][seq.num_tokens])
            slots.append(allocator.append_slot(seq.seq_id, seq.output_token_ids[-1]))
        return list(seqs), slots

    split = len(b.prompt_token_ids) // 2
    try:
        for seq in (a, b):
            allocator.allocate(seq.seq_id, seq.prompt_token_ids)
            seq.prefill_target = len(seq.prompt_token_ids)
        # 1: a whole prefill from position 0 beside the first chunk of another (not sampled)
        run(SchedulerOutput(prefills=[ScheduledPrefill(a, 0, len(a.prompt_token_ids)), ScheduledPrefill(b, 0, split)]))
        # 2: a decode row beside a chunk that continues from the cache
        decodes, slots = decode(a)
        run(SchedulerOutput(decodes=decodes, decode_slots=slots,
                            prefills=[ScheduledPrefill(b, split, len(b.prompt_token_ids) - split)]))
        # 3: two decode rows
        decodes, slots = decode(a, b)
        run(SchedulerOutput(decodes=decodes, decode_slots=slots))
    finally:
        used = []
        for seq in (a, b):
            if seq.seq_id in allocator:
                used += allocator.block_table(seq.seq_id)
                allocator.free(seq.seq_id)
        allocator.reset_prefix_cache()
        runner.between_requests()
        _zero_blocks(cache, used)
    return out


def _reference_logits(model: Any, tokens: list[list[int]]) -> list[torch.Tensor]:
    """The model's own forward (eager attention, no cache) over the probe sequences, as one batch:
    the shorter one padded at its end, where causal attention keeps the padding out of its tokens."""
    device = model.get_input_embeddings().weight.device
    width = max(len(ids) for ids in tokens)
    batch = torch.tensor([ids + [ids[-1]] * (width - len(ids)) for ids in tokens], device=device)
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            logits = model(input_ids=batch, use_cache=False).logits.float()
    finally:
        model.set_attn_implementation(ENGINE_ATTENTION)
    return [logits[i, :len(ids)] for i, ids in enumerate(tokens)]


def _zero_blocks(cache: Any, blocks: list[int]) -> None:
    """Leave the probe's pages as they were (zeros): masked positions are read as 0 * value."""
    size = cache.block_size
    for block in set(blocks):
        for layer in (*cache.key, *cache.value):
            layer[:, block * size:(block + 1) * size].zero_()


def _tolerance(model: Any) -> float:
    tolerance = TOLERANCE.get(_activation_dtype(model), TOLERANCE[torch.bfloat16])
    return max(tolerance, QUANTIZED_TOLERANCE) if _quantized(model) else tolerance


def _quantized(model: Any) -> bool:
    from labs.models.int8 import Int8Linear

    return bool(getattr(model, "is_quantized", False)) or any(isinstance(module, Int8Linear) for module in model.modules())


def _activation_dtype(model: Any) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def _precision(model: Any) -> str:
    name = str(_activation_dtype(model)).removeprefix("torch.")
    return f"{name} with quantized weights" if _quantized(model) else name


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}{': ' + text if text else ''}"[:300]
