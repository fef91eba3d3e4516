"""The native kernels (labs.engine.native): each against its PyTorch spelling, bad inputs refused,
the engine giving the same answers with and without them, and their build story (on, auto in
the background, off, no compiler, a failing compiler)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from labs.engine.native import FAILED_MARKER, READY_MARKER, NativeKernels, NativeKernelsError, missing_toolchain
from labs.engine.sampling import SamplingParams
from labs.models.int8 import quantize_linears_int8
from tests.engine.test_engine import Collector, assert_cache_empty, load_fp32, prompts_of_lengths, run_all, tiny_core
from tests.engine.test_fused import plain_qwen2

pytestmark = pytest.mark.skipif(missing_toolchain() is not None, reason=f"no toolchain to build native kernels: {missing_toolchain()}")

EPS = 1e-5


@pytest.fixture(scope="module")
def kernels(labs_cache_dir: Path) -> ModuleType:
    module = NativeKernels("on", labs_cache_dir).module
    assert module is not None
    return module


def quantize_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What labs.models.int8.int8_matmul does to its input."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def assert_quantized_close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same scales to float rounding; codes equal but for values that sit on a rounding edge."""
    (q, scale), (q_ref, scale_ref) = got, want
    assert q.dtype == torch.int8 and q.shape == q_ref.shape and scale.shape == scale_ref.shape
    torch.testing.assert_close(scale, scale_ref, rtol=1e-5, atol=0)
    differ = q.int() - q_ref.int()
    assert differ.abs().max() <= 1
    assert (differ != 0).float().mean() < 0.01


def products(rows: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An int32 matmul result with per-row and per-column scales, as torch._int_mm gives them."""
    generator = torch.Generator().manual_seed(seed)
    acc = torch.randint(-40_000, 40_000, (rows, width), generator=generator, dtype=torch.int32)
    x_scale = torch.rand(rows, 1, generator=generator) * 0.01 + 1e-4
    w_scale = torch.rand(width, generator=generator) * 0.01 + 1e-4
    return acc, x_scale, w_scale


def dequantize_reference(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    return acc.double().mul(x_scale.double()).mul(w_scale.double()).float()


@pytest.mark.parametrize("rows", [1, 7, 300])  # 300 rows of 576 split over threads
@pytest.mark.parametrize("width", [64, 576])
def test_rms_norm_quantize_matches_pytorch(kernels: ModuleType, rows: int, width: int) -> None:
    x = torch.randn(rows, width) * 3
    weight = torch.rand(width) + 0.5
    assert_quantized_close(kernels.rms_norm_quantize(x, weight, EPS), quantize_reference(rms_norm_reference(x, weight)))


def test_quantize_matches_int8_matmul_and_keeps_a_zero_row_finite(kernels: ModuleType) -> None:
    x = torch.randn(33, 576)
    x[5] = 0.0
    q, scale = kernels.quantize(x)
    assert_quantized_close((q, scale), quantize_reference(x))
    assert torch.all(q[5] == 0) and scale[5].item() == pytest.approx(1e-8 / 127)


def test_rows_do_not_depend_on_the_rest_of_the_batch(kernels: ModuleType) -> None:
    x = torch.randn(300, 576)
    weight = torch.rand(576)
    q_all, scale_all = kernels.rms_norm_quantize(x, weight, EPS)
    q_one, scale_one = kernels.rms_norm_quantize(x[123:124].clone(), weight, EPS)
    assert torch.equal(q_all[123:124], q_one) and torch.equal(scale_all[123:124], scale_one)


@pytest.mark.parametrize("with_bias", [False, True])
def test_dequantize_rotary_matches_the_hugging_face_rotary(kernels: ModuleType, with_bias: bool) -> None:
    rows, heads, kv_heads, head_dim = 9, 4, 2, 16
    width = (heads + 2 * kv_heads) * head_dim
    acc, x_scale, w_scale = products(rows, width)
    bias = torch.randn(width) if with_bias else None
    angles = torch.rand(rows, head_dim // 2) * 6.0
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)
    sin_signed = torch.cat((-sin[:, :head_dim // 2], sin[:, head_dim // 2:]), dim=-1)
    out = kernels.dequantize_rotary(acc, x_scale, w_scale, bias, cos, sin_signed, heads + kv_heads, head_dim)

    plain = dequantize_reference(acc, x_scale, w_scale) + (bias if with_bias else 0)
    rotated = plain[:, :(heads + kv_heads) * head_dim].view(rows, heads + kv_heads, head_dim)
    half = head_dim // 2
    rotate_half = torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1)
    expected = torch.cat([(rotated * cos[:, None] + rotate_half * sin[:, None]).reshape(rows, -1), plain[:, (heads + kv_heads) * head_dim:]], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dequantize_matches_pytorch(kernels: ModuleType) -> None:
    acc, x_scale, w_scale = products(32, 1000)
    bias = torch.randn(1000)
    torch.testing.assert_close(kernels.dequantize(acc, x_scale, w_scale, None), dequantize_reference(acc, x_scale, w_scale))
    torch.testing.assert_close(kernels.dequantize(acc, x_scale, w_scale, bias), dequantize_reference(acc, x_scale, w_scale) + bias)


def test_residual_norm_quantize_adds_in_place_then_normalizes(kernels: ModuleType) -> None:
    acc, x_scale, w_scale = products(40, 576, seed=2)
    bias = torch.randn(576)
    hidden = torch.randn(40, 576)
    weight = torch.rand(576) + 0.5
    expected_hidden = hidden + dequantize_reference(acc, x_scale, w_scale) + bias
    got = kernels.residual_rms_norm_quantize(acc, x_scale, w_scale, bias, hidden, weight, EPS)
    torch.testing.assert_close(hidden, expected_hidden, rtol=1e-5, atol=1e-5)
    assert_quantized_close(got, quantize_reference(rms_norm_reference(expected_hidden, weight)))


def test_residual_add_adds_in_place(kernels: ModuleType) -> None:
    acc, x_scale, w_scale = products(3, 100, seed=3)
    hidden = torch.randn(3, 100)
    expected = hidden + dequantize_reference(acc, x_scale, w_scale)
    assert kernels.residual_add(acc, x_scale, w_scale, None, hidden) is None
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)


def test_silu_mul_quantize_matches_pytorch_even_for_huge_gates(kernels: ModuleType) -> None:
    acc, x_scale, w_scale = products(32, 2 * 1536, seed=4)
    x_scale[0] = 0.5  # gates of hundreds of thousands: exp must saturate, not overflow to NaN
    q, scale = kernels.silu_mul_quantize(acc, x_scale, w_scale, None)
    products_fp = dequantize_reference(acc, x_scale, w_scale)
    gate, up = products_fp[:, :1536], products_fp[:, 1536:]
    expected = F.silu(gate.double()).mul(up.double()).float()
    assert torch.isfinite(scale).all()
    assert_quantized_close((q, scale), quantize_reference(expected))


def test_per_row_addends_and_lora_updates_match_pytorch(kernels: ModuleType) -> None:
    acc, x_scale, w_scale = products(5, 64, seed=5)
    addend = torch.randn(5, 64)
    torch.testing.assert_close(kernels.dequantize(acc, x_scale, w_scale, addend),
                               dequantize_reference(acc, x_scale, w_scale) + addend, rtol=1e-5, atol=1e-5)
    gate_up = torch.randn(5, 64)
    q, scale = kernels.silu_mul_quantize(acc, x_scale, w_scale, gate_up)
    products_fp = dequantize_reference(acc, x_scale, w_scale) + gate_up
    assert_quantized_close((q, scale), quantize_reference(F.silu(products_fp[:, :32]) * products_fp[:, 32:]))
    generator = torch.Generator().manual_seed(6)
    x = torch.randint(-127, 128, (40, 96), dtype=torch.int8, generator=generator)
    x_scale = torch.rand(40, 1, generator=generator) / 100
    a_stack, b_stack = torch.randn(3, 8, 96, generator=generator), torch.randn(3, 50, 8, generator=generator)
    adapter = torch.randint(-1, 3, (40,), generator=generator)
    update = kernels.lora_update(x, x_scale, adapter, a_stack, b_stack.transpose(1, 2).contiguous())
    xf = x.float() * x_scale
    for row in range(40):
        j = int(adapter[row])
        expected = torch.zeros(50) if j < 0 else b_stack[j] @ (a_stack[j] @ xf[row])
        torch.testing.assert_close(update[row], expected, rtol=1e-4, atol=1e-4)
    for count in (1, 3):  # a row gets the same bits alone as in any batch
        torch.testing.assert_close(kernels.lora_update(x[:count], x_scale[:count], adapter[:count], a_stack,
                                                       b_stack.transpose(1, 2).contiguous()), update[:count], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="adapter index 3 is out of range"):
        kernels.lora_update(x[:1], x_scale[:1], torch.tensor([3]), a_stack, b_stack.transpose(1, 2).contiguous())
    with pytest.raises(RuntimeError, match="bias must hold one float32 value per column of acc, or one per element"):
        kernels.dequantize(acc, x_scale[:5], w_scale, torch.randn(4, 64))


def test_bad_inputs_are_refused_with_what_was_wrong(kernels: ModuleType) -> None:
    x, weight = torch.randn(4, 8), torch.rand(8)
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D float32 CPU tensor, got Double"):
        kernels.rms_norm_quantize(x.double(), weight, EPS)
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D float32"):
        kernels.quantize(x.t())
    with pytest.raises(RuntimeError, match="weight must be a contiguous float32 vector of 8 values"):
        kernels.rms_norm_quantize(x, torch.rand(7), EPS)
    acc, x_scale, w_scale = products(4, 8)
    with pytest.raises(RuntimeError, match="acc must be a contiguous 2-D int32 CPU tensor"):
        kernels.dequantize(acc.float(), x_scale, w_scale, None)
    with pytest.raises(RuntimeError, match="w_scale must hold one float32 scale per column"):
        kernels.dequantize(acc, x_scale, w_scale[:5], None)
    with pytest.raises(RuntimeError, match="hidden and acc must have the same shape"):
        kernels.residual_add(acc, x_scale, w_scale, None, torch.randn(4, 9))
    with pytest.raises(RuntimeError, match="gate and up halves"):
        kernels.silu_mul_quantize(products(4, 7)[0], x_scale, torch.rand(7), None)
    hidden = torch.randn(4, 8)
    before = hidden.clone()
    with pytest.raises(RuntimeError, match="weight must be"):
        kernels.residual_rms_norm_quantize(acc, x_scale, w_scale, None, hidden, torch.rand(3), EPS)
    assert torch.equal(hidden, before)  # refused before touching anything
    assert_quantized_close(kernels.quantize(x), quantize_reference(x))  # and the module still works


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("out_features,in_features", [(960, 576), (7, 100), (13, 64), (5, 1536)])
def test_int8_matmul_few_rows_is_exactly_int_mm(kernels: ModuleType, rows: int, out_features: int, in_features: int) -> None:
    generator = torch.Generator().manual_seed(rows * 1000 + out_features)
    # the extremes included: -127..127 activations (as quantize_row makes) and -128..127 weights
    x = torch.randint(-127, 128, (rows, in_features), dtype=torch.int8, generator=generator)
    x[0, :3] = torch.tensor([127, -127, 127], dtype=torch.int8)
    weight = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    weight[0] = -128
    got = kernels.int8_matmul_few_rows(x, weight, weight.sum(dim=1, dtype=torch.int32))
    padded = torch.cat([x, x.new_zeros(max(0, 17 - rows), in_features)])  # _int_mm wants more than 16 rows on some builds
    assert got.dtype == torch.int32 and torch.equal(got, torch._int_mm(padded, weight.t())[:rows])


def test_int8_matmul_few_rows_refuses_what_does_not_fit(kernels: ModuleType) -> None:
    x, weight = torch.zeros(2, 64, dtype=torch.int8), torch.zeros(8, 64, dtype=torch.int8)
    rowsum = weight.sum(dim=1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D int8 CPU tensor"):
        kernels.int8_matmul_few_rows(x.float(), weight, rowsum)
    with pytest.raises(RuntimeError, match="w must be a contiguous int8 \\[N, K\\] CPU tensor with K = 64"):
        kernels.int8_matmul_few_rows(x, weight[:, :32], rowsum)
    with pytest.raises(RuntimeError, match="rowsum must be int32 with one value per row of w"):
        kernels.int8_matmul_few_rows(x, weight, rowsum[:4])


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9, 17, 64])
@pytest.mark.parametrize("out_features,in_features", [(960, 576), (7, 100), (13, 63), (65, 1536), (200, 5)])
def test_int8_matmul_packed_is_exactly_int_mm(kernels: ModuleType, rows: int, out_features: int, in_features: int) -> None:
    if not kernels.packed_fast:
        pytest.skip("no AVX512-VNNI here: the packed kernel is not built in")
    generator = torch.Generator().manual_seed(rows * 1000 + out_features)
    x = torch.randint(-127, 128, (rows, in_features), dtype=torch.int8, generator=generator)
    x[0, :3] = torch.tensor([127, -127, 127], dtype=torch.int8)[:in_features]
    weight = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    weight[0] = -128
    packed = kernels.pack_int8_weight(weight)
    assert packed.shape == (-(-out_features // 64) * 4, -(-in_features // 4), 16, 4)
    got = kernels.int8_matmul_packed(x, packed, weight.sum(dim=1, dtype=torch.int32), out_features)
    padded = torch.cat([x, x.new_zeros(max(0, 17 - rows), in_features)])  # _int_mm wants more than 16 rows on some builds
    assert got.dtype == torch.int32 and got.is_contiguous() and torch.equal(got, torch._int_mm(padded, weight.t())[:rows])


def test_int8_matmul_packed_refuses_what_does_not_fit(kernels: ModuleType) -> None:
    if not kernels.packed_fast:
        pytest.skip("no AVX512-VNNI here: the packed kernel is not built in")
    x, weight = torch.zeros(2, 64, dtype=torch.int8), torch.zeros(8, 64, dtype=torch.int8)
    packed, rowsum = kernels.pack_int8_weight(weight), weight.sum(dim=1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="w must be a contiguous int8 \\[N, K\\] CPU tensor"):
        kernels.pack_int8_weight(weight.float())
    with pytest.raises(RuntimeError, match="packed must be a weight packed by pack_int8_weight"):
        kernels.int8_matmul_packed(x, weight, rowsum, 8)
    with pytest.raises(RuntimeError, match="packed holds rows of 64 values \\(padded\\), x has 32"):
        kernels.int8_matmul_packed(x[:, :32].contiguous(), packed, rowsum, 8)
    with pytest.raises(RuntimeError, match="n = 65 does not match the packed weight's 64 columns"):
        kernels.int8_matmul_packed(x, packed, rowsum, 65)
    with pytest.raises(RuntimeError, match="rowsum must be int32 with one value per column"):
        kernels.int8_matmul_packed(x, packed, rowsum[:4], 8)
    assert torch.equal(kernels.int8_matmul_packed(x, packed, rowsum, 8), torch.zeros(2, 8, dtype=torch.int32))


def test_the_kernels_split_work_over_torchs_threads(kernels: ModuleType) -> None:
    """Built with OpenMP, at::parallel_for uses torch's thread team (without it, every kernel ran on one thread)."""
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread here")
    x = torch.randint(-127, 128, (1, 576), dtype=torch.int8)
    weight = torch.randint(-127, 128, (8192, 576), dtype=torch.int8)
    rowsum = weight.sum(dim=1, dtype=torch.int32)

    def cpu_seconds(calls: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            kernels.int8_matmul_few_rows(x, weight, rowsum)
        return time.perf_counter() - wall, time.process_time() - cpu

    cpu_seconds(20)
    # the best of three tries: a moment of another process on a core lowers one try's ratio, while
    # a kernel built without OpenMP never uses more CPU than wall time in any
    ratios = []
    for _ in range(3):
        wall, cpu = cpu_seconds(400)
        ratios.append(cpu / wall)
        if ratios[-1] > 1.3:
            break
    assert max(ratios) > 1.3, f"CPU / wall time {', '.join(f'{r:.2f}' for r in ratios)}: the kernel ran on one thread"


def test_store_pages_writes_each_token_to_its_slot(kernels: ModuleType) -> None:
    qkv = torch.randn(5, 8 * 16)  # keys and values as views into a fused projection, like the forward's
    key, value = qkv[:, :32].view(5, 2, 16), qkv[:, 32:64].view(5, 2, 16)
    key_cache, value_cache = torch.zeros(2, 40, 16), torch.zeros(2, 40, 16)
    slots = torch.tensor([3, 17, 4, 39, 0])
    expected_keys, expected_values = key_cache.clone(), value_cache.clone()
    expected_keys.index_copy_(1, slots, key.transpose(0, 1))
    expected_values.index_copy_(1, slots, value.transpose(0, 1))
    kernels.store_pages(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache, expected_keys) and torch.equal(value_cache, expected_values)
    with pytest.raises(RuntimeError, match="slot 40 is outside the cache"):
        kernels.store_pages(key, value, key_cache, value_cache, torch.tensor([1, 2, 3, 40, 5]))
    with pytest.raises(RuntimeError, match="one int64 slot per token"):
        kernels.store_pages(key, value, key_cache, value_cache, slots[:4])


def test_store_decode_rows_writes_at_each_rows_length(kernels: ModuleType) -> None:
    rows, heads, dims, capacity = 4, 2, 16, 24
    keys, values = torch.zeros(rows, heads, dims, capacity), torch.zeros(rows, heads, capacity, dims)
    qkv = torch.randn(6, 3 * heads * dims)  # 3 decoding rows, then 3 prefill tokens that stay out
    key, value = qkv[:, :heads * dims].view(6, heads, dims), qkv[:, heads * dims:2 * heads * dims].view(6, heads, dims)
    lengths = torch.tensor([1, 24, 9]).view(3, 1, 1, 1)
    kernels.store_decode_rows(key, value, keys, values, lengths)
    for row, length in enumerate([1, 24, 9]):
        assert torch.equal(keys[row, :, :, length - 1], key[row]) and torch.equal(values[row, :, length - 1], value[row])
    assert torch.count_nonzero(keys) == 3 * heads * dims and torch.count_nonzero(values) == 3 * heads * dims
    with pytest.raises(RuntimeError, match="length 25 does not fit the buffer's 24 positions"):
        kernels.store_decode_rows(key, value, keys, values, torch.tensor([1, 25, 3]))


def test_store_decode_rows_splits_many_rows_over_threads_and_writes_each_once(kernels: ModuleType) -> None:
    """From 8 rows on the rows are split over threads; draft rows share a buffer row at their own positions."""
    rows, heads, dims, capacity, count = 40, 3, 64, 32, 37
    keys, values = torch.zeros(rows, heads, dims, capacity), torch.zeros(rows, heads, capacity, dims)
    key, value = torch.randn(count, heads, dims), torch.randn(count, heads, dims)
    buffer_rows = torch.tensor(list(range(33)) + [33, 33, 33, 33])  # the last four rows: one sequence, a token and 3 drafts
    lengths = torch.tensor([1 + i % capacity for i in range(33)] + [5, 6, 7, 8])
    kernels.store_decode_rows(key, value, keys, values, lengths, buffer_rows)
    for i in range(count):
        row, position = int(buffer_rows[i]), int(lengths[i]) - 1
        assert torch.equal(keys[row, :, :, position], key[i]) and torch.equal(values[row, :, position], value[i])
    assert torch.count_nonzero(keys) == count * heads * dims and torch.count_nonzero(values) == count * heads * dims


def reference_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: list[int],
                               scale: float) -> torch.Tensor:
    """Each sequence alone, in float64: softmax(q K^T * scale) V over its first `length` positions."""
    kv_heads = keys.shape[1]
    group = q.shape[1] // kv_heads
    out = []
    for i, length in enumerate(lengths):
        k = keys[i, :, :, :length].double()  # [kvh, D, L]
        v = values[i, :, :length].double()  # [kvh, L, Dv]
        qi = q[i].double().view(kv_heads, group, -1)
        probs = torch.softmax(torch.bmm(qi, k) * scale, dim=-1)
        out.append(torch.bmm(probs, v).reshape(q.shape[1], -1))
    return torch.stack(out).float()


def decode_buffers(rows: int, kv_heads: int, dims: int, capacity: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.randn(rows, kv_heads, dims, capacity, generator=generator)
    values = torch.randn(rows, kv_heads, capacity, dims, generator=generator)
    return keys, values


def test_decode_attention_matches_the_definition(kernels: ModuleType) -> None:
    generator = torch.Generator().manual_seed(5)
    keys, values = decode_buffers(5, 3, 16, 40, generator)
    q = torch.randn(6, 9, 16, generator=generator) * 3  # one token more than the decoding rows, as in a mixed step
    lengths = [40, 1, 17, 33, 8]
    out = kernels.decode_attention(q, keys, values, torch.tensor(lengths), 0.25)
    assert out.shape == (5, 9, 16)
    torch.testing.assert_close(out, reference_decode_attention(q, keys, values, lengths, 0.25), rtol=1e-5, atol=1e-5)
    strided = torch.randn(6, 9, 48, generator=generator)[:, :, 8:24]  # rows of a fused q/k/v output: strided, last dim contiguous
    strided.copy_(q)
    assert torch.equal(kernels.decode_attention(strided, keys, values, torch.tensor(lengths), 0.25), out)


def test_decode_attention_gives_a_sequence_the_same_bits_in_any_batch(kernels: ModuleType) -> None:
    """A sequence's attention may not depend on the batch around it (its size, the others' lengths,
    its row): alone and batched must round the same, or greedy int8 answers part. torch.bmm over
    the same data is not batch-invariant (it picks its blocking by the batch's shape)."""
    generator = torch.Generator().manual_seed(3)
    for length in (39, 301):
        keys, values = decode_buffers(1, 3, 64, 320, generator)
        q = torch.randn(1, 9, 64, generator=generator)
        alone = kernels.decode_attention(q, keys, values, torch.tensor([length]), 0.125)
        for rows in (2, 3, 7):
            for place in {0, rows - 1}:
                batch_keys, batch_values = decode_buffers(rows, 3, 64, 320, generator)
                batch_q = torch.randn(rows, 9, 64, generator=generator)
                batch_keys[place], batch_values[place], batch_q[place] = keys[0], values[0], q[0]
                lengths = torch.randint(1, 321, (rows,), generator=generator)
                lengths[place] = length
                out = kernels.decode_attention(batch_q, batch_keys, batch_values, lengths, 0.125)
                assert torch.equal(out[place], alone[0]), (length, rows, place)


def test_query_rows_on_one_buffer_row_see_their_own_lengths(kernels: ModuleType) -> None:
    """Speculative decoding: a sequence checking drafts has several query rows on its buffer row,
    each attending to one more position, with the same bits as a plain step of that length."""
    generator = torch.Generator().manual_seed(4)
    keys, values = decode_buffers(2, 3, 16, 12, generator)
    q = torch.randn(4, 9, 16, generator=generator)
    key, value = torch.randn(4, 3, 16, generator=generator), torch.randn(4, 3, 16, generator=generator)
    lengths, rows = torch.tensor([5, 6, 7, 3]), torch.tensor([0, 0, 0, 1])
    mapped_keys, mapped_values = keys.clone(), values.clone()
    kernels.store_decode_rows(key, value, mapped_keys, mapped_values, lengths, rows)
    out = kernels.decode_attention(q, mapped_keys, mapped_values, lengths, 0.25, rows)
    for i in range(4):  # one plain row at a time, on a buffer holding what the earlier rows wrote
        row = int(rows[i])
        single_keys, single_values = mapped_keys[row:row + 1].clone(), mapped_values[row:row + 1].clone()
        assert torch.equal(single_keys[0, :, :, lengths[i] - 1], key[i])
        alone = kernels.decode_attention(q[i:i + 1], single_keys, single_values, lengths[i:i + 1], 0.25)
        assert torch.equal(out[i], alone[0])
    with pytest.raises(RuntimeError, match="buffer row 2 outside the buffer's 2 rows"):
        kernels.decode_attention(q, mapped_keys, mapped_values, lengths, 0.25, torch.tensor([0, 0, 2, 1]))
    with pytest.raises(RuntimeError, match="buffer_rows must be contiguous int64 with one entry per decoding row"):
        kernels.store_decode_rows(key, value, mapped_keys, mapped_values, lengths, rows[:3])


def test_decode_attention_refuses_what_does_not_fit(kernels: ModuleType) -> None:
    generator = torch.Generator().manual_seed(1)
    keys, values = decode_buffers(2, 3, 16, 8, generator)
    q = torch.randn(2, 9, 16, generator=generator)
    with pytest.raises(RuntimeError, match="length 9 does not fit the buffer's 8 positions"):
        kernels.decode_attention(q, keys, values, torch.tensor([9, 1]), 1.0)
    with pytest.raises(RuntimeError, match=r"the query heads \(8\) must be a multiple of the kv heads \(3\)"):
        kernels.decode_attention(q[:, :8], keys, values, torch.tensor([2, 1]), 1.0)
    with pytest.raises(RuntimeError, match="more decoding rows than queries"):
        kernels.decode_attention(q, keys, values, torch.tensor([1, 1, 1]), 1.0)
    poisoned = values.clone()
    poisoned[1, 0, 3, 0] = float("nan")
    out = kernels.decode_attention(q, keys, poisoned, torch.tensor([8, 8]), 1.0)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1, :3]).any()  # NaN stays in its sequence


# ---------------------------------------------------------------------------- through the engine


def greedy_with_logprobs(model_and_tokenizer: tuple[Any, Any], native: str, prompts: list[list[int]],
                         adjust: Callable[[Any], None] | None = None) -> list[tuple[list[int], list[float]]]:
    core = tiny_core(model_and_tokenizer, native_kernels=native)
    assert (core.runner.fused.kernels is not None) == (native == "on")
    if adjust is not None:
        adjust(core)
    sink = Collector()
    for i, prompt in enumerate(prompts):  # joining one step apart: prefill chunks next to decodes
        core.add_request(f"r{i}", prompt, SamplingParams(max_tokens=10, temperature=0, min_tokens=10, logprobs=0), sink)
        core.step()
    run_all(core)
    assert_cache_empty(core)
    return [(sink.tokens(f"r{i}"), [lp for out in sink.outputs[f"r{i}"] for lp in (out.logprobs or [])]) for i in range(len(prompts))]


@pytest.mark.parametrize("architecture", ["llama", "qwen2 with q/k/v biases"])
def test_native_and_pytorch_int8_forwards_agree(architecture: str, tiny_model_dir: Path) -> None:
    model, tokenizer = load_fp32(tiny_model_dir)
    if architecture != "llama":
        model = plain_qwen2(len(tokenizer))[0]
    quantize_linears_int8(model)
    prompts = prompts_of_lengths([6, 40, 19], seed=5)
    native = greedy_with_logprobs((model, tokenizer), "on", prompts)
    pytorch = greedy_with_logprobs((model, tokenizer), "off", prompts)
    for (tokens, logprobs), (tokens_ref, logprobs_ref) in zip(native, pytorch):
        assert tokens == tokens_ref
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(logprobs_ref), rtol=0, atol=2e-3)


def test_packed_weights_give_the_same_bits_and_are_skipped_when_memory_is_short(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Decode steps multiply a packed copy of the int8 weights where the CPU has VNNI: the same
    exact integer sums as oneDNN's and the row-major kernel's, so tokens and logprobs keep every
    bit; without the memory for a second copy the weights stay as they are, and the log says why."""
    import labs.engine.fused_llama as fused_llama

    model, tokenizer = load_fp32(tiny_model_dir)
    quantize_linears_int8(model)
    probe = tiny_core((model, tokenizer), native_kernels="on")
    if not probe.runner.fused.kernels.packed_fast:
        pytest.skip("no AVX512-VNNI here: weights are never packed")
    assert all(fused.packed is not None for fused in probe.runner.fused.linears())
    prompts = prompts_of_lengths([6, 40, 19, 3], seed=11)
    packed = greedy_with_logprobs((model, tokenizer), "on", prompts)
    monkeypatch.setattr(fused_llama, "PACKED_SHARE_OF_RAM", 0.0)
    with caplog.at_level("INFO", logger="labs.engine.fused_llama"):
        core = tiny_core((model, tokenizer), native_kernels="on")
    assert all(fused.packed is None for fused in core.runner.fused.linears())
    assert "int8 weights not packed: a second copy" in caplog.text
    assert greedy_with_logprobs((model, tokenizer), "on", prompts) == packed


class CountingStack:
    """A DecodeStack that counts its calls (it is a native object: its method cannot be patched)."""

    def __init__(self, stack: Any) -> None:
        self.stack, self.calls = stack, 0

    def run(self, *args: Any) -> None:
        self.calls += 1
        self.stack.run(*args)


def test_decode_steps_in_one_native_call_give_the_same_bits(tiny_model_dir: Path) -> None:
    """kernels.DecodeStack runs a decode-only step's layers in one call: the same tokens and
    logprobs, bit for bit, as the layer-by-layer Python loop (which prefill steps still take)."""
    model, tokenizer = load_fp32(tiny_model_dir)
    quantize_linears_int8(model)
    prompts = prompts_of_lengths([6, 40, 19, 3], seed=13)
    stacks: list[CountingStack] = []

    def count(core: Any) -> None:
        stacks.append(CountingStack(core.runner.fused.stack))
        core.runner.fused.stack = stacks[-1]

    def without(core: Any) -> None:
        core.runner.fused.stack = None

    one_call = greedy_with_logprobs((model, tokenizer), "on", prompts, count)
    assert stacks[0].calls >= 5  # the steps after the last prompt joined decode only
    assert greedy_with_logprobs((model, tokenizer), "on", prompts, without) == one_call


def test_the_decode_stack_refuses_what_does_not_fit(kernels: ModuleType) -> None:
    norm, weight = torch.ones(8), torch.zeros(8, 8, dtype=torch.int8)
    linear = (weight, None, weight.sum(dim=1, dtype=torch.int32), torch.ones(8), None)
    with pytest.raises(RuntimeError, match="two norms, a scale and four linears"):
        kernels.DecodeStack([norm], [norm], [1.0], [linear] * 3, 1, 1, 8, 1e-5, 64, 8)
    stack = kernels.DecodeStack([norm], [norm], [1.0], [linear] * 4, 1, 1, 8, 1e-5, 64, 8)
    hidden = torch.zeros(2, 8)
    with pytest.raises(RuntimeError, match="one cache and one decode-buffer tensor per layer"):
        stack.run(hidden, *kernels.quantize(hidden), torch.ones(2, 8), torch.zeros(2, 8), [], [], torch.zeros(2, dtype=torch.long),
                  [], [], torch.ones(2, dtype=torch.long))


def test_the_default_model_in_int8_gives_the_same_tokens_alone_and_batched(default_model_dir: Path) -> None:
    """The README's promise for int8 with the native kernels, on the real model whose int8 logits
    move with the last bit of anything: each request's greedy tokens are the same alone and in a
    batch of requests of other lengths (with torch.bmm for decode attention they parted after 9-20
    tokens). The cache is large enough for the decode buffer to hold the batch (steps that must
    gather pages still attend with torch.bmm), and prefix caching is off: a cache hit computes the
    rest of a prompt in a different shape, which moves the last bit on its own."""
    from labs.engine.core import EngineConfig, EngineCore

    model, tokenizer = load_fp32(default_model_dir)
    quantize_linears_int8(model)
    questions = ["Name a color number 2.", "What is the capital of France?", "Write a haiku about autumn leaves.",
                 "Explain what a budget is in two sentences.", "List three fruits."]
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                       tokenize=False), add_special_tokens=False)["input_ids"] for q in questions]
    core = EngineCore(model, tokenizer, 8192, EngineConfig(kv_cache_memory=256 * 1024**2, native_kernels="on",
                                                            enable_prefix_caching=False))
    assert core.runner.fused.kernels is not None

    def greedy(batch: list[int]) -> dict[int, list[int]]:
        sink = Collector()
        for i in batch:
            core.add_request(f"q{i}", prompts[i], SamplingParams(max_tokens=60, temperature=0, ignore_eos=True), sink)
        run_all(core)
        return {i: sink.tokens(f"q{i}") for i in batch}

    alone = {i: greedy([i])[i] for i in range(len(prompts))}
    assert greedy(list(range(len(prompts)))) == alone
    assert_cache_empty(core)


def test_fp32_weights_never_ask_for_native_kernels(tiny_model_dir: Path) -> None:
    core = tiny_core(load_fp32(tiny_model_dir), native_kernels="on")
    assert core.runner.native is None and core.runner.fused.kernels is None


# ---------------------------------------------------------------------------- the build story


def test_off_and_unknown_modes(tmp_path: Path) -> None:
    off = NativeKernels("off", tmp_path)
    assert off.module is None and not off.pending and off.unavailable == "native_kernels = off"
    assert not (tmp_path / "native").exists()
    with pytest.raises(NativeKernelsError, match="native_kernels must be one of auto, on, off, got 'fast'"):
        NativeKernels("fast", tmp_path)


def test_an_unwritable_cache_falls_back_in_auto_and_fails_clearly_in_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    auto = NativeKernels("auto", blocker)
    assert auto.module is None and not auto.pending and "point cache_dir at a writable folder" in auto.unavailable
    with pytest.raises(NativeKernelsError, match="native_kernels = on, but cannot create"):
        NativeKernels("on", blocker)


def test_no_compiler_falls_back_in_auto_and_fails_clearly_in_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    auto = NativeKernels("auto", tmp_path)
    assert auto.module is None and not auto.pending and "no C++ compiler found (install g++" in auto.unavailable
    with pytest.raises(NativeKernelsError, match=re.escape("native_kernels = on, but no C++ compiler found (install g++")):
        NativeKernels("on", tmp_path)


def test_a_failing_compiler_is_reported_and_not_retried_in_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'broken-c++ 1.0' && exit 0\n"
                        "echo 'broken-c++: fatal error: this compiler always fails' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(NativeKernelsError, match=r"(?s)building the native kernels failed.*this compiler always fails.*native_kernels = auto"):
        NativeKernels("on", tmp_path)
    folder = next((tmp_path / "native").iterdir())
    assert (folder / FAILED_MARKER).exists() and not (folder / READY_MARKER).exists()
    auto = NativeKernels("auto", tmp_path)  # knows it failed: no second 25 s attempt at every start
    assert auto.module is None and not auto.pending and "the build failed earlier" in auto.unavailable


def test_background_build_fails_into_the_pytorch_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/bin/false")
    kernels = NativeKernels("auto", tmp_path)
    assert kernels.pending
    deadline = time.monotonic() + 120
    while kernels.pending and time.monotonic() < deadline:
        assert kernels.poll() is None
        time.sleep(0.2)
    assert not kernels.pending and "the background build failed" in kernels.unavailable


def test_waiting_for_a_failing_background_build_settles_on_pytorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/bin/false")
    kernels = NativeKernels("auto", tmp_path)
    assert kernels.pending
    assert kernels.wait() is None  # auto never raises: it reports and stays on PyTorch
    assert not kernels.pending and "building the native kernels failed" in kernels.unavailable


def test_background_build_takes_over_between_requests_only(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cache: the engine serves with PyTorch at once, builds in the background, and
    switches once nothing runs, so no request changes path halfway."""
    monkeypatch.setenv("LABS_CACHE_DIR", str(tmp_path))
    model, tokenizer = load_fp32(tiny_model_dir)
    quantize_linears_int8(model)
    core = tiny_core((model, tokenizer))
    native = core.runner.native
    assert native.pending and core.runner.fused.kernels is None
    sink = Collector()
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    core.add_request("first", prompts_of_lengths([8])[0], params, sink)
    core.step()
    deadline = time.monotonic() + 300
    while native.poll() is None:
        assert time.monotonic() < deadline, f"the background build did not finish: {native.unavailable}"
        time.sleep(0.5)
    core.step()
    assert core.scheduler.running and core.runner.fused.kernels is None  # "first" keeps its path
    run_all(core)
    assert core.runner.fused.kernels is native.module
    core.add_request("second", prompts_of_lengths([8])[0], params, sink)
    run_all(core)
    assert_cache_empty(core)
    assert len(sink.tokens("second")) == 200
