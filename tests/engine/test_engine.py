"""The continuous-batching engine on real models: exactness, batching, cache accounting, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from labs.engine.core import EngineConfig, EngineCore
from labs.engine.engine import Engine
from labs.engine.errors import EngineOverloadedError, EngineRequestError
from labs.engine.sampling import SamplingParams
from labs.engine.sequence import RequestOutput

BLOCK_BYTES_TINY = 2 * 2 * 2 * 16 * 4 * 16  # layers * (k, v) * kv_heads * head_dim * fp32 * block_size


def load_fp32(folder: Path) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def reference(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """What model.generate gives greedily (min_new_tokens masks EOS, as min_tokens does here)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


class Collector:
    def __init__(self) -> None:
        self.outputs: dict[str, list[RequestOutput]] = {}

    def __call__(self, out: RequestOutput) -> None:
        self.outputs.setdefault(out.request_id, []).append(out)

    def tokens(self, request_id: str, index: int = 0) -> list[int]:
        return [t for o in self.outputs[request_id] if o.index == index for t in o.new_token_ids]

    def text(self, request_id: str, index: int = 0) -> str:
        return "".join(o.text_delta for o in self.outputs[request_id] if o.index == index)

    def final(self, request_id: str, index: int = 0) -> RequestOutput:
        return [o for o in self.outputs[request_id] if o.index == index and o.finished][-1]


def run_all(core: EngineCore, limit: int = 10_000) -> None:
    for _ in range(limit):
        if not core.has_work:
            return
        core.step()
    raise AssertionError("engine did not finish")


def assert_cache_empty(core: EngineCore) -> None:
    assert core.allocator.num_used_blocks == 0 and core.allocator.usage == 0
    core.allocator.check_invariants()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_fp32(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_dir: Path) -> Any:
    return load_fp32(tiny_model_dir)[0]


def tiny_core(tiny: tuple[Any, Any], **config: Any) -> EngineCore:
    model, tokenizer = tiny
    settings = {"kv_cache_memory": 256 * BLOCK_BYTES_TINY, "max_batched_tokens": 64} | config
    return EngineCore(model, tokenizer, 256, EngineConfig(**settings))


def prompts_of_lengths(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 4000, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("fused", [True, False])
def test_greedy_batch_joining_at_different_steps_matches_generate(fused: bool, tiny, tiny_reference) -> None:  # noqa: ANN001
    core = tiny_core(tiny, max_batched_tokens=48, fused_forward=fused)  # long prompts are chunked over several steps
    assert (core.runner.fused is not None) == fused  # the fused Llama forward, or the model's own
    prompts = prompts_of_lengths([5, 90, 17, 150, 1, 33])
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=24, temperature=0, min_tokens=24), sink)
        for _ in range(i % 3):  # later requests join while earlier ones decode
            core.step()
    run_all(core)
    for i, prompt in enumerate(prompts):
        assert sink.tokens(f"r{i}") == reference(tiny_reference, prompt, 24), f"request {i} (fused={fused})"
        assert sink.final(f"r{i}").finish_reason == "length"
    assert_cache_empty(core)


def test_default_model_greedy_batch_matches_generate(default_model_dir: Path) -> None:
    model, tokenizer = load_fp32(default_model_dir)
    reference_model = load_fp32(default_model_dir)[0]
    core = EngineCore(model, tokenizer, 8192, EngineConfig(kv_cache_memory=128 * 1024**2, max_batched_tokens=32))
    questions = ["What is the capital of France?", "Name three colours.", "Write a haiku about autumn leaves falling on a quiet pond."]
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"] for q in questions]
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"q{i}", prompt, SamplingParams(max_tokens=20, temperature=0, min_tokens=20), sink)
        core.step()
    run_all(core)
    for i, prompt in enumerate(prompts):
        expected = reference(reference_model, prompt, 20)
        assert sink.tokens(f"q{i}") == expected
        assert sink.text(f"q{i}") == tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in sink.text("q0")
    assert_cache_empty(core)


def test_seeded_sampling_is_the_same_alone_and_batched(tiny) -> None:  # noqa: ANN001
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, min_tokens=16)
    prompt = prompts_of_lengths([12])[0]
    alone = tiny_core(tiny)
    sink_alone = Collector()
    alone.add_request("s", prompt, params, sink_alone)
    run_all(alone)
    batched = tiny_core(tiny)
    sink = Collector()
    for i, other in enumerate(prompts_of_lengths([7, 30, 3], seed=5)):
        batched.add_request(f"o{i}", other, SamplingParams(max_tokens=20, temperature=0.7, seed=i), sink)
    batched.step()
    batched.add_request("s", prompt, params, sink)
    run_all(batched)
    assert sink.tokens("s") == sink_alone.tokens("s")
    different = tiny_core(tiny)
    sink_other = Collector()
    different.add_request("s", prompt, SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99, min_tokens=16), sink_other)
    run_all(different)
    assert sink_other.tokens("s") != sink_alone.tokens("s")


def test_hundred_requests_with_a_small_cache_all_finish_correctly(tiny, tiny_reference) -> None:  # noqa: ANN001
    core = tiny_core(tiny, kv_cache_memory=40 * BLOCK_BYTES_TINY, max_batched_tokens=96)  # 640 token slots
    prompts = prompts_of_lengths([3 + (i * 7) % 40 for i in range(100)], seed=3)
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=30, temperature=0, min_tokens=30), sink)
    peak_running = 0
    while core.has_work:
        core.step()
        peak_running = max(peak_running, len(core.scheduler.running))
    assert core.stats.preemptions_total > 0  # the cache really was too small for everyone at once
    for i in (0, 17, 42, 99):
        assert sink.tokens(f"r{i}") == reference(tiny_reference, prompts[i], 30)
    assert all(len(sink.tokens(f"r{i}")) == 30 for i in range(100))
    assert_cache_empty(core)


def test_abort_frees_the_cache_within_one_step(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    sink = Collector()
    core.add_request("a", prompts_of_lengths([40])[0], SamplingParams(max_tokens=100, temperature=0), sink)
    core.add_request("b", prompts_of_lengths([20])[0], SamplingParams(max_tokens=5, temperature=0), sink)
    core.step(), core.step()
    assert core.allocator.num_used_blocks > 0
    assert core.abort("a")
    core.step()
    assert sink.final("a").finish_reason == "abort"
    run_all(core)
    assert sink.final("b").finish_reason == "length"
    assert not core.abort("a")  # already gone
    assert_cache_empty(core)


def test_prefix_cache_reuses_a_shared_prompt(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    shared = prompts_of_lengths([70])[0]
    sink = Collector()
    core.add_request("first", shared + [11, 12], SamplingParams(max_tokens=8, temperature=0, min_tokens=8), sink)
    run_all(core)
    core.add_request("second", shared + [11, 12], SamplingParams(max_tokens=8, temperature=0, min_tokens=8), sink)
    run_all(core)
    assert sink.final("first").cached_prompt_tokens == 0
    assert sink.final("second").cached_prompt_tokens == 64  # four full 16-token blocks; the rest recomputed
    assert sink.tokens("second") == sink.tokens("first")
    assert_cache_empty(core)


def test_n_samples_share_one_prefill(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    sink = Collector()
    prompt = prompts_of_lengths([37])[0]
    core.add_request("n", prompt, SamplingParams(max_tokens=10, temperature=1.0, seed=7, n=3, min_tokens=10), sink)
    run_all(core)
    texts = [sink.tokens("n", i) for i in range(3)]
    assert all(len(t) == 10 for t in texts) and len({tuple(t) for t in texts}) == 3
    assert core.stats.steps_total <= 11  # one prefill step, then the three decode together
    assert_cache_empty(core)


def test_stop_strings_stop_ids_and_logprobs(tiny) -> None:  # noqa: ANN001
    model, tokenizer = tiny
    core = tiny_core(tiny)
    sink = Collector()
    prompt = prompts_of_lengths([9])[0]
    core.add_request("free", prompt, SamplingParams(max_tokens=12, temperature=0, min_tokens=12, logprobs=2), sink)
    run_all(core)
    tokens = sink.tokens("free")
    logprobs = [lp for o in sink.outputs["free"] for lp in (o.logprobs or [])]
    assert len(logprobs) == 12 and all(lp <= 0 for lp in logprobs)
    assert all(len(t) == 2 for o in sink.outputs["free"] for t in (o.top_logprobs or []))
    core.add_request("ids", prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[tokens[3]]), sink)
    run_all(core)
    assert sink.tokens("ids") == tokens[:tokens.index(tokens[3]) + 1]
    assert sink.final("ids").stop_reason == tokens[3]
    full_text = sink.text("free")
    stop = full_text[len(full_text) // 2: len(full_text) // 2 + 3]
    if stop.strip():
        core.add_request("str", prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop]), sink)
        run_all(core)
        assert sink.text("str") == full_text[:full_text.index(stop)]
        assert sink.final("str").finish_reason == "stop" and sink.final("str").stop_reason == stop
    assert_cache_empty(core)


def test_request_errors_are_clear(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    with pytest.raises(EngineRequestError, match=r"prompt \(250 tokens\) \+ max tokens \(10\) exceeds the model's context of 256"):
        core.validate([5] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(EngineRequestError, match=r"the prompt has 256 tokens but the model's context is 256"):
        core.validate([5] * 256, SamplingParams())
    with pytest.raises(EngineRequestError, match=r"the prompt is empty"):
        core.validate([], SamplingParams())
    with pytest.raises(EngineRequestError, match=r"token id 999999 is outside the model's vocabulary"):
        core.validate([999999], SamplingParams())
    small = tiny_core(tiny, kv_cache_memory=4 * BLOCK_BYTES_TINY, decode_buffer=0.0)  # all of it for pages
    with pytest.raises(EngineRequestError, match=r"needs 110 tokens of KV cache but the cache holds 64"):
        small.validate([5] * 10, SamplingParams(max_tokens=100))
    assert small.validate([5] * 10, SamplingParams()) == 54  # unset max_tokens: as much as fits


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    sink = Collector()
    core.add_request("doomed", prompts_of_lengths([10])[0], SamplingParams(max_tokens=5, temperature=0), sink)
    original = core.runner.run

    def out_of_memory(_scheduled: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(core.runner, "run", out_of_memory)
    core.step()
    final = sink.final("doomed")
    assert final.finish_reason == "error" and "out of memory" in final.error
    assert_cache_empty(core)
    monkeypatch.setattr(core.runner, "run", original)
    core.add_request("fine", prompts_of_lengths([10])[0], SamplingParams(max_tokens=5, temperature=0), sink)
    run_all(core)
    assert sink.final("fine").finish_reason == "length"


def test_threaded_engine_streams_aborts_and_refuses_past_the_queue(tiny_model_dir: Path) -> None:
    model, tokenizer = load_fp32(tiny_model_dir)
    engine = Engine(model, tokenizer, 256, EngineConfig(kv_cache_memory=64 * BLOCK_BYTES_TINY, max_queue=4, max_num_seqs=2))
    try:
        blocking = engine.generate([1, 2, 3], SamplingParams(max_tokens=6, temperature=0, min_tokens=6))
        assert len(blocking.samples[0].token_ids) == 6 and blocking.prompt_tokens == 3

        async def scenario() -> None:
            streams = []
            with pytest.raises(EngineOverloadedError, match=r"the server is busy.*max_queue=4") as caught:
                for i in range(30):  # 2 run, 4 wait, the next is refused
                    streams.append(engine.add_request([1, 2, 3, i], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)))
            assert 4 <= len(streams) < 30 and caught.value.retry_after > 0
            first = await anext(streams[0])
            assert first.new_token_ids and not first.finished
            for stream in streams:
                await stream.aclose()  # a client that goes away aborts its request

        asyncio.run(scenario())
        for _ in range(100):
            stats = engine.stats()
            if stats.running == stats.waiting == 0:
                break
        assert stats.running == stats.waiting == 0 and stats.kv_cache_usage == 0
        again = engine.generate([1, 2, 3], SamplingParams(max_tokens=6, temperature=0, min_tokens=6))
        assert again.samples[0].token_ids == blocking.samples[0].token_ids
    finally:
        engine.shutdown()


def test_a_cancelled_reader_is_cancelled_even_when_an_output_is_ready() -> None:
    """A client that leaves cancels the task reading the stream; when that cancellation lands just as
    an output arrives, the reader must still be cancelled (Python 3.11's wait_for returned the output
    instead, and the request ran to its end), and closing the stream aborts the request."""
    from labs.engine.engine import RequestStream

    class AbortRecorder:
        def __init__(self) -> None:
            self.aborted: list[str] = []

        def abort(self, request_id: str) -> None:
            self.aborted.append(request_id)

        def _check_alive(self) -> None:
            pass

    async def scenario() -> None:
        recorder = AbortRecorder()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        stream = RequestStream(recorder, "r1", 1, outputs)  # type: ignore[arg-type]
        reader = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the reader now waits for an output
        outputs.put_nowait(RequestOutput("r1", 0, [5], "x"))
        reader.cancel()  # in the same turn of the loop as the output
        with pytest.raises(asyncio.CancelledError):
            await reader
        await stream.aclose()
        assert recorder.aborted == ["r1"]

    asyncio.run(scenario())


def test_a_consumer_that_cannot_receive_gets_its_request_aborted(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    received: list[RequestOutput] = []

    def broken_sink(out: RequestOutput) -> None:
        received.append(out)
        raise RuntimeError("Event loop is closed")

    sink = Collector()
    core.add_request("gone", prompts_of_lengths([10])[0], SamplingParams(max_tokens=50, temperature=0), broken_sink)
    core.add_request("here", prompts_of_lengths([12])[0], SamplingParams(max_tokens=8, temperature=0, min_tokens=8), sink)
    run_all(core)
    assert len(received) <= 3 and received[-1].finish_reason == "abort"
    assert len(sink.tokens("here")) == 8
    assert_cache_empty(core)


def test_stats_count_requests_and_tokens(tiny) -> None:  # noqa: ANN001
    core = tiny_core(tiny)
    sink = Collector()
    core.add_request("one", [5] * 20, SamplingParams(max_tokens=4, temperature=0, min_tokens=4), sink)
    core.add_request("three", [6] * 10, SamplingParams(max_tokens=3, temperature=0.5, seed=1, n=3, min_tokens=3), sink)
    run_all(core)
    stats = core.snapshot_stats()
    assert stats.requests_finished_total == 2
    assert stats.prompt_tokens_total == 30 and stats.generation_tokens_total == 4 + 3 * 3
    assert stats.running == stats.waiting == 0 and stats.kv_cache_usage == 0
    assert len(stats.time_to_first_token) == 4 and len(stats.time_per_output_token) == 4


def test_a_row_of_nan_scores_fails_only_its_request(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A model that produces NaN for one sequence must fail that request, not emit token ids."""
    core = tiny_core(tiny)
    sink = Collector()
    prompts = prompts_of_lengths([7, 9])
    core.add_request("broken", prompts[0], SamplingParams(max_tokens=5, temperature=0), sink)
    core.add_request("fine", prompts[1], SamplingParams(max_tokens=5, temperature=0.7, seed=1), sink)
    original = core.runner.run

    def poisoned(scheduled):  # noqa: ANN001, ANN202
        step = original(scheduled)
        for row, seq in enumerate(step.sequences):
            if seq.request_id == "broken":
                with torch.inference_mode():
                    step.logits[row, 3] = float("nan")
        return step

    monkeypatch.setattr(core.runner, "run", poisoned)
    run_all(core)
    broken, fine = sink.final("broken"), sink.final("fine")
    assert broken.finish_reason == "error" and "NaN" in broken.error
    assert sink.tokens("broken") == []
    assert fine.finish_reason == "length" and len(sink.tokens("fine")) == 5
    assert_cache_empty(core)


def test_interactive_requests_take_their_place_from_batch_work_which_still_finishes_correctly(tiny, tiny_reference) -> None:  # noqa: ANN001
    core = tiny_core(tiny, max_num_seqs=4)
    batch = prompts_of_lengths([12] * 8, seed=5)
    sink = Collector()
    for i, prompt in enumerate(batch):
        core.add_request(f"b{i}", prompt, SamplingParams(max_tokens=20, temperature=0, min_tokens=20), sink, priority=2)
    for _ in range(3):
        core.step()
    assert len(core.scheduler.running) == 4  # batch work fills the free slots
    urgent = prompts_of_lengths([9, 14], seed=6)
    for i, prompt in enumerate(urgent):
        core.add_request(f"i{i}", prompt, SamplingParams(max_tokens=20, temperature=0, min_tokens=20), sink)
    core.step()  # both start at once, in the place of the two most recently admitted batch requests
    running = {seq.request_id for seq in core.scheduler.running}
    assert {"i0", "i1"} <= running and core.stats.preemptions_total == 2
    assert all(sink.tokens(f"b{i}") for i in (0, 1)) and {"b2", "b3"}.isdisjoint(running)
    while any(seq.request_id.startswith("i") for seq in core.scheduler.running):
        assert not any(seq.request_id in ("b4", "b5", "b6", "b7") for seq in core.scheduler.running)
        core.step()  # no more batch work starts while interactive requests need the places
    run_all(core)
    for i, prompt in enumerate(urgent):
        assert sink.tokens(f"i{i}") == reference(tiny_reference, prompt, 20)
    for i, prompt in enumerate(batch):  # preempted batch requests resume and give the same tokens
        assert sink.tokens(f"b{i}") == reference(tiny_reference, prompt, 20), f"batch request {i}"
    assert_cache_empty(core)


def test_a_full_cache_is_taken_from_batch_work_for_an_interactive_request(tiny, tiny_reference) -> None:  # noqa: ANN001
    core = tiny_core(tiny, kv_cache_memory=12 * BLOCK_BYTES_TINY, max_num_seqs=16)  # 192 token slots
    sink = Collector()
    batch = prompts_of_lengths([60, 60, 60], seed=7)
    for i, prompt in enumerate(batch):
        core.add_request(f"b{i}", prompt, SamplingParams(max_tokens=4, temperature=0, min_tokens=4), sink, priority=2)
    core.step(), core.step(), core.step()
    urgent = prompts_of_lengths([70], seed=8)[0]
    core.add_request("i", urgent, SamplingParams(max_tokens=8, temperature=0, min_tokens=8), sink)
    core.step()
    assert "i" in {seq.request_id for seq in core.scheduler.running} and core.stats.preemptions_total >= 1
    run_all(core)
    assert sink.tokens("i") == reference(tiny_reference, urgent, 8)
    assert all(sink.tokens(f"b{i}") == reference(tiny_reference, prompt, 4) for i, prompt in enumerate(batch))
    assert_cache_empty(core)


def test_waiting_batch_work_never_makes_an_interactive_request_busy(tiny_model_dir: Path) -> None:
    model, tokenizer = load_fp32(tiny_model_dir)
    engine = Engine(model, tokenizer, 256, EngineConfig(kv_cache_memory=64 * BLOCK_BYTES_TINY, max_queue=3, max_num_seqs=1))
    try:
        async def scenario() -> None:
            long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
            hold, held = threading.Event(), threading.Event()
            engine._between_steps(lambda: (held.set(), hold.wait(60)))  # the engine waits: nothing is admitted meanwhile
            assert held.wait(60)
            streams = [engine.add_request([1, 2, 3, i], long, priority=2) for i in range(3)]
            with pytest.raises(EngineOverloadedError, match="max_queue=3"):
                engine.add_request([1, 2, 3, 9], long, priority=2)
            interactive = engine.add_request([4, 5, 6], SamplingParams(max_tokens=3, temperature=0, min_tokens=3))
            hold.set()
            tokens = [t async for out in interactive for t in out.new_token_ids]
            assert len(tokens) == 3  # not refused because of the batch work waiting
            with pytest.raises(ValueError, match="priority must be 0"):
                engine.add_request([1], long, priority=3)
            for stream in streams:
                await stream.aclose()

        asyncio.run(scenario())
    finally:
        engine.shutdown()


def test_batch_work_pauses_beside_interactive_work_keeping_its_cache(tiny, tiny_reference) -> None:  # noqa: ANN001
    core = tiny_core(tiny, max_num_seqs=16, background_rows=2)
    sink = Collector()
    batch = prompts_of_lengths([10] * 6, seed=9)
    for i, prompt in enumerate(batch):
        core.add_request(f"b{i}", prompt, SamplingParams(max_tokens=30, temperature=0, min_tokens=30), sink, priority=2)
    core.step(), core.step()
    assert len(core.scheduler.running) == 6
    core.add_request("i", prompts_of_lengths([8], seed=10)[0], SamplingParams(max_tokens=6, temperature=0, min_tokens=6), sink)
    used = core.allocator.num_used_blocks
    steps = []
    run = core.runner.run
    core.runner.run = lambda scheduled: steps.append(scheduled) or run(scheduled)  # look at what each step runs
    core.step()
    ran = [p.seq.request_id for p in steps[0].prefills] + [seq.request_id for seq in steps[0].decodes]
    assert "i" in ran and len([r for r in ran if r.startswith("b")]) == 2 and not steps[0].preempted
    assert core.allocator.num_used_blocks >= used  # the paused ones keep their cache
    run_all(core)
    assert any(len(step.decodes) == 6 for step in steps[1:])  # all six again once the chat request is done
    assert sink.tokens("i") == reference(tiny_reference, prompts_of_lengths([8], seed=10)[0], 6)
    for i, prompt in enumerate(batch):
        assert sink.tokens(f"b{i}") == reference(tiny_reference, prompt, 30), f"batch request {i}"
    assert core.stats.preemptions_total == 0
    assert_cache_empty(core)
