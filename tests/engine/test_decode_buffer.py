"""The dense decode buffer: row bookkeeping without a model, then through the engine, where it
must give the same tokens as model.generate while it fills, overflows its share and refills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from labs.engine.core import EngineCore
from labs.engine.decode_buffer import LENGTH_STEP, ROW_STEP, DecodeBuffer
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
    prompt_token_ids: tuple[int, ...] = ()
    max_tokens: int = 0  # with no prompt: no known final length beyond num_tokens


class RecordingFill:
    """Writes a recognisable value (the seq id) into every position it is asked to fill."""

    def __init__(self, buffer: DecodeBuffer) -> None:
        self.buffer = buffer
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, seq: Any, row: int, tokens: int) -> None:
        self.calls.append((seq.seq_id, row, tokens))
        for layer in range(SHAPE.num_layers):
            keys, values = self.buffer.row_view(layer, row, tokens)
            keys.fill_(float(seq.seq_id))
            values.fill_(-float(seq.seq_id))


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
    assert rows.value_write_index.tolist() == [(0 * 2 + h) * LENGTH_STEP + 10 for h in range(2)] + [(1 * 2 + h) * LENGTH_STEP + 20 for h in range(2)]
    dims = SHAPE.head_dim  # keys are stored [rows, heads, head_dim, capacity]
    assert rows.key_write_index.tolist() == [((row * 2 + h) * dims + d) * LENGTH_STEP + newest
                                             for row, newest in ((0, 10), (1, 20)) for h in range(2) for d in range(dims)]
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
    keys, values = buffer.row_view(1, 0, 6)
    assert torch.all(keys == 3.0) and torch.all(values == -3.0)
    assert torch.all(buffer.row_view(0, 1, 5)[0] == 2.0)


def test_growing_keeps_the_rows_and_zeroes_the_rest() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a, b = FakeSeq(1, LENGTH_STEP - 2), FakeSeq(2, LENGTH_STEP - 10)
    buffer.prepare([a, b], fill)
    a.num_tokens, b.num_tokens = LENGTH_STEP + 1, LENGTH_STEP - 9  # a past the capacity: rows move
    buffer.prepare([a, b], fill)
    assert buffer.length_capacity == 2 * LENGTH_STEP
    assert fill.calls[2:] == [(1, 0, LENGTH_STEP)]  # a fell behind, so it is refilled; b moved, not refilled
    for layer in range(SHAPE.num_layers):
        keys, values = buffer.row_view(layer, 1, buffer.length_capacity)
        filled = LENGTH_STEP - 11  # what the fill wrote (the step itself writes the newest position)
        assert torch.all(keys[:, :filled] == 2.0) and torch.all(values[:, :filled] == -2.0)
        # values past a row's positions are zeros, never what the old layout left there
        assert torch.all(values[:, LENGTH_STEP - 10:] == 0.0)
        assert torch.all(buffer.row_view(layer, 0, buffer.length_capacity)[1][:, LENGTH_STEP:] == 0.0)


def test_a_row_taken_over_holds_no_stale_values() -> None:
    """Masked positions get probability 0, and 0 x NaN would poison the attention: a previous
    occupant's values (here NaN, as from a diverged sequence) are zeroed past the new fill."""
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a, b = FakeSeq(1, 40), FakeSeq(2, 30)
    buffer.prepare([a, b], fill)
    for layer in range(SHAPE.num_layers):
        buffer.row_view(layer, 0, 40)[1].fill_(float("nan"))
    c = FakeSeq(3, 5)
    b.num_tokens += 1
    assert buffer.prepare([b, c], fill) == [b, c]  # b moved into a's row 0, c took row 1
    for layer in range(SHAPE.num_layers):
        for row, used in ((0, 30), (1, 4)):
            values = buffer.row_view(layer, row, buffer.length_capacity)[1]
            assert not torch.isnan(values).any() and torch.all(values[:, used:] == 0.0)


def test_capacity_covers_the_longest_a_sequence_can_get_so_it_never_grows_mid_decode() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=10**9, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    a = FakeSeq(1, 41, prompt_token_ids=(0,) * 40, max_tokens=200)  # may reach 240 positions
    buffer.prepare([a], fill)
    assert buffer.length_capacity == 2 * LENGTH_STEP
    keys = buffer.keys[0]
    for a.num_tokens in range(42, 241):
        buffer.prepare([a], fill)
    assert buffer.keys[0] is keys and len(fill.calls) == 1  # no resize, no refill


def test_a_final_length_that_does_not_fit_grows_in_steps_instead() -> None:
    buffer = DecodeBuffer(SHAPE, max_bytes=SHAPE.bytes_per_token * LENGTH_STEP * ROW_STEP, max_rows=64, device=torch.device("cpu"))
    a = FakeSeq(1, 41, prompt_token_ids=(0,) * 40, max_tokens=4000)
    assert buffer.prepare([a], RecordingFill(buffer)) == [a]
    assert buffer.length_capacity == LENGTH_STEP


def test_sequences_that_do_not_fit_fall_back_and_clear_the_rows() -> None:
    one_row = SHAPE.bytes_per_token * LENGTH_STEP * 8  # 8 rows of LENGTH_STEP positions
    buffer = DecodeBuffer(SHAPE, max_bytes=one_row, max_rows=64, device=torch.device("cpu"))
    fill = RecordingFill(buffer)
    short = [FakeSeq(i, 10) for i in range(8)]
    assert buffer.prepare(short, fill) is not None and buffer.nbytes == one_row
    assert buffer.prepare([*short, FakeSeq(99, 10)], fill) is None  # a ninth row: 16 rows would not fit
    assert buffer.seq_ids == []
    assert buffer.prepare([FakeSeq(1, 2 * LENGTH_STEP)], fill) is not None  # one long row fits again


def test_engine_gives_generate_tokens_while_the_buffer_fills_overflows_and_refills(tiny, tiny_reference) -> None:  # noqa: ANN001
    core: EngineCore = tiny_core(tiny, max_batched_tokens=48, decode_buffer=0.25)
    outcomes: list[bool] = []
    prepare = core.runner.buffer.prepare

    def recording(seqs, fill, drafts=None):  # noqa: ANN001, ANN202
        ordered = prepare(seqs, fill, drafts)
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
    assert core.runner.buffer.seq_ids == []  # nothing running: no rows held
    assert_cache_empty(core)


def test_the_buffer_shares_the_kv_budget_instead_of_adding_to_it(tiny) -> None:  # noqa: ANN001
    whole = tiny_core(tiny, decode_buffer=0.0)
    shared = tiny_core(tiny, decode_buffer=0.25)
    assert whole.runner.buffer is None
    assert shared.allocator.num_blocks == whole.allocator.num_blocks * 3 // 4
    assert shared.runner.buffer.max_bytes == whole.cache.nbytes // 4
    storage = shared.runner.buffer.storage
    assert storage.numel() * storage.element_size() <= shared.runner.buffer.max_bytes
