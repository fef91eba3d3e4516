"""The dense decode buffer: row bookkeeping without a model, then through the engine, where it
must give the same tokens as model.generate while it fills, overflows its share and refills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from labs.engine.core import EngineCore
from labs.engine.decode_buffer import LENGTH_STEP, DecodeBuffer
from labs.engine.kv_cache import CacheShape
from labs.engine.sampling import SamplingParams
from tests.engine.test_engine import (  # noqa: F401 - tiny and tiny_reference are fixtures
    Collector,
    assert_cache_empty,
    prompts_of_lengths,
    reference,
    run_all,
    tiny,
    tiny_core,
    tiny_reference,
)

SHAPE = CacheShape(num_layers=2, kv_heads=2, head_dim=4, dtype=torch.float32)


@dataclass
class FakeSeq:
    seq_id: int
    num_tokens: int


class RecordingFill:
    """Writes a recognisable value (the seq id) into every position it is asked to fill."""

    def __init__(self, buffer: DecodeBuffer) -> None:
        self.buffer = buffer
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, seq: Any, row: int, tokens: int) -> None:
        self.calls.append((seq.seq_id, row, tokens))
        for layer in range(SHAPE.num_layers):
            self.buffer.keys[layer][row, :, :tokens] = float(seq.seq_id)
            self.buffer.values[layer][row, :, :tokens] = -float(seq.seq_id)


def test_rows_are_filled_once_then_extended_in_place() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a, b = FakeSeq(1, 10), FakeSeq(2, 20)
    assert buffer.prepare([a, b], fill) == [a, b]
    assert fill.calls == [(1, 0, 9), (2, 1, 19)]  # every position before the newest token
    a.num_tokens, b.num_tokens = 11, 21  # one decode step later
    assert buffer.prepare([b, a], fill) == [a, b]  # row order, whatever the scheduler's order
    assert len(fill.calls) == 2  # nothing refilled
    rows = buffer.rows([a, b])
    assert rows.count == 2 and rows.length == 21
    assert rows.write_index.tolist() == [(0 * 2 + h) * LENGTH_STEP + 10 for h in range(2)] + [(1 * 2 + h) * LENGTH_STEP + 20 for h in range(2)]
    assert rows.padding[0, 0, 0].tolist() == [False] * 11 + [True] * 10


def test_a_leaving_sequence_hands_its_row_to_the_last_one() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a, b, c = FakeSeq(1, 5), FakeSeq(2, 6), FakeSeq(3, 7)
    buffer.prepare([a, b, c], fill)
    for seq in (a, b, c):
        seq.num_tokens += 1
    assert buffer.prepare([b, c], fill) == [c, b]  # c moved into a's row 0
    assert len(fill.calls) == 3  # moved, not refilled
    assert torch.all(buffer.keys[1][0, :, :6] == 3.0) and torch.all(buffer.values[0][0, :, :6] == -3.0)
    assert torch.all(buffer.keys[0][1, :, :5] == 2.0)


def test_growing_keeps_the_rows_and_zeroes_the_rest() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a = FakeSeq(1, LENGTH_STEP - 2)
    buffer.prepare([a], fill)
    a.num_tokens = LENGTH_STEP + 1  # past the capacity: grows, and a fell behind so it is refilled
    buffer.prepare([a], fill)
    assert buffer.length_capacity == 2 * LENGTH_STEP
    assert torch.all(buffer.keys[0][0, :, :LENGTH_STEP] == 1.0)
    assert torch.all(buffer.keys[0][0, :, LENGTH_STEP:] == 0.0)  # never garbage: 0 x NaN would poison the attention


def test_sequences_that_do_not_fit_fall_back_and_release_the_buffer() -> None:
    one_row = SHAPE.bytes_per_token * LENGTH_STEP * 8  # 8 rows of LENGTH_STEP positions
    buffer = DecodeBuffer(SHAPE, max_bytes=one_row, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    short = [FakeSeq(i, 10) for i in range(8)]
    assert buffer.prepare(short, fill) is not None and buffer.nbytes == one_row
    assert buffer.prepare([*short, FakeSeq(99, 10)], fill) is None  # a ninth row: 16 rows would not fit
    assert buffer.nbytes == 0 and buffer.seq_ids == []
    assert buffer.prepare([FakeSeq(1, 2 * LENGTH_STEP)], fill) is not None  # one long row fits again


def test_engine_gives_generate_tokens_while_the_buffer_fills_overflows_and_refills(tiny, tiny_reference) -> None:  # noqa: ANN001
    core: EngineCore = tiny_core(tiny, max_batched_tokens=48, decode_buffer=0.25)
    outcomes: list[bool] = []
    prepare = core.runner.buffer.prepare

    def recording(seqs, fill):  # noqa: ANN001, ANN202
        ordered = prepare(seqs, fill)
        outcomes.append(ordered is not None)
        return ordered

    core.runner.buffer.prepare = recording
    prompts = prompts_of_lengths([5, 90, 17, 150, 1, 33, 60, 8])
    sink = Collector()
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=24, temperature=0, min_tokens=24), sink)
        for _ in range(i % 3):
            core.step()
    run_all(core)
    assert True in outcomes and False in outcomes, "the run should use the buffer and also overflow it"
    for i, prompt in enumerate(prompts):
        assert sink.tokens(f"r{i}") == reference(tiny_reference, prompt, 24), f"request {i}"
    assert core.runner.buffer.nbytes == 0  # nothing running: memory given back
    assert_cache_empty(core)


def test_the_buffer_shares_the_kv_budget_instead_of_adding_to_it(tiny) -> None:  # noqa: ANN001
    whole = tiny_core(tiny, decode_buffer=0.0)
    shared = tiny_core(tiny, decode_buffer=0.25)
    assert whole.runner.buffer is None
    assert shared.allocator.num_blocks == whole.allocator.num_blocks * 3 // 4
    assert shared.runner.buffer.max_bytes == whole.cache.nbytes // 4
