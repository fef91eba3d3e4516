"""The synchronous engine core: requests in, one step at a time, outputs to each request's sink.

Everything here runs on the engine's own thread (see `engine.py`); nothing is thread-safe on
purpose. A step is: schedule -> one forward for all scheduled tokens -> sample one token per
sequence that needs one -> detokenize, check stops, deliver, free finished sequences' cache.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from labs.engine.adapters import AdapterSet
from labs.engine.attention import ATTENTION_NAME, register_paged_attention
from labs.engine.detokenizer import IncrementalDetokenizer
from labs.engine.guided import Guide
from labs.engine.errors import EngineRequestError
from labs.engine.kv_blocks import BlockAllocator
from labs.engine.fused_llama import lora_slots, supports
from labs.engine.kv_cache import KVCache, budget_bytes, cache_shape_for, is_labs_model, num_blocks_for_budget
from labs.engine.lora import LoraSlot, module_slots, slot_bytes
from labs.engine.ngram import NgramDrafter
from labs.engine.runner import ModelRunner, StepLogits
from labs.engine.sampler import RowState, Sampler, make_generator
from labs.engine.sampling import SamplingParams
from labs.engine.scheduler import Scheduler, SchedulerOutput
from labs.engine.sequence import PRIORITY_LEVELS, OutputSink, RequestOutput, Sequence, Status
from labs.engine.verify import verify_engine_matches_model

logger = logging.getLogger(__name__)

# Draft tokens are proposed while fewer sequences than this decode: a step of a few rows is bound by
# reading the weights, so checking drafts there costs little; a batch is bound by arithmetic.
SPECULATE_BELOW = 4


@dataclass(frozen=True)
class EngineConfig:
    kv_cache_memory: str | int | float = "auto"  # "auto", bytes, or a fraction (<= 1) of free memory
    block_size: int = 16
    max_num_seqs: int = 128  # running sequences at once
    max_batched_tokens: int = 512  # tokens per forward (decode tokens + prefill chunks)
    background_rows: int = 4  # lower-priority sequences that keep running beside interactive work (the rest pause)
    max_queue: int = 256  # waiting requests before add_request refuses
    enable_prefix_caching: bool = True
    fused_forward: bool = True  # the lean Llama-family forward where it applies (labs.engine.fused_llama)
    decode_buffer: float = 0.25  # share of the KV budget for the dense decode buffer (labs.engine.decode_buffer); 0: off
    native_kernels: str = "auto"  # fused C++ kernels for the int8 CPU forward: auto, on, off (labs.engine.native)
    native_cache_dir: Path | None = None  # where they are built; None: the default cache folder
    cpu_threads: str | int = "auto"  # torch threads on CPU: auto (fit to the free cores, labs.engine.cpu_share) or a count
    max_loras: int = 0  # LoRA adapters resident at once (labs.engine.adapters); 0: none served
    max_lora_rank: int = 64  # the largest adapter rank accepted; memory for max_loras of it is reserved
    speculative_tokens: int = 4  # draft tokens by prompt lookup checked per step (labs.engine.ngram); 0: off


@dataclass
class EngineStats:
    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    kv_cache_blocks_used: int = 0
    kv_cache_blocks_total: int = 0
    prompt_tokens_total: int = 0
    cached_prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_finished_total: int = 0
    preemptions_total: int = 0
    steps_total: int = 0
    draft_tokens_total: int = 0  # draft tokens checked (speculative decoding)
    accepted_draft_tokens_total: int = 0  # of them, the ones the model agreed with (each saves a step)
    time_to_first_token: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    time_per_output_token: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class EngineCore:
    def __init__(self, model: Any, tokenizer: Any, context_length: int, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.context_length = context_length
        shape = cache_shape_for(model, context_length)
        if not is_labs_model(model):  # transformers' modules attend through the engine's paged attention
            register_paged_attention()
            model.set_attn_implementation(ATTENTION_NAME)
        self.model = model
        device = next(model.parameters()).device
        budget = budget_bytes(self.config.kv_cache_memory, device)
        if not 0.0 <= self.config.decode_buffer < 1.0:
            raise EngineRequestError(f"decode_buffer must be a share of the KV cache memory in [0, 1), got {self.config.decode_buffer}")
        slots, lora_bytes = lora_reservation(model, self.config)
        if lora_bytes and lora_bytes >= budget:
            raise EngineRequestError(
                f"{self.config.max_loras} adapters of rank {self.config.max_lora_rank} need {lora_bytes / 1024**2:.0f} MiB, "
                f"more than the KV cache budget ({budget / 1024**2:.0f} MiB): lower LABS_MAX_LORAS or LABS_MAX_LORA_RANK"
            )
        budget -= lora_bytes  # resident adapters are paid for from the same budget
        buffer_bytes = int(budget * self.config.decode_buffer)
        budget -= buffer_bytes  # the pages and the dense decode buffer share the one budget
        num_blocks = num_blocks_for_budget(shape, self.config.block_size, budget)
        if num_blocks < 2:
            raise EngineRequestError(
                f"the KV cache budget ({budget / 1024**2:.0f} MiB) holds less than 2 blocks for this model "
                f"({shape.bytes_per_token * self.config.block_size / 1024**2:.1f} MiB each): raise LABS_KV_CACHE_MEMORY"
            )
        self.allocator = BlockAllocator(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.cache = KVCache(shape, num_blocks, self.config.block_size, device)
        self.runner = ModelRunner(model, self.cache, self.allocator, self.config.fused_forward, buffer_bytes, self.config.max_num_seqs,
                                  self.config.native_kernels, self.config.native_cache_dir)
        if getattr(model, "checked_against_transformers", None) is None:
            verify_engine_matches_model(self)  # refuses a model the engine would run wrong
        else:  # labs' own modules (labs.models.lean_llama), compared with transformers' forward when recorded
            logger.info("%s was checked against transformers' forward when it was recorded (logits within %.2g of their "
                        "spread); the engine's fused forward reads its modules as they are", type(model).__name__,
                        model.checked_against_transformers)
        self.adapters = AdapterSet(model, slots, self.config.max_loras, self.config.max_lora_rank,
                                   model.get_input_embeddings().weight.dtype, device)
        if slots:
            self.runner.serve_adapters(self.adapters)
        self.scheduler = Scheduler(self.allocator, self.config.max_num_seqs, self.config.max_batched_tokens,
                                   cache_namespace=self._cache_namespace, ready=lambda seq: self.adapters.is_resident(seq.adapter),
                                   background_rows=self.config.background_rows,
                                   drafts=self._drafts if self.config.speculative_tokens > 0 else None,
                                   speculate_below=SPECULATE_BELOW)
        self.sampler = Sampler()
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.vocab_size = model.get_output_embeddings().out_features
        self.guide = Guide(tokenizer, self.vocab_size)
        self.stats = EngineStats(kv_cache_blocks_total=num_blocks)
        self._requests: dict[str, list[Sequence]] = {}
        self.waiting_by_priority: tuple[int, ...] = (0,) * PRIORITY_LEVELS
        self._forks: dict[int, list[Sequence]] = {}  # parent seq_id -> samples waiting to share its prefill
        self._orphaned: set[str] = set()  # requests whose consumer can no longer receive outputs

    def _drafts(self, seq: Sequence) -> list[int]:
        """Draft tokens for a decoding sequence: what followed the same n-gram earlier in its text.

        Only for greedy requests without a grammar, and only where the runner checks drafts with
        the arithmetic of a plain step: a sequence then gets exactly the tokens it would get
        without speculation, only in fewer steps."""
        params = seq.params
        if seq.matcher is not None or not (params.temperature == 0.0 or params.top_k == 1) or not self.runner.verifies_exactly:
            return []
        room = min(self.config.speculative_tokens, seq.max_tokens - len(seq.output_token_ids) - 1)
        if room <= 0:
            return []
        if seq.drafter is None:
            seq.drafter = NgramDrafter()
        missing = seq.num_tokens - len(seq.drafter.tokens)
        if missing > 0:
            seq.drafter.extend(seq.all_token_ids[-missing:])
        return seq.drafter.propose(room)

    def _cache_namespace(self, seq: Sequence) -> str | None:
        return None if seq.adapter is None else self.adapters.get(seq.adapter).cache_key

    @property
    def cache_capacity_tokens(self) -> int:
        return self.allocator.num_blocks * self.allocator.block_size

    # ------------------------------------------------------------------ requests

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Check a request before it is queued; returns its resolved max_tokens."""
        prompt = len(prompt_token_ids)
        if prompt == 0:
            raise EngineRequestError("the prompt is empty: give at least one token")
        if prompt >= self.context_length:
            raise EngineRequestError(f"the prompt has {prompt} tokens but the model's context is {self.context_length}: shorten the prompt")
        room = self.context_length - prompt
        if params.max_tokens is not None and params.max_tokens > room:
            raise EngineRequestError(
                f"prompt ({prompt} tokens) + max tokens ({params.max_tokens}) exceeds the model's context of "
                f"{self.context_length}: ask for at most {room} new tokens"
            )
        bad = [t for t in prompt_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise EngineRequestError(f"token id {bad[0]} is outside the model's vocabulary (0..{self.vocab_size - 1})")
        params.validate_for_vocab(self.vocab_size)
        if params.guided is not None:
            self.guide.validate(params.guided)  # a bad schema is refused before the request is queued
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        needed = prompt + max_tokens
        if needed > self.cache_capacity_tokens:
            if params.max_tokens is None:
                max_tokens = self.cache_capacity_tokens - prompt
            if max_tokens < 1 or params.max_tokens is not None:
                raise EngineRequestError(
                    f"the request needs {needed} tokens of KV cache but the cache holds {self.cache_capacity_tokens}: "
                    "lower max_tokens or raise LABS_KV_CACHE_MEMORY"
                )
        return max_tokens

    def check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters.known:
            raise EngineRequestError(f"no adapter named {adapter!r} is loaded; loaded: {', '.join(self.adapters.known) or 'none'}")

    def add_adapter(self, name: str, path: Path) -> None:
        """Register a LoRA adapter folder (checked against the model now: AdapterError if it does not fit)."""
        self.adapters.add(name, path, self._adapters_in_use())

    def remove_adapter(self, name: str) -> None:
        self.adapters.remove(name, self._adapters_in_use(waiting=True))

    def _adapters_in_use(self, waiting: bool = False) -> set[str]:
        seqs = [seq for samples in self._requests.values() for seq in samples] if waiting else self.scheduler.running
        return {seq.adapter for seq in seqs if seq.adapter is not None and seq.status is not Status.FINISHED}

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, sink: OutputSink,
                    adapter: str | None = None, priority: int = 0) -> None:
        if request_id in self._requests:
            raise EngineRequestError(f"request id {request_id!r} is already in use")
        if not 0 <= priority < PRIORITY_LEVELS:
            raise EngineRequestError(f"priority must be 0 (interactive) to {PRIORITY_LEVELS - 1} (batch), got {priority}")
        self.check_adapter(adapter)
        max_tokens = self.validate(prompt_token_ids, params)
        samples = []
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            samples.append(Sequence(
                request_id=request_id,
                index=index,
                prompt_token_ids=list(prompt_token_ids),
                params=params,
                max_tokens=max_tokens,
                detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_token_ids, stop=params.stop),
                sink=sink,
                generator=make_generator(seed) if seed is not None else None,
                matcher=self.guide.matcher(params.guided) if params.guided is not None else None,
                adapter=adapter,
                priority=priority,
            ))
        self._requests[request_id] = samples
        self.scheduler.add(samples[0])
        self._count_waiting()
        if len(samples) > 1:
            self._forks[samples[0].seq_id] = samples[1:]

    def abort(self, request_id: str) -> bool:
        samples = self._requests.get(request_id)
        if samples is None:
            return False
        for seq in samples:
            if seq.status is not Status.FINISHED:
                self._finish(seq, "abort", deliver=True)
        return True

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting) + sum(len(v) for v in self._forks.values())

    def _count_waiting(self) -> None:
        """Publish the waiting sequences per priority as one immutable tuple, which other threads read
        (to refuse requests past max_queue) while this one changes the queue."""
        counts = [0] * PRIORITY_LEVELS
        for seq in self.scheduler.waiting:
            counts[seq.priority] += 1
        self.waiting_by_priority = tuple(counts)

    # ------------------------------------------------------------------ the step

    def step(self) -> None:
        for request_id in list(self._orphaned):
            self._orphaned.discard(request_id)
            self.abort(request_id)
        if not self.scheduler.running:
            self.runner.between_requests()
        if self.adapters.known and self.scheduler.waiting:
            self._load_waiting_adapters()
        scheduled = self.scheduler.schedule()
        self._count_waiting()
        self.stats.preemptions_total += len(scheduled.preempted)
        if scheduled.empty:
            return
        self.stats.steps_total += 1
        try:
            step_logits = self.runner.run(scheduled)
            self._advance_computed(scheduled)
            self._sample_and_deliver(step_logits)
            for seq, draft in zip(scheduled.decodes, scheduled.drafts):
                if draft and seq.status is not Status.FINISHED:
                    self.runner.rewind(seq)  # the slots of drafts not confirmed go back
        except Exception as error:  # noqa: BLE001 - one bad step must not kill the engine
            affected = {*scheduled.decodes, *(p.seq for p in scheduled.prefills)}
            logger.exception("engine step failed; failing the %d sequences in it", len(affected))
            message = _error_message(error)
            for seq in affected:
                if seq.status is not Status.FINISHED:
                    self._fail_request(seq.request_id, message)
        if not self.scheduler.running:
            self.runner.between_requests()

    def _load_waiting_adapters(self) -> None:
        """Bring the adapters of the requests next in the queue into memory (least recently used leave)."""
        room = self.config.max_num_seqs - len(self.scheduler.running)
        names = list(dict.fromkeys(seq.adapter for seq in list(self.scheduler.waiting)[:max(room, 1)] if seq.adapter is not None))

        def fail(name: str, message: str) -> None:
            for seq in list(self.scheduler.waiting):
                if seq.adapter == name:
                    self._fail_request(seq.request_id, message)

        if names:
            self.adapters.make_resident(names, self._adapters_in_use(), fail)

    def _advance_computed(self, scheduled: SchedulerOutput) -> None:
        for seq in scheduled.decodes:
            seq.num_computed_tokens += 1
        for item in scheduled.prefills:
            item.seq.num_computed_tokens += item.length
            self.allocator.mark_computed(item.seq.seq_id, item.seq.num_computed_tokens)

    def _sample_and_deliver(self, step: StepLogits) -> None:
        seqs, logits = step.sequences, step.logits
        rows, drafts = list(seqs), list(step.drafts)
        starts = _row_starts(drafts)  # each sequence's first logits row
        row_logits = logits
        for position, seq in enumerate(seqs):
            for child in self._forks.pop(seq.seq_id, []):
                if self._fork(seq, child):
                    rows.append(child)
                    drafts.append([])
                    row_logits = torch.cat([row_logits, logits[starts[position]:starts[position] + 1]])
        starts = _row_starts(drafts)
        guided = [(starts[i], s.matcher) for i, s in enumerate(rows) if s.matcher is not None]
        if guided:
            if row_logits is logits:
                row_logits = logits.clone()  # the runner's buffer may be reused
            self.guide.mask_logits(row_logits, guided)
        # a row checking draft token j sees the output as it is if drafts 0..j-1 are accepted
        states = [RowState(s.params, s.prompt_token_ids, s.output_token_ids + draft[:j] if j else s.output_token_ids, s.generator, self.eos_ids)
                  for s, draft in zip(rows, drafts) for j in range(1 + len(draft))]
        # A broken row must fail, not emit a token; max propagates NaN (10x cheaper than isnan().any()).
        invalid = torch.isnan(row_logits.amax(dim=-1)).tolist()
        result = self.sampler(row_logits, states)
        now = time.perf_counter()
        for seq, draft, start in zip(rows, drafts, starts):
            for j in range(1 + len(draft)):
                row = start + j
                if invalid[row]:
                    self._fail_request(seq.request_id, "the model produced invalid (NaN) scores for this request; its output was stopped")
                    break
                token = result.token_ids[row]
                self._accept_token(seq, token, now, None if result.logprobs is None else result.logprobs[row],
                                   None if result.top_logprobs is None else result.top_logprobs[row])
                if j == len(draft) or seq.status is Status.FINISHED or token != draft[j]:
                    break
                # the model chose draft token j itself: its key and value, computed in this step, stand
                seq.num_computed_tokens += 1
                self.stats.accepted_draft_tokens_total += 1
            self.stats.draft_tokens_total += len(draft)

    def _fork(self, parent: Sequence, child: Sequence) -> bool:
        """Let a further sample of the same prompt share the parent's computed prefill."""
        if child.status is Status.FINISHED:
            return False
        if not self.allocator.can_fork(parent.seq_id):
            self.scheduler.add(child)  # no room to share now: it will be computed on its own
            return False
        copy = self.allocator.fork(parent.seq_id, child.seq_id)
        if copy is not None:
            self.cache.copy_block(copy.src, copy.dst)
        child.num_computed_tokens = parent.num_computed_tokens
        child.prefill_target = parent.prefill_target
        child.cached_prompt_tokens = parent.cached_prompt_tokens
        child.status = Status.RUNNING
        self.scheduler.running.append(child)
        return True

    def _accept_token(self, seq: Sequence, token: int, now: float, logprob: float | None, top: list | None) -> None:
        if seq.status is Status.FINISHED:
            return
        first = not seq.output_token_ids
        seq.output_token_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = now
            self.stats.time_to_first_token.append(now - seq.arrival_time)
        seq.last_token_time = now
        self.stats.generation_tokens_total += 1
        if first and seq.preemptions == 0 and seq.index == 0:  # samples of one request share their prompt
            self.stats.prompt_tokens_total += len(seq.prompt_token_ids)
            self.stats.cached_prompt_tokens_total += seq.cached_prompt_tokens
        finish, stop_reason, delta = None, None, ""
        if seq.matcher is not None and token not in self.eos_ids:
            if not seq.matcher.consume_token(token):
                self._finish(seq, "error", deliver=True, error=f"constrained decoding failed: {seq.matcher.get_error()}")
                return
        if token in self.eos_ids and not seq.params.ignore_eos:
            finish, stop_reason = "stop", token
        elif token in seq.params.stop_token_ids:
            finish, stop_reason = "stop", token
        else:
            step = seq.detokenizer.step(token)
            delta = step.text_delta
            if step.stop_matched is not None:
                finish, stop_reason = "stop", step.stop_matched
        if finish is None and seq.matcher is not None and seq.matcher.is_stopped():
            finish = "stop"  # the grammar is complete: nothing else may follow
        if finish is None and len(seq.output_token_ids) >= seq.max_tokens:
            finish = "length"
        if finish is not None and not seq.detokenizer.finished:
            delta += seq.detokenizer.flush()
        output = RequestOutput(
            request_id=seq.request_id,
            index=seq.index,
            new_token_ids=[token],
            text_delta=delta,
            prompt_tokens=len(seq.prompt_token_ids),
            completion_tokens=len(seq.output_token_ids),
            cached_prompt_tokens=seq.cached_prompt_tokens,
            logprobs=None if seq.params.logprobs is None else [logprob],
            top_logprobs=None if seq.params.logprobs is None else [top],
        )
        if finish is not None:
            output.finish_reason, output.stop_reason = finish, stop_reason
            self._finish(seq, finish, deliver=False)
        self._deliver(seq, output)

    # ------------------------------------------------------------------ endings

    def _finish(self, seq: Sequence, reason: str, deliver: bool, error: str | None = None) -> None:
        """Free the sequence's cache and, when asked, tell its consumer how it ended."""
        if seq.status is not Status.FINISHED:
            self.scheduler.remove(seq)
        seq.finish_reason = reason
        for child in self._forks.pop(seq.seq_id, []):
            self.scheduler.add(child)  # the parent ended before its prefill: samples go on alone
        if seq.first_token_time is not None and len(seq.output_token_ids) > 1 and seq.last_token_time is not None:
            self.stats.time_per_output_token.append((seq.last_token_time - seq.first_token_time) / (len(seq.output_token_ids) - 1))
        if deliver:
            self._deliver(seq, RequestOutput(
                request_id=seq.request_id, index=seq.index, new_token_ids=[], text_delta="",
                finish_reason=reason, prompt_tokens=len(seq.prompt_token_ids),
                completion_tokens=len(seq.output_token_ids), cached_prompt_tokens=seq.cached_prompt_tokens, error=error,
            ))
        samples = self._requests.get(seq.request_id, [])
        if samples and all(s.status is Status.FINISHED for s in samples):
            self._requests.pop(seq.request_id, None)
            self.stats.requests_finished_total += 1

    def _deliver(self, seq: Sequence, output: RequestOutput) -> None:
        """Hand an output to its consumer; a consumer that cannot take it gets its request aborted."""
        try:
            seq.sink(output)
        except Exception:  # noqa: BLE001 - e.g. the caller's event loop was closed
            logger.warning("request %s: its consumer is gone; aborting it", seq.request_id)
            if not output.finished:
                self._orphaned.add(seq.request_id)

    def _fail_request(self, request_id: str, message: str) -> None:
        for seq in self._requests.get(request_id, []):
            if seq.status is not Status.FINISHED:
                self._finish(seq, "error", deliver=True, error=message)

    def fail_all(self, message: str) -> None:
        for request_id in list(self._requests):
            self._fail_request(request_id, message)

    def snapshot_stats(self) -> EngineStats:
        stats = replace(self.stats, time_to_first_token=deque(self.stats.time_to_first_token, maxlen=1000),
                        time_per_output_token=deque(self.stats.time_per_output_token, maxlen=1000))
        stats.waiting = self.num_waiting
        stats.running = len(self.scheduler.running)
        stats.kv_cache_usage = self.allocator.usage
        stats.kv_cache_blocks_used = self.allocator.num_used_blocks
        return stats


def lora_slots_for(model: Any, config: EngineConfig) -> list[LoraSlot]:
    """Where adapters apply, laid out for the forward the runner will use; none when off."""
    if config.max_loras < 1:
        return []
    if config.fused_forward and supports(model) is None:
        return lora_slots(model)
    return module_slots(model)


def lora_reservation(model: Any, config: EngineConfig) -> tuple[list[LoraSlot], int]:
    """Where adapters apply, and the memory `config` sets aside (from the KV budget) for its resident ones."""
    slots = lora_slots_for(model, config)
    dtype = model.get_input_embeddings().weight.dtype
    return slots, config.max_loras * slot_bytes(slots, config.max_lora_rank, dtype)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends generation: the generation config's (often several) and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def _row_starts(drafts: list[list[int]]) -> list[int]:
    """The first logits row of each sampled sequence: one row, plus one per draft token it checks."""
    starts, row = [], 0
    for draft in drafts:
        starts.append(row)
        row += 1 + len(draft)
    return starts


def _error_message(error: Exception) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory while generating: lower max_tokens or the number of concurrent requests"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"generation failed: {type(error).__name__}{': ' + text if text else ''}"
