// Fused row kernels for labs' int8 CPU forward (labs/engine/native/__init__.py says why and how
// they are built). Every function works row by row on contiguous fp32/int32 inputs, so a row's
// result never depends on the other rows of the batch, exactly like the PyTorch path.
//
// Quantization matches labs.models.int8.int8_matmul: symmetric per row, scale = max|y| / 127
// (at least 1e-8 / 127), q = round-half-even(y / scale).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LABS_VNNI_512 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using torch::Tensor;

// Rows per parallel task: split a call over threads only when each part has ~16k values.
int64_t grain_for(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

// exp(x) written so the compiler vectorizes it (libm's expf is scalar): 2^n * p(r) with
// |r| <= ln2 / 2 and a degree-6 polynomial, within ~2 ulp of expf over the float range.
inline float vector_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  const float p = 1.f + r * (1.f + r * (0.5f + r * (0.166666672f + r * (0.0416666418f + r * (0.00833336823f + r * 0.00138925039f)))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  return p * power;
}

// Quantize `factor * y[0:n]` into q; returns the row's dequantization scale.
inline float quantize_row(const float* y, int64_t n, float factor, int8_t* q) {
  float amax = 0.f;
#pragma omp simd reduction(max : amax)
  for (int64_t k = 0; k < n; k++) amax = std::max(amax, std::fabs(y[k]));
  const float scale = std::max(amax * factor, 1e-8f) / 127.f;
  const float inverse = factor / scale;
#pragma omp simd
  for (int64_t k = 0; k < n; k++) q[k] = static_cast<int8_t>(std::nearbyint(y[k] * inverse));
  return scale;
}

void check_float_matrix(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.dim() == 2 && t.is_contiguous(),
              name, " must be a contiguous 2-D float32 CPU tensor, got ", t.scalar_type(), " ", t.sizes());
}

void check_accumulator(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale, const std::optional<Tensor>& bias) {
  TORCH_CHECK(acc.device().is_cpu() && acc.scalar_type() == torch::kInt32 && acc.dim() == 2 && acc.is_contiguous(),
              "acc must be a contiguous 2-D int32 CPU tensor (a torch._int_mm result), got ", acc.scalar_type(), " ", acc.sizes());
  TORCH_CHECK(x_scale.scalar_type() == torch::kFloat32 && x_scale.is_contiguous() && x_scale.numel() == acc.size(0),
              "x_scale must hold one float32 scale per row of acc");
  TORCH_CHECK(w_scale.scalar_type() == torch::kFloat32 && w_scale.is_contiguous() && w_scale.numel() == acc.size(1),
              "w_scale must hold one float32 scale per column of acc");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() &&
                    ((bias->dim() == 1 && bias->numel() == acc.size(1)) || (bias->dim() == 2 && bias->sizes() == acc.sizes())),
                "bias must hold one float32 value per column of acc, or one per element (a per-row addend such as LoRA updates)");
  }
}

// The bias values of row `i`: the shared vector, or that row of a per-element addend.
inline const float* bias_row(const std::optional<Tensor>& bias, int64_t i) {
  if (!bias) return nullptr;
  const float* base = bias->data_ptr<float>();
  return bias->dim() == 2 ? base + i * bias->size(1) : base;
}

void check_vector(const Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == n,
              name, " must be a contiguous float32 vector of ", n, " values, got ", t.scalar_type(), " ", t.sizes());
}

std::tuple<Tensor, Tensor> empty_quantized(int64_t rows, int64_t width, const Tensor& like) {
  return {torch::empty({rows, width}, like.options().dtype(torch::kInt8)), torch::empty({rows, 1}, like.options().dtype(torch::kFloat32))};
}

// out[n] = acc[n] * x_scale * w_scale[n] (+ bias[n]) for one row.
inline void dequantize_row(const int32_t* acc, float x_scale, const float* w_scale, const float* bias, int64_t n, float* out) {
  if (bias != nullptr) {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) out[k] = static_cast<float>(acc[k]) * x_scale * w_scale[k] + bias[k];
  } else {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) out[k] = static_cast<float>(acc[k]) * x_scale * w_scale[k];
  }
}

// The step's new keys and values as the forward makes them: views into the qkv projection.
void check_step_keys_values(const Tensor& key, const Tensor& value) {
  for (const Tensor* t : {&key, &value}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 3 && t->stride(2) == 1,
                "key and value must be float32 [tokens, kv_heads, head_dim] with contiguous head_dim");
  }
  TORCH_CHECK(value.sizes() == key.sizes(), "key and value must have the same shape");
}

}  // namespace

// RMSNorm(x) * weight, quantized per row: (q [M, K] int8, scale [M, 1]).
std::tuple<Tensor, Tensor> rms_norm_quantize(const Tensor& x, const Tensor& weight, double eps) {
  check_float_matrix(x, "x");
  const int64_t rows = x.size(0), width = x.size(1);
  check_vector(weight, width, "weight");
  auto [q, scale] = empty_quantized(rows, width, x);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
    std::vector<float> y(width);
    for (int64_t i = begin; i < end; i++) {
      const float* row = xp + i * width;
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t k = 0; k < width; k++) {
        squares += row[k] * row[k];
        y[k] = row[k] * wp[k];
      }
      const float inverse_rms = 1.f / std::sqrt(squares / static_cast<float>(width) + static_cast<float>(eps));
      sp[i] = quantize_row(y.data(), width, inverse_rms, qp + i * width);
    }
  });
  return {q, scale};
}

// x quantized per row: (q [M, K] int8, scale [M, 1]).
std::tuple<Tensor, Tensor> quantize(const Tensor& x) {
  check_float_matrix(x, "x");
  const int64_t rows = x.size(0), width = x.size(1);
  auto [q, scale] = empty_quantized(rows, width, x);
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) sp[i] = quantize_row(xp + i * width, width, 1.f, qp + i * width);
  });
  return {q, scale};
}

// acc * x_scale * w_scale (+ bias) as fp32 [M, N]; then the rotary embedding on the first
// `rotary_heads` heads of `head_dim` values: y = x * cos + roll(x, head_dim / 2) * sin_signed,
// where sin_signed is sin with its first half negated (so the roll is HF's rotate_half).
Tensor dequantize_rotary(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale, const std::optional<Tensor>& bias,
                         const Tensor& cos, const Tensor& sin_signed, int64_t rotary_heads, int64_t head_dim) {
  check_accumulator(acc, x_scale, w_scale, bias);
  const int64_t rows = acc.size(0), width = acc.size(1);
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && rotary_heads >= 0 && rotary_heads * head_dim <= width,
              "rotary_heads * head_dim must fit in a row of acc and head_dim must be even");
  if (rotary_heads > 0) {
    check_float_matrix(cos, "cos");
    check_float_matrix(sin_signed, "sin_signed");
    TORCH_CHECK(cos.size(0) == rows && cos.size(1) == head_dim && sin_signed.sizes() == cos.sizes(),
                "cos and sin_signed must be [rows, head_dim]");
  }
  auto out = torch::empty({rows, width}, acc.options().dtype(torch::kFloat32));
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  const float* cp = rotary_heads > 0 ? cos.data_ptr<float>() : nullptr;
  const float* snp = rotary_heads > 0 ? sin_signed.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t half = head_dim / 2, rotary_width = rotary_heads * head_dim;
  at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
    std::vector<float> plain(rotary_width);
    for (int64_t i = begin; i < end; i++) {
      float* o = op + i * width;
      const float* bp = bias_row(bias, i);
      dequantize_row(ap + i * width, xs[i], ws, bp, rotary_width, plain.data());
      dequantize_row(ap + i * width + rotary_width, xs[i], ws + rotary_width, bp ? bp + rotary_width : nullptr,
                     width - rotary_width, o + rotary_width);
      const float* c = cp ? cp + i * head_dim : nullptr;
      const float* s = snp ? snp + i * head_dim : nullptr;
      for (int64_t h = 0; h < rotary_heads; h++) {
        const float* x = plain.data() + h * head_dim;
        float* y = o + h * head_dim;
#pragma omp simd
        for (int64_t d = 0; d < half; d++) y[d] = x[d] * c[d] + x[d + half] * s[d];
#pragma omp simd
        for (int64_t d = half; d < head_dim; d++) y[d] = x[d] * c[d] + x[d - half] * s[d];
      }
    }
  });
  return out;
}

// acc * x_scale * w_scale (+ bias) as fp32 [M, N].
Tensor dequantize(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale, const std::optional<Tensor>& bias) {
  return dequantize_rotary(acc, x_scale, w_scale, bias, Tensor(), Tensor(), 0, 2);
}

// hidden += acc * x_scale * w_scale (+ bias), in place; returns RMSNorm(hidden) * weight quantized.
std::tuple<Tensor, Tensor> residual_rms_norm_quantize(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale,
                                                      const std::optional<Tensor>& bias, Tensor& hidden, const Tensor& weight, double eps) {
  check_accumulator(acc, x_scale, w_scale, bias);
  check_float_matrix(hidden, "hidden");
  TORCH_CHECK(hidden.sizes() == acc.sizes(), "hidden and acc must have the same shape");
  const int64_t rows = acc.size(0), width = acc.size(1);
  check_vector(weight, width, "weight");
  auto [q, scale] = empty_quantized(rows, width, hidden);
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  float* hp = hidden.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
    std::vector<float> update(width), y(width);
    for (int64_t i = begin; i < end; i++) {
      float* h = hp + i * width;
      dequantize_row(ap + i * width, xs[i], ws, bias_row(bias, i), width, update.data());
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t k = 0; k < width; k++) {
        const float v = h[k] + update[k];
        h[k] = v;
        squares += v * v;
        y[k] = v * wp[k];
      }
      const float inverse_rms = 1.f / std::sqrt(squares / static_cast<float>(width) + static_cast<float>(eps));
      sp[i] = quantize_row(y.data(), width, inverse_rms, qp + i * width);
    }
  });
  return {q, scale};
}

// hidden += acc * x_scale * w_scale (+ bias), in place.
void residual_add(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale, const std::optional<Tensor>& bias, Tensor& hidden) {
  check_accumulator(acc, x_scale, w_scale, bias);
  check_float_matrix(hidden, "hidden");
  TORCH_CHECK(hidden.sizes() == acc.sizes(), "hidden and acc must have the same shape");
  const int64_t rows = acc.size(0), width = acc.size(1);
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  float* hp = hidden.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(width), [&](int64_t begin, int64_t end) {
    std::vector<float> update(width);
    for (int64_t i = begin; i < end; i++) {
      float* h = hp + i * width;
      dequantize_row(ap + i * width, xs[i], ws, bias_row(bias, i), width, update.data());
#pragma omp simd
      for (int64_t k = 0; k < width; k++) h[k] += update[k];
    }
  });
}

// acc = [gate | up] products [M, 2I] (+ addend [M, 2I], e.g. LoRA updates): SiLU(gate) * up, quantized per row.
std::tuple<Tensor, Tensor> silu_mul_quantize(const Tensor& acc, const Tensor& x_scale, const Tensor& w_scale,
                                             const std::optional<Tensor>& addend) {
  check_accumulator(acc, x_scale, w_scale, addend);
  TORCH_CHECK(!addend || addend->dim() == 2, "addend must be [rows, columns] like acc");
  TORCH_CHECK(acc.size(1) % 2 == 0, "acc must hold gate and up halves of equal width");
  const int64_t rows = acc.size(0), inner = acc.size(1) / 2;
  auto [q, scale] = empty_quantized(rows, inner, x_scale);
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(2 * inner), [&](int64_t begin, int64_t end) {
    std::vector<float> y(inner);
    for (int64_t i = begin; i < end; i++) {
      const int32_t* a = ap + i * 2 * inner;
      const float s = xs[i];
      const float* add = bias_row(addend, i);
      if (add == nullptr) {
#pragma omp simd
        for (int64_t k = 0; k < inner; k++) {
          const float gate = static_cast<float>(a[k]) * s * ws[k];
          const float up = static_cast<float>(a[k + inner]) * s * ws[k + inner];
          y[k] = gate / (1.f + vector_exp(-gate)) * up;
        }
      } else {
#pragma omp simd
        for (int64_t k = 0; k < inner; k++) {
          const float gate = static_cast<float>(a[k]) * s * ws[k] + add[k];
          const float up = static_cast<float>(a[k + inner]) * s * ws[k + inner] + add[k + inner];
          y[k] = gate / (1.f + vector_exp(-gate)) * up;
        }
      }
      sp[i] = quantize_row(y.data(), inner, 1.f, qp + i * inner);
    }
  });
  return {q, scale};
}

// The step's new keys and values into the paged cache: key/value [T, kv_heads, D] (any row and
// head strides, contiguous head_dim) to slot slots[t] of caches [kv_heads, slots, D].
void store_pages(const Tensor& key, const Tensor& value, Tensor& key_cache, Tensor& value_cache, const Tensor& slots) {
  check_step_keys_values(key, value);
  for (const Tensor* t : {&key_cache, &value_cache}) {
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 3 && t->is_contiguous() && t->size(0) == key.size(1) &&
                t->size(2) == key.size(2), "caches must be contiguous float32 [kv_heads, slots, head_dim] matching key");
  }
  TORCH_CHECK(slots.scalar_type() == torch::kInt64 && slots.is_contiguous() && slots.numel() == key.size(0),
              "slots must hold one int64 slot per token");
  const int64_t tokens = key.size(0), heads = key.size(1), dims = key.size(2), capacity = key_cache.size(1);
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; t++) TORCH_CHECK(sp[t] >= 0 && sp[t] < capacity, "slot ", sp[t], " is outside the cache (", capacity, " slots)");
  const float* kp = key.data_ptr<float>();
  const float* vp = value.data_ptr<float>();
  float* kc = key_cache.data_ptr<float>();
  float* vc = value_cache.data_ptr<float>();
  for (int64_t t = 0; t < tokens; t++) {
    for (int64_t h = 0; h < heads; h++) {
      const int64_t to = (h * capacity + sp[t]) * dims;
      std::memcpy(kc + to, kp + t * key.stride(0) + h * key.stride(1), dims * sizeof(float));
      std::memcpy(vc + to, vp + t * value.stride(0) + h * value.stride(1), dims * sizeof(float));
    }
  }
}

// The decoding rows' new keys and values into the dense decode buffer: row i's token goes to
// position lengths[i] - 1 of keys [rows, kv_heads, D, capacity] (transposed) and values
// [rows, kv_heads, capacity, D]; key/value rows [0, count) are the decoding rows.
// Which buffer row each query row reads: `buffer_rows[i]`, or row i itself. A sequence verifying
// draft tokens has several query rows on one buffer row, each with its own length.
static const int64_t* buffer_rows_of(const std::optional<Tensor>& buffer_rows, int64_t count, int64_t available) {
  if (!buffer_rows.has_value()) {
    TORCH_CHECK(count <= available, "more decoding rows than buffer rows");
    return nullptr;
  }
  TORCH_CHECK(buffer_rows->scalar_type() == torch::kInt64 && buffer_rows->is_contiguous() && buffer_rows->numel() == count,
              "buffer_rows must be contiguous int64 with one entry per decoding row");
  const int64_t* rows = buffer_rows->data_ptr<int64_t>();
  for (int64_t i = 0; i < count; i++) TORCH_CHECK(rows[i] >= 0 && rows[i] < available, "buffer row ", rows[i], " outside the buffer's ", available, " rows");
  return rows;
}

void store_decode_rows(const Tensor& key, const Tensor& value, Tensor& keys, Tensor& values, const Tensor& lengths,
                       const std::optional<Tensor>& buffer_rows) {
  check_step_keys_values(key, value);
  TORCH_CHECK(keys.scalar_type() == torch::kFloat32 && keys.dim() == 4 && keys.is_contiguous() && values.scalar_type() == torch::kFloat32 &&
              values.dim() == 4 && values.is_contiguous(), "keys and values must be contiguous float32 4-D buffers");
  const int64_t count = lengths.numel(), heads = key.size(1), dims = key.size(2), capacity = keys.size(3);
  TORCH_CHECK(keys.size(1) == heads && keys.size(2) == dims && values.size(1) == heads && values.size(2) == capacity && values.size(3) == dims &&
              values.size(0) == keys.size(0), "keys must be [rows, kv_heads, head_dim, capacity] and values [rows, kv_heads, capacity, head_dim]");
  TORCH_CHECK(lengths.scalar_type() == torch::kInt64 && lengths.is_contiguous(), "lengths must be contiguous int64");
  TORCH_CHECK(count <= key.size(0), "more decoding rows than tokens");
  const int64_t* rows = buffer_rows_of(buffer_rows, count, keys.size(0));
  const int64_t* lp = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; i++) TORCH_CHECK(lp[i] >= 1 && lp[i] <= capacity, "length ", lp[i], " does not fit the buffer's ", capacity, " positions");
  const float* kp = key.data_ptr<float>();
  const float* vp = value.data_ptr<float>();
  float* kb = keys.data_ptr<float>();
  float* vb = values.data_ptr<float>();
  // a key goes down a column of the transposed buffer, one cache line per value: split over
  // threads from 8 rows on (~2 ms of a 32-sequence step on one)
  at::parallel_for(0, count, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t position = lp[i] - 1, row = rows == nullptr ? i : rows[i];
      for (int64_t h = 0; h < heads; h++) {
        const float* k = kp + i * key.stride(0) + h * key.stride(1);
        float* column = kb + ((row * heads + h) * dims) * capacity + position;
        for (int64_t d = 0; d < dims; d++) column[d * capacity] = k[d];
        std::memcpy(vb + ((row * heads + h) * capacity + position) * dims, vp + i * value.stride(0) + h * value.stride(1),
                    dims * sizeof(float));
      }
    }
  });
}

// Softmax of x[0:n] * factor in place, its sum in a fixed order: lane j adds the elements
// k = j (mod kLanes) in turn and the lanes are added in order, so the result never depends on
// where the row lies in memory (a `simd reduction` may split a row by its alignment).
constexpr int64_t kLanes = 16;

void softmax_in_place(float* x, int64_t n, float factor) {
  float top = -INFINITY;
#pragma omp simd reduction(max : top)
  for (int64_t k = 0; k < n; k++) top = std::max(top, x[k] * factor);
  float lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; j++) {
      const float e = vector_exp(x[k + j] * factor - top);
      x[k + j] = e;
      lanes[j] += e;
    }
  }
  for (int64_t j = 0; k < n; k++, j++) {
    const float e = vector_exp(x[k] * factor - top);
    x[k] = e;
    lanes[j] += e;
  }
  float total = 0.f;
  for (int64_t j = 0; j < kLanes; j++) total += lanes[j];
  const float inverse = n > 0 ? 1.f / total : 0.f;
#pragma omp simd
  for (int64_t j = 0; j < n; j++) x[j] *= inverse;
}

// rows[g][0:n] += weights[g] * x[0:n] for each of the `count` rows (rows g * n apart): x is read
// once for all of them; the group size is a compile-time constant for the common cases, so the
// inner loop over the rows unrolls and the loop over n vectorizes.
template <int64_t G>
void accumulate_fixed(float* rows, const float* weights, const float* x, int64_t n) {
  float w[G];
  for (int64_t g = 0; g < G; g++) w[g] = weights[g];
#pragma omp simd
  for (int64_t k = 0; k < n; k++) {
    const float v = x[k];
    for (int64_t g = 0; g < G; g++) rows[g * n + k] += w[g] * v;
  }
}

void accumulate_rows(float* rows, const float* weights, const float* x, int64_t count, int64_t n) {
  switch (count) {
    case 1: return accumulate_fixed<1>(rows, weights, x, n);
    case 2: return accumulate_fixed<2>(rows, weights, x, n);
    case 3: return accumulate_fixed<3>(rows, weights, x, n);
    case 4: return accumulate_fixed<4>(rows, weights, x, n);
    case 5: return accumulate_fixed<5>(rows, weights, x, n);
    case 6: return accumulate_fixed<6>(rows, weights, x, n);
    case 7: return accumulate_fixed<7>(rows, weights, x, n);
    case 8: return accumulate_fixed<8>(rows, weights, x, n);
    default:
      for (int64_t g = 0; g < count; g++) {
        const float w = weights[g];
        float* row = rows + g * n;
#pragma omp simd
        for (int64_t k = 0; k < n; k++) row[k] += w * x[k];
      }
  }
}

// sum of a[k] * b[k], k < n, in an order fixed by n alone (lanes as in softmax_in_place), so a
// row's result never depends on where it lies in memory or on the other rows of its batch.
inline float dot_fixed(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; j++) lanes[j] += a[k + j] * b[k + j];
  }
  for (int64_t j = 0; k < n; k++, j++) lanes[j] += a[k] * b[k];
  float total = 0.f;
  for (int64_t j = 0; j < kLanes; j++) total += lanes[j];
  return total;
}

// LoRA updates of a group of rows sharing one adapter: t[g] = A (x[g] * x_scale[g]), out[g] = t[g] B,
// with A [R, K] and B given transposed [R, N]. Each A and B row is read once for the whole group
// (as in a matmul) while every output keeps the sums of a row alone: over K in dot_fixed's order,
// then over R in order, so a row's bits never depend on its group or batch. The R and N loops are
// split over threads when `parallel` (few groups), else the caller splits the groups.
void lora_group(const int8_t* x, const float* x_scale, const int64_t* rows, int64_t count, const float* a, const float* b_t,
                int64_t rank, int64_t k_in, int64_t n_out, float* out, bool parallel) {
  std::vector<float> xf(count * k_in), t(count * rank);
  for (int64_t g = 0; g < count; g++) {
    const int8_t* xr = x + rows[g] * k_in;
    const float s = x_scale[rows[g]];
#pragma omp simd
    for (int64_t k = 0; k < k_in; k++) xf[g * k_in + k] = static_cast<float>(xr[k]) * s;
  }
  auto down = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++)
      for (int64_t g = 0; g < count; g++) t[g * rank + r] = dot_fixed(a + r * k_in, xf.data() + g * k_in, k_in);
  };
  auto up = [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; block += 256) {  // the group's outputs of a block stay in L1
      const int64_t stop = std::min(end, block + 256);
      for (int64_t r = 0; r < rank; r++) {
        const float* row = b_t + r * n_out;
        for (int64_t g = 0; g < count; g++) {
          const float w = t[g * rank + r];
          float* o = out + rows[g] * n_out;
#pragma omp simd
          for (int64_t n = block; n < stop; n++) o[n] += w * row[n];
        }
      }
    }
  };
  if (parallel) {
    at::parallel_for(0, rank, 1, down);
    at::parallel_for(0, n_out, 256, up);
  } else {
    down(0, rank);
    up(0, n_out);
  }
}

// LoRA updates [T, N] of the step's rows from their int8 activations x [T, K] (scales [T]):
// row i gets (a_stack[j] @ (x[i] * x_scale[i])) @ bt_stack[j] with j = adapter[i], or zeros where
// adapter[i] < 0 (a base-model row). a_stack [n, R, K] and bt_stack [n, R, N] (B transposed) hold
// the resident adapters, ranks padded with zeros. One call replaces the dequantize, gather,
// matmuls and scatter per slot; rows go in groups of up to kGroup sharing an adapter.
constexpr int64_t kGroup = 8;

Tensor lora_update(const Tensor& x, const Tensor& x_scale, const Tensor& adapter, const Tensor& a_stack, const Tensor& bt_stack) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kInt8 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous 2-D int8 CPU tensor");
  TORCH_CHECK(x_scale.scalar_type() == torch::kFloat32 && x_scale.is_contiguous() && x_scale.numel() == x.size(0),
              "x_scale must hold one float32 scale per row of x");
  TORCH_CHECK(adapter.scalar_type() == torch::kInt64 && adapter.is_contiguous() && adapter.numel() == x.size(0),
              "adapter must hold one int64 adapter index per row of x (-1: none)");
  TORCH_CHECK(a_stack.scalar_type() == torch::kFloat32 && a_stack.dim() == 3 && a_stack.is_contiguous() && a_stack.size(2) == x.size(1),
              "a_stack must be a contiguous float32 [adapters, rank, K] tensor");
  TORCH_CHECK(bt_stack.scalar_type() == torch::kFloat32 && bt_stack.dim() == 3 && bt_stack.is_contiguous() &&
                  bt_stack.size(0) == a_stack.size(0) && bt_stack.size(1) == a_stack.size(1),
              "bt_stack must be a contiguous float32 [adapters, rank, N] tensor matching a_stack");
  const int64_t rows = x.size(0), k_in = x.size(1), rank = a_stack.size(1), n_out = bt_stack.size(2), count = a_stack.size(0);
  auto out = torch::zeros({rows, n_out}, x.options().dtype(torch::kFloat32));
  const int64_t* ip = adapter.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> by_adapter(count);
  for (int64_t i = 0; i < rows; i++) {
    TORCH_CHECK(ip[i] < count, "adapter index ", ip[i], " is out of range (", count, " adapters)");
    if (ip[i] >= 0) by_adapter[ip[i]].push_back(i);
  }
  struct Group { int64_t adapter, first, count; };
  std::vector<Group> groups;
  for (int64_t j = 0; j < count; j++)
    for (int64_t first = 0; first < static_cast<int64_t>(by_adapter[j].size()); first += kGroup)
      groups.push_back({j, first, std::min<int64_t>(kGroup, by_adapter[j].size() - first)});
  const int8_t* xp = x.data_ptr<int8_t>();
  const float* sp = x_scale.data_ptr<float>();
  const float* ap = a_stack.data_ptr<float>();
  const float* bp = bt_stack.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto run = [&](const Group& group, bool parallel) {
    lora_group(xp, sp, by_adapter[group.adapter].data() + group.first, group.count, ap + group.adapter * rank * k_in,
               bp + group.adapter * rank * n_out, rank, k_in, n_out, op, parallel);
  };
  const int64_t num_groups = groups.size();
  if (num_groups < 2 * at::get_num_threads()) {
    for (const Group& group : groups) run(group, true);
  } else {
    at::parallel_for(0, num_groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; g++) run(groups[g], false);
    });
  }
  return out;
}

// Decode attention over the dense decode buffer, one (sequence, kv head) at a time: queries
// q [>= count, heads, D] (row i's token), keys [rows, kv_heads, D, capacity] (transposed) and
// values [rows, kv_heads, capacity, Dv], the first lengths[i] positions of row i; returns
// [count, heads, Dv]. Every sum runs in an order fixed by the sequence alone (over D for the
// scores, over positions for the output), so a sequence gets the same bits alone and in any
// batch: torch.bmm picks its blocking by the batch's shape, and its last-bit differences made
// greedy int8 answers part between a request alone and the same request batched.
Tensor decode_attention(const Tensor& q, const Tensor& keys, const Tensor& values, const Tensor& lengths, double scale,
                        const std::optional<Tensor>& buffer_rows) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && q.dim() == 3 && q.stride(2) == 1, "q must be float32 [tokens, heads, head_dim] with contiguous rows");
  TORCH_CHECK(keys.scalar_type() == torch::kFloat32 && keys.dim() == 4 && keys.is_contiguous() && values.scalar_type() == torch::kFloat32 &&
              values.dim() == 4 && values.is_contiguous(), "keys and values must be contiguous float32 4-D buffers");
  const int64_t count = lengths.numel(), heads = q.size(1), dims = q.size(2);
  const int64_t kv_heads = keys.size(1), capacity = keys.size(3), value_dims = values.size(3);
  TORCH_CHECK(keys.size(2) == dims && values.size(1) == kv_heads && values.size(2) == capacity && values.size(0) == keys.size(0),
              "keys must be [rows, kv_heads, head_dim, capacity] and values [rows, kv_heads, capacity, value_dim]");
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "the query heads (", heads, ") must be a multiple of the kv heads (", kv_heads, ")");
  TORCH_CHECK(lengths.scalar_type() == torch::kInt64 && lengths.is_contiguous(), "lengths must be contiguous int64");
  TORCH_CHECK(count <= q.size(0), "more decoding rows than queries");
  const int64_t* rows = buffer_rows_of(buffer_rows, count, keys.size(0));
  const int64_t* lp = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; i++) TORCH_CHECK(lp[i] >= 1 && lp[i] <= capacity, "length ", lp[i], " does not fit the buffer's ", capacity, " positions");
  const int64_t group = heads / kv_heads;
  Tensor out = torch::empty({count, heads, value_dims}, q.options().memory_format(at::MemoryFormat::Contiguous));
  const float* qp = q.data_ptr<float>();
  const float* kb = keys.data_ptr<float>();
  const float* vb = values.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float factor = static_cast<float>(scale);
  at::parallel_for(0, count * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, qd(group);  // qd: the group's query values (or weights) at one d (or l)
    for (int64_t task = begin; task < end; task++) {
      const int64_t i = task / kv_heads, h = task % kv_heads, length = lp[i], row = rows == nullptr ? i : rows[i];
      scores.assign(group * length, 0.f);
      const float* key_rows = kb + (row * kv_heads + h) * dims * capacity;
      const float* value_rows = vb + (row * kv_heads + h) * capacity * value_dims;
      const float* qh = qp + i * q.stride(0) + h * group * q.stride(1);
      // scores: each key row (one dimension, every position) read once, in order of D
      float* s = scores.data();
      for (int64_t d = 0; d < dims; d++) {
        for (int64_t g = 0; g < group; g++) qd[g] = qh[g * q.stride(1) + d];
        accumulate_rows(s, qd.data(), key_rows + d * capacity, group, length);
      }
      for (int64_t g = 0; g < group; g++) softmax_in_place(s + g * length, length, factor);
      // output: each value row read once, in order of position
      float* o = op + (i * heads + h * group) * value_dims;
      std::fill(o, o + group * value_dims, 0.f);
      for (int64_t l = 0; l < length; l++) {
        for (int64_t g = 0; g < group; g++) qd[g] = s[g * length + l];
        accumulate_rows(o, qd.data(), value_rows + l * value_dims, group, value_dims);
      }
    }
  });
  return out;
}

namespace {

#ifdef LABS_VNNI_512
// R weight rows times MT activation rows over K: the activations come shifted to unsigned
// (x + 128, what vpdpbusd multiplies), and 128 * rowsum(w) is taken off again, so each result
// is the exact integer sum of x * w.
template <int R, int MT>
inline void small_tile(const uint8_t* xu, int64_t K, const int8_t* w, int32_t* out, int64_t out_stride, const int32_t* rowsum) {
  __m512i acc[R][MT];
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) acc[r][m] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512i xv[MT];
    for (int m = 0; m < MT; m++) xv[m] = _mm512_loadu_si512(xu + m * K + k);
    for (int r = 0; r < R; r++) {
      // the stream runs through consecutive rows: fetch a few tiles ahead of the one in use
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + 8192), _MM_HINT_T0);
      const __m512i wv = _mm512_loadu_si512(w + r * K + k);
      for (int m = 0; m < MT; m++) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], xv[m], wv);
    }
  }
  if (k < K) {
    const __mmask64 mask = (~0ULL) >> (64 - (K - k));
    __m512i xv[MT];
    for (int m = 0; m < MT; m++) xv[m] = _mm512_maskz_loadu_epi8(mask, xu + m * K + k);
    for (int r = 0; r < R; r++) {
      const __m512i wv = _mm512_maskz_loadu_epi8(mask, w + r * K + k);
      for (int m = 0; m < MT; m++) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], xv[m], wv);
    }
  }
  for (int r = 0; r < R; r++)
    for (int m = 0; m < MT; m++) out[m * out_stride + r] = _mm512_reduce_add_epi32(acc[r][m]) - 128 * rowsum[r];
}

template <int R>
inline void small_rows(const uint8_t* xu, int64_t M, int64_t K, const int8_t* w, int32_t* out, int64_t N, const int32_t* rowsum) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const uint8_t* x = xu + m0 * K;
    int32_t* o = out + m0 * N;
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: small_tile<R, 1>(x, K, w, o, N, rowsum); break;
      case 2: small_tile<R, 2>(x, K, w, o, N, rowsum); break;
      case 3: small_tile<R, 3>(x, K, w, o, N, rowsum); break;
      default: small_tile<R, 4>(x, K, w, o, N, rowsum); break;
    }
  }
}
#endif

}  // namespace

// x [M, K] int8 times w [N, K] int8 transposed: the exact int32 products [M, N], as
// torch._int_mm(x, w.t()) gives them, for the few rows of a decode step. Why: for M <= 8 the
// step reads every weight once and is bound by memory; streaming the weights row by row, this
// loop is level with oneDNN's for one row and 10-25% faster for 2-4 (a step checking draft
// tokens; docs/benchmarks.md). Every row's sums are exact integers, so the two are
// interchangeable bit for bit. `rowsum` is w.sum(1) (int32).
Tensor int8_matmul_few_rows(const Tensor& x, const Tensor& w, const Tensor& rowsum) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kInt8 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous 2-D int8 CPU tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == torch::kInt8 && w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1),
              "w must be a contiguous int8 [N, K] CPU tensor with K = ", x.size(1), ", got ", w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(rowsum.scalar_type() == torch::kInt32 && rowsum.is_contiguous() && rowsum.numel() == w.size(0),
              "rowsum must be int32 with one value per row of w");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  Tensor out = torch::empty({M, N}, x.options().dtype(torch::kInt32));
  const int8_t* xp = x.data_ptr<int8_t>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const int32_t* rs = rowsum.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
#ifdef LABS_VNNI_512
  std::vector<uint8_t> shifted(M * K);
  for (int64_t i = 0; i < M * K; i++) shifted[i] = static_cast<uint8_t>(xp[i] ^ 0x80);
  const uint8_t* xu = shifted.data();
  at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; group++) {
      const int64_t n = group * 4, rows = std::min<int64_t>(4, N - n);
      if (rows == 4) {
        small_rows<4>(xu, M, K, wp + n * K, op + n, N, rs + n);
      } else {
        for (int64_t r = 0; r < rows; r++) small_rows<1>(xu, M, K, wp + (n + r) * K, op + n + r, N, rs + n + r);
      }
    }
  });
#else
  (void)rs;
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      for (int64_t m = 0; m < M; m++) {
        int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < K; k++) sum += static_cast<int32_t>(xp[m * K + k]) * static_cast<int32_t>(wp[n * K + k]);
        op[m * N + n] = sum;
      }
    }
  });
#endif
  return out;
}

// The int8 weight [N, K] in the layout vpdpbusd reads without reductions: [N / 16, K / 4, 16, 4]
// (blocks of 16 output columns; in each, the 16 columns' next 4 values are 64 consecutive
// bytes), N padded to a multiple of 64 and K to a multiple of 4 with zeros.
constexpr int64_t kPackColumns = 64;  // N is padded to this (a column group is 2 or 4 blocks of 16)

Tensor pack_int8_weight(const Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == torch::kInt8 && w.dim() == 2 && w.is_contiguous(),
              "w must be a contiguous int8 [N, K] CPU tensor, got ", w.scalar_type(), " ", w.sizes());
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t blocks = (N + kPackColumns - 1) / kPackColumns * (kPackColumns / 16), steps = (K + 3) / 4;
  // every byte is written once, in order, padding (columns past N, values past K) as zeros
  Tensor packed = torch::empty({blocks, steps, 16, 4}, w.options());
  const int8_t* wp = w.data_ptr<int8_t>();
  int8_t* pp = packed.data_ptr<int8_t>();
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++) {
      int8_t* out = pp + b * steps * 64;
      for (int64_t s = 0; s < steps; s++) {
        const int64_t k = s * 4, take = std::min<int64_t>(4, K - k);
        for (int64_t j = 0; j < 16; j++, out += 4) {
          const int64_t n = b * 16 + j;
          int32_t four = 0;
          if (n < N) {
            if (take == 4) std::memcpy(&four, wp + n * K + k, 4);  // a constant size: one load
            else std::memcpy(&four, wp + n * K + k, take);
          }
          std::memcpy(out, &four, 4);
        }
      }
    }
  });
  return packed;
}

namespace {

#ifdef LABS_VNNI_512
// MT activation rows (shifted to unsigned, rows `stride` bytes apart, zero-padded to 4 * steps)
// times NT blocks of 16 packed columns: each step broadcasts 4 activation bytes and multiplies
// them into 16 columns at once, so the sums need no horizontal reduction. 128 * rowsum(w) is
// taken off again, so each result is the exact integer sum of x * w.
template <int MT, int NT>
inline void packed_tile(const uint8_t* xu, int64_t stride, const int8_t* w, int64_t steps, int32_t* out, int64_t N, int64_t n0,
                        const int32_t* rowsum) {
  __m512i acc[MT][NT];
  for (int m = 0; m < MT; m++)
    for (int j = 0; j < NT; j++) acc[m][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < steps; k++) {
    __m512i wv[NT];
    for (int j = 0; j < NT; j++) wv[j] = _mm512_loadu_si512(w + (j * steps + k) * 64);
    for (int m = 0; m < MT; m++) {
      int32_t four;
      std::memcpy(&four, xu + m * stride + k * 4, sizeof(four));
      const __m512i xv = _mm512_set1_epi32(four);
      for (int j = 0; j < NT; j++) acc[m][j] = _mm512_dpbusd_epi32(acc[m][j], xv, wv[j]);
    }
  }
  for (int j = 0; j < NT; j++) {
    const int64_t n = n0 + j * 16;
    if (n >= N) break;
    const __mmask16 mask = N - n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (N - n)) - 1);
    const __m512i correction = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, rowsum + n), 7);
    for (int m = 0; m < MT; m++) _mm512_mask_storeu_epi32(out + m * N + n, mask, _mm512_sub_epi32(acc[m][j], correction));
  }
}

// Rows [0, M) against one column group of NT blocks, in tiles of up to MT rows.
template <int MT, int NT>
void packed_rows(const uint8_t* xu, int64_t M, int64_t stride, const int8_t* w, int64_t steps, int32_t* out, int64_t N, int64_t n0,
                 const int32_t* rowsum) {
  int64_t m = 0;
  for (; m + MT <= M; m += MT) packed_tile<MT, NT>(xu + m * stride, stride, w, steps, out + m * N, N, n0, rowsum);
  const uint8_t* x = xu + m * stride;
  int32_t* o = out + m * N;
  switch (M - m) {
    case 0: break;
    case 1: packed_tile<1, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    case 2: packed_tile<2, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    case 3: packed_tile<3, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    case 4: packed_tile<4, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    case 5: packed_tile<5, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    case 6: packed_tile<6, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
    default: packed_tile<7, NT>(x, stride, w, steps, o, N, n0, rowsum); break;
  }
}

template <int MT, int NT>
void packed_matmul(const uint8_t* xu, int64_t M, int64_t stride, const int8_t* w, int64_t blocks, int64_t steps, int32_t* out, int64_t N,
                   const int32_t* rowsum) {
  // a task is at least ~16 KB of weights: smaller ones cost more to hand out than to run
  const int64_t grain = std::max<int64_t>(1, 16384 / (NT * steps * 64));
  at::parallel_for(0, blocks / NT, grain, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; group++)
      packed_rows<MT, NT>(xu, M, stride, w + group * NT * steps * 64, steps, out, N, group * NT * 16, rowsum);
  });
}
#endif

}  // namespace

// x [M, K] int8 times a weight packed by pack_int8_weight: the exact int32 products [M, n], as
// torch._int_mm(x, w.t()) gives them. Why: up to a few dozen rows (decode steps) the packed
// layout streams the weights with no per-row reductions, 1.5x faster than reading them row by
// row for one row, and faster than oneDNN up to 64 rows (docs/benchmarks.md). `rowsum` is
// w.sum(1) (int32, n values).
Tensor int8_matmul_packed(const Tensor& x, const Tensor& packed, const Tensor& rowsum, int64_t n) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kInt8 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous 2-D int8 CPU tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == torch::kInt8 && packed.dim() == 4 && packed.is_contiguous() &&
                  packed.size(2) == 16 && packed.size(3) == 4 && packed.size(0) % (kPackColumns / 16) == 0,
              "packed must be a weight packed by pack_int8_weight, got ", packed.scalar_type(), " ", packed.sizes());
  const int64_t M = x.size(0), K = x.size(1), blocks = packed.size(0), steps = packed.size(1);
  TORCH_CHECK(steps == (K + 3) / 4, "packed holds rows of ", 4 * steps, " values (padded), x has ", K);
  TORCH_CHECK(n > blocks * 16 - kPackColumns && n <= blocks * 16, "n = ", n, " does not match the packed weight's ", blocks * 16, " columns");
  TORCH_CHECK(rowsum.scalar_type() == torch::kInt32 && rowsum.is_contiguous() && rowsum.numel() == n,
              "rowsum must be int32 with one value per column");
  Tensor out = torch::empty({M, n}, x.options().dtype(torch::kInt32));
#ifdef LABS_VNNI_512
  const int64_t stride = steps * 4;
  std::vector<uint8_t> shifted(M * stride, 128);  // the padding is x = 0, shifted
  const int8_t* xp = x.data_ptr<int8_t>();
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) shifted[m * stride + k] = static_cast<uint8_t>(xp[m * K + k] ^ 0x80);
  const int8_t* wp = packed.data_ptr<int8_t>();
  const int32_t* rs = rowsum.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  // measured: 4 rows x 4 blocks per tile up to 4 rows, 8 x 2 beyond (fewer registers spilled)
  if (M <= 4) {
    packed_matmul<4, 4>(shifted.data(), M, stride, wp, blocks, steps, op, n, rs);
  } else {
    packed_matmul<8, 2>(shifted.data(), M, stride, wp, blocks, steps, op, n, rs);
  }
#else
  TORCH_CHECK(false, "int8_matmul_packed needs AVX512-VNNI (packed_fast is false on this CPU)");
#endif
  return out;
}

// The exact int32 products of int8 activations x [M, K] and an int8 weight [N, K], by the fastest
// of three interchangeable paths (all exact integer sums, so the choice never changes a bit): the
// packed copy up to `packed_rows` rows, the row-major weight up to `few_rows` (VNNI builds), else
// oneDNN. The one place the choice is made, for the Python loop and DecodeStack alike.
Tensor int8_products(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& packed, const Tensor& rowsum,
                     int64_t packed_rows, int64_t few_rows) {
  const int64_t rows = x.size(0);
  if (packed && rows <= packed_rows) return int8_matmul_packed(x, *packed, rowsum, weight.size(0));
#ifdef LABS_VNNI_512
  if (rows <= few_rows) return int8_matmul_few_rows(x, weight, rowsum);
#else
  (void)few_rows;
#endif
  return at::_int_mm(x, weight.t());
}

// A fused int8 linear as the decoder layers hold it: the row-major weight [N, K], its packed copy
// (or none), each row's sum, the per-column scales and an optional bias.
struct Int8Linear {
  Tensor weight;
  std::optional<Tensor> packed;
  Tensor rowsum, scale;
  std::optional<Tensor> bias;
};

// The decoder layers of a decode-only step in one call: the same kernels, in the same order and
// on the same values, as FusedLlamaForward._layers_with_kernels runs them one Python call at a
// time, so every bit is the same; only the per-layer Python and dispatch (~30 us a layer, a
// tenth of a one-sequence step) is gone. The weights are handed over once; the caches and the
// decode buffer's per-layer views come with each step.
class DecodeStack {
 public:
  using LinearParts = std::tuple<Tensor, std::optional<Tensor>, Tensor, Tensor, std::optional<Tensor>>;

  DecodeStack(std::vector<Tensor> input_norms, std::vector<Tensor> post_norms, std::vector<double> scales,
              const std::vector<LinearParts>& linears, int64_t heads, int64_t kv_heads, int64_t head_dim, double eps,
              int64_t packed_rows, int64_t few_rows)
      : input_norms_(std::move(input_norms)), post_norms_(std::move(post_norms)), scales_(std::move(scales)), heads_(heads),
        kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), packed_rows_(packed_rows), few_rows_(few_rows) {
    const size_t layers = input_norms_.size();
    TORCH_CHECK(post_norms_.size() == layers && scales_.size() == layers && linears.size() == 4 * layers,
                "DecodeStack needs per layer: two norms, a scale and four linears (qkv, o, gate_up, down)");
    for (const LinearParts& parts : linears) {
      const auto& [weight, packed, rowsum, scale, bias] = parts;
      linears_.push_back({weight, packed, rowsum, scale, bias});
    }
  }

  int64_t num_layers() const { return static_cast<int64_t>(input_norms_.size()); }

  // hidden [T, H] (updated in place) through every layer; x, x_scale: the first layer's input,
  // RMSNorm(hidden) quantized. Every row is a decoding row (query row i attends to buffer row
  // buffer_rows[i], or i).
  void run(Tensor& hidden, const Tensor& x0, const Tensor& x_scale0, const Tensor& cos, const Tensor& sin_signed,
           const std::vector<Tensor>& key_cache, const std::vector<Tensor>& value_cache, const Tensor& slots,
           const std::vector<Tensor>& keys, const std::vector<Tensor>& values, const Tensor& lengths,
           const std::optional<Tensor>& buffer_rows) const {
    const int64_t layers = num_layers(), tokens = hidden.size(0);
    TORCH_CHECK(static_cast<int64_t>(key_cache.size()) == layers && static_cast<int64_t>(value_cache.size()) == layers &&
                    static_cast<int64_t>(keys.size()) == layers && static_cast<int64_t>(values.size()) == layers,
                "one cache and one decode-buffer tensor per layer");
    TORCH_CHECK(lengths.numel() == tokens, "a decode-only step has one length per row (", lengths.numel(), " for ", tokens, " rows)");
    const int64_t q_width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
    Tensor x = x0, x_scale = x_scale0;
    for (int64_t i = 0; i < layers; i++) {
      const Int8Linear& qkv_linear = linears_[4 * i];
      const Int8Linear& o_linear = linears_[4 * i + 1];
      const Int8Linear& gate_up_linear = linears_[4 * i + 2];
      const Int8Linear& down_linear = linears_[4 * i + 3];
      const Tensor qkv = dequantize_rotary(products(x, qkv_linear), x_scale, qkv_linear.scale, qkv_linear.bias, cos, sin_signed,
                                           heads_ + kv_heads_, head_dim_);
      const Tensor query = qkv.narrow(1, 0, q_width).view({tokens, heads_, head_dim_});
      const Tensor key = qkv.narrow(1, q_width, kv_width).view({tokens, kv_heads_, head_dim_});
      const Tensor value = qkv.narrow(1, q_width + kv_width, kv_width).view({tokens, kv_heads_, head_dim_});
      Tensor layer_keys = key_cache[i], layer_values = value_cache[i], buffer_keys = keys[i], buffer_values = values[i];
      store_pages(key, value, layer_keys, layer_values, slots);
      store_decode_rows(key, value, buffer_keys, buffer_values, lengths, buffer_rows);
      const Tensor attended = decode_attention(query, buffer_keys, buffer_values, lengths, scales_[i], buffer_rows);
      std::tie(x, x_scale) = quantize(attended.view({tokens, q_width}));
      std::tie(x, x_scale) = residual_rms_norm_quantize(products(x, o_linear), x_scale, o_linear.scale, o_linear.bias, hidden,
                                                        post_norms_[i], eps_);
      std::tie(x, x_scale) = silu_mul_quantize(products(x, gate_up_linear), x_scale, gate_up_linear.scale, gate_up_linear.bias);
      const Tensor down = products(x, down_linear);
      if (i + 1 < layers) {
        std::tie(x, x_scale) = residual_rms_norm_quantize(down, x_scale, down_linear.scale, down_linear.bias, hidden,
                                                          input_norms_[i + 1], eps_);
      } else {
        residual_add(down, x_scale, down_linear.scale, down_linear.bias, hidden);
      }
    }
  }

 private:
  Tensor products(const Tensor& x, const Int8Linear& linear) const {
    return int8_products(x, linear.weight, linear.packed, linear.rowsum, packed_rows_, few_rows_);
  }

  std::vector<Tensor> input_norms_, post_norms_;
  std::vector<double> scales_;
  std::vector<Int8Linear> linears_;
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  int64_t packed_rows_, few_rows_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "labs fused row kernels for the int8 CPU forward";
  // Released like torch's own operations, so the API's event loop runs while a kernel does.
  const auto without_gil = py::call_guard<py::gil_scoped_release>();
  m.def("rms_norm_quantize", &rms_norm_quantize, "RMSNorm(x) * weight, quantized per row", without_gil);
  m.def("quantize", &quantize, "x quantized per row", without_gil);
  m.def("dequantize_rotary", &dequantize_rotary, "int32 products to fp32, then rotary on the first heads", without_gil);
  m.def("dequantize", &dequantize, "int32 products to fp32", without_gil);
  m.def("residual_rms_norm_quantize", &residual_rms_norm_quantize, "hidden += products; RMSNorm(hidden) * weight quantized", without_gil);
  m.def("residual_add", &residual_add, "hidden += products", without_gil);
  m.def("silu_mul_quantize", &silu_mul_quantize, "SiLU(gate) * up quantized per row", without_gil);
  m.def("store_pages", &store_pages, "the step's keys and values into the paged cache", without_gil);
  m.def("store_decode_rows", &store_decode_rows, "the decoding rows' keys and values into the decode buffer", py::arg("key"), py::arg("value"),
        py::arg("keys"), py::arg("values"), py::arg("lengths"), py::arg("buffer_rows") = py::none(), without_gil);
  m.def("lora_update", &lora_update, "LoRA updates of the rows with an adapter, from int8 activations", without_gil);
  m.def("int8_matmul_few_rows", &int8_matmul_few_rows, "exact int32 x @ w.T for a few rows, bound by reading w", without_gil);
  m.def("int8_products", &int8_products, "exact int32 x @ weight.T by the fastest path for its rows", py::arg("x"), py::arg("weight"),
        py::arg("packed"), py::arg("rowsum"), py::arg("packed_rows"), py::arg("few_rows"), without_gil);
  m.def("pack_int8_weight", &pack_int8_weight, "an int8 [N, K] weight in int8_matmul_packed's layout", without_gil);
  m.def("int8_matmul_packed", &int8_matmul_packed, "exact int32 x @ w.T from a packed weight", py::arg("x"), py::arg("packed"),
        py::arg("rowsum"), py::arg("n"), without_gil);
#ifdef LABS_VNNI_512
  m.attr("few_rows_fast") = true;
  m.attr("packed_fast") = true;
#else
  m.attr("few_rows_fast") = false;  // the portable loop: correct, but oneDNN's is faster
  m.attr("packed_fast") = false;  // int8_matmul_packed refuses: there is no portable packed loop
#endif
  py::class_<DecodeStack>(m, "DecodeStack", "the decoder layers of a decode-only step in one call")
      .def(py::init<std::vector<Tensor>, std::vector<Tensor>, std::vector<double>, const std::vector<DecodeStack::LinearParts>&, int64_t,
                    int64_t, int64_t, double, int64_t, int64_t>(),
           py::arg("input_norms"), py::arg("post_norms"), py::arg("scales"), py::arg("linears"), py::arg("heads"), py::arg("kv_heads"),
           py::arg("head_dim"), py::arg("eps"), py::arg("packed_rows"), py::arg("few_rows"))
      .def_property_readonly("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run, "hidden through every layer, in place", py::arg("hidden"), py::arg("x"), py::arg("x_scale"),
           py::arg("cos"), py::arg("sin_signed"), py::arg("key_cache"), py::arg("value_cache"), py::arg("slots"), py::arg("keys"),
           py::arg("values"), py::arg("lengths"), py::arg("buffer_rows") = py::none(), without_gil);
  m.def("decode_attention", &decode_attention, "decode attention over the dense decode buffer, batch-invariant", py::arg("q"), py::arg("keys"),
        py::arg("values"), py::arg("lengths"), py::arg("scale"), py::arg("buffer_rows") = py::none(), without_gil);
}
