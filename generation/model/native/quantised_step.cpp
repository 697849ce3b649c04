// One decoding step of a Llama-architecture model with int8 / int4 weights, in C++: every step
// of an int4 model, the steps of few rows of an int8 one.
//
// A step of one row of the default model on the CPU spends a large share of its time in the
// ~35 small tensor operations per layer around the weight kernels (norms, rotation, attention,
// casts, residual adds), each a few microseconds of dispatch for a few hundred numbers. Here
// those are plain loops over the rows (the norm writes the kernel's bf16 input directly, the
// rotation writes the cache, attention is a dot product per cached column), and only the weight
// kernels are torch's own (`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`), called once
// per projection for all the rows; or, for an int4 model's many rows, oneDNN's product with its
// bf16 copy of the weights (`wide`), as generation/model/quantize.py does.
//
// The arithmetic is transformers' in fp32 (see generation/model/llama_step.py), in another order of
// summation: a row's numbers can differ from the Python step's by float rounding.
// generation/model/native_step.py builds and calls it; tests/generation/model/test_native_step.py.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "int4_rows.h"

namespace {

using at::BFloat16;

constexpr int64_t kGroup = 32;  // inputs per int4 scale and zero (generation/model/quantize.py GROUP)

struct Projection {
  int64_t bits;       // 4 or 8
  at::Tensor weight;  // the packed int4 layout, or int8 [out, in]
  at::Tensor scales;  // int4: [groups, out, 2] scales and zeros; int8: [out]
  std::vector<at::Tensor> wide;  // the same weights in bf16 laid out for oneDNN, per part
};

// generation/model/bf16_products.py `bf16_matmul`: oneDNN's product with weights it laid out once.
at::Tensor bf16_product(const at::Tensor& input, const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, std::string_view,
                                         c10::List<std::optional<at::Scalar>>,
                                         std::optional<std::string_view>)>();
  return op.call(input, weight, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(),
                 std::nullopt);
}

// `input` (bf16 [rows, in]) times the weights, bf16 [rows, out]: the int kernel, or for many rows
// (`wide`) the bf16 weights where the budget gave this projection its bf16 copy (part by part
// side by side), else int4 weights widened as they are multiplied (int4_rows.h) where the CPU
// has that kernel.
at::Tensor multiply(const Projection& p, const at::Tensor& input, bool wide) {
  if (wide && !p.wide.empty()) {
    if (p.wide.size() == 1) return bf16_product(input, p.wide[0]);
    std::vector<at::Tensor> parts;
    for (const at::Tensor& part : p.wide) parts.push_back(bf16_product(input, part));
    return at::cat(parts, 1);
  }
  if (p.bits == 4 && wide && muse::int4_rows_available())
    return muse::int4_rows(input, p.weight, p.scales);
  if (p.bits == 4) return at::_weight_int4pack_mm_for_cpu(input, p.weight, kGroup, p.scales);
  return at::_weight_int8pack_mm(input, p.weight, p.scales);
}

// Sums in kLanes partial sums, so the compiler can use vector registers (a float sum in one
// order cannot be reordered without -ffast-math).
constexpr int64_t kLanes = 16;

float dot(const float* a, const float* b, int64_t n) {
  float partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t lane = 0; lane < kLanes; ++lane) partial[lane] += a[i + lane] * b[i + lane];
  float total = 0.0f;
  for (; i < n; ++i) total += a[i] * b[i];
  for (int64_t lane = 0; lane < kLanes; ++lane) total += partial[lane];
  return total;
}

// transformers' LlamaRMSNorm of fp32 `x`: weight * (x * rsqrt(mean(x²) + eps)), as bf16.
void rms_norm(const float* x, const float* weight, int64_t n, float eps, BFloat16* out) {
  const float squares = dot(x, x, n);
  const float scale = 1.0f / std::sqrt(squares / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = BFloat16(weight[i] * (x[i] * scale));
}

void add_bf16(float* x, const BFloat16* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += static_cast<float>(y[i]);
}

class QuantisedStep {
 public:
  QuantisedStep(int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate,
              double eps, std::vector<double> scaling, std::vector<at::Tensor> norms,
              std::vector<int64_t> bits, std::vector<at::Tensor> weights,
              std::vector<at::Tensor> scales, std::vector<std::vector<at::Tensor>> wide,
              at::Tensor final_norm)
      : heads_(heads),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        intermediate_(intermediate),
        eps_(static_cast<float>(eps)),
        scaling_(std::move(scaling)),
        norms_(std::move(norms)),
        final_norm_(std::move(final_norm)) {
    TORCH_CHECK(bits.size() == weights.size() && bits.size() == scales.size() &&
                bits.size() == wide.size());
    layers_ = static_cast<int64_t>(scaling_.size());
    TORCH_CHECK(static_cast<int64_t>(bits.size()) == 4 * layers_ + 1,
                "four projections per layer and the head");
    TORCH_CHECK(static_cast<int64_t>(norms_.size()) == 2 * layers_, "two norms per layer");
    for (size_t i = 0; i < bits.size(); ++i) {
      TORCH_CHECK(bits[i] == 4 || bits[i] == 8, "int4 or int8 weights only");
      projections_.push_back({bits[i], weights[i], scales[i], wide[i]});
      has_wide_ = has_wide_ || !wide[i].empty();
      has_int4_ = has_int4_ || bits[i] == 4;
    }
    hidden_ = final_norm_.numel();
  }

  // Whether some projection has bf16 weights (an int4 model's), for `step(..., wide=true)`.
  bool has_wide() const { return has_wide_; }

  // Whether `step(..., wide=true)` has a product for many rows: some projection's bf16 copy, or
  // int4 weights and the CPU's kernel for many rows of them (int4_rows.h).
  bool takes_many_rows() const {
    return has_wide_ || (has_int4_ && muse::int4_rows_available());
  }

  // `x` fp32 [rows, hidden]: each row's new token's embedding; `cos` / `signed_sin` fp32
  // [rows, head_dim] of its position (see rotate); `allowed`: empty (every column seen), or
  // uint8 [rows, used + 1] (0: a padding column that row's query does not see); the rooms:
  // fp32 [rows, kv_heads, room, head_dim] per layer, with room beyond `used` columns. Writes
  // the new column at `used` in every layer; returns the logits, fp32 [rows, vocab]. `wide`:
  // the products on the bf16 weights (an int4 model's many rows), not the int kernels.
  at::Tensor step(at::Tensor x, const at::Tensor& cos, const at::Tensor& signed_sin,
                  const at::Tensor& allowed, const std::vector<at::Tensor>& key_rooms,
                  const std::vector<at::Tensor>& value_rooms, int64_t used, bool wide) {
    TORCH_CHECK(!wide || takes_many_rows(), "no product for many rows");
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2 &&
                x.size(1) == hidden_);
    const int64_t rows = x.size(0), width = (heads_ + kv_heads_) * head_dim_;  // rotated
    TORCH_CHECK(cos.is_contiguous() && signed_sin.is_contiguous() &&
                cos.numel() == rows * head_dim_ && signed_sin.numel() == rows * head_dim_);
    TORCH_CHECK(allowed.numel() == 0 || (allowed.is_contiguous() && allowed.dim() == 2 &&
                                         allowed.size(0) == rows && allowed.size(1) == used + 1));
    TORCH_CHECK(static_cast<int64_t>(key_rooms.size()) == layers_ &&
                static_cast<int64_t>(value_rooms.size()) == layers_);
    for (int64_t layer = 0; layer < layers_; ++layer)
      check_rooms(key_rooms[layer], value_rooms[layer], rows, used);
    x = x.clone();
    float* residual = x.data_ptr<float>();
    const auto bf16 = x.options().dtype(at::kBFloat16);
    at::Tensor normed = at::empty({rows, hidden_}, bf16);
    at::Tensor attended = at::empty({rows, heads_ * head_dim_}, bf16);
    at::Tensor gated = at::empty({rows, intermediate_}, bf16);
    std::vector<float> rotated(rows * width);
    const uint8_t* mask = allowed.numel() ? allowed.data_ptr<uint8_t>() : nullptr;
    for (int64_t layer = 0; layer < layers_; ++layer) {
      const Projection* p = &projections_[4 * layer];
      norm_rows(residual, norms_[2 * layer], rows, normed);
      at::Tensor qkv = multiply(p[0], normed, wide);
      const BFloat16* projected = qkv.data_ptr<BFloat16>();
      for (int64_t row = 0; row < rows; ++row) {
        const BFloat16* own = projected + row * qkv.size(1);  // queries, keys, values
        rotate(own, cos.data_ptr<float>() + row * head_dim_,
               signed_sin.data_ptr<float>() + row * head_dim_, rotated.data() + row * width);
        store(own, rotated.data() + row * width, key_rooms[layer], value_rooms[layer], row, used);
      }
      attend(rotated.data(), key_rooms[layer], value_rooms[layer], rows, used, mask,
             static_cast<float>(scaling_[layer]), attended.data_ptr<BFloat16>());
      add_bf16(residual, multiply(p[1], attended, wide).data_ptr<BFloat16>(), rows * hidden_);
      norm_rows(residual, norms_[2 * layer + 1], rows, normed);
      silu_times(multiply(p[2], normed, wide).data_ptr<BFloat16>(), rows,
                 gated.data_ptr<BFloat16>());
      add_bf16(residual, multiply(p[3], gated, wide).data_ptr<BFloat16>(), rows * hidden_);
    }
    norm_rows(residual, final_norm_, rows, normed);
    return multiply(projections_.back(), normed, wide).to(at::kFloat);
  }

 private:
  void norm_rows(const float* residual, const at::Tensor& weight, int64_t rows,
                 at::Tensor& out) const {
    BFloat16* o = out.data_ptr<BFloat16>();
    for (int64_t row = 0; row < rows; ++row)
      rms_norm(residual + row * hidden_, weight.data_ptr<float>(), hidden_, eps_,
               o + row * hidden_);
  }

  void check_rooms(const at::Tensor& keys, const at::Tensor& values, int64_t rows,
                   int64_t used) const {
    for (const at::Tensor* room : {&keys, &values}) {
      TORCH_CHECK(room->scalar_type() == at::kFloat && room->dim() == 4 &&
                      room->size(0) == rows && room->size(1) == kv_heads_ &&
                      room->size(2) > used && room->size(3) == head_dim_ && room->stride(3) == 1,
                  "fp32 rooms [rows, kv heads, more than used columns, head dim]");
    }
  }

  // Queries and keys (the first heads + kv_heads heads of a row's `qkv`) rotated, in fp32:
  // x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1), that is x * cos + (x2, x1)
  // * `signed_sin`, signed_sin = (-sin1, sin2) (as generation/model/llama_step.py has it).
  void rotate(const BFloat16* qkv, const float* cos, const float* signed_sin, float* out) const {
    const int64_t half = head_dim_ / 2;
    for (int64_t head = 0; head < heads_ + kv_heads_; ++head) {
      const BFloat16* in = qkv + head * head_dim_;
      float* o = out + head * head_dim_;
      for (int64_t i = 0; i < half; ++i) {
        const float a = in[i], b = in[i + half];
        o[i] = a * cos[i] + b * signed_sin[i];
        o[i + half] = b * cos[i + half] + a * signed_sin[i + half];
      }
    }
  }

  // A row's new key (rotated) and value (widened) into column `used` of the layer's rooms.
  void store(const BFloat16* qkv, const float* rotated, const at::Tensor& keys,
             const at::Tensor& values, int64_t row, int64_t used) const {
    const float* new_keys = rotated + heads_ * head_dim_;
    const BFloat16* new_values = qkv + (heads_ + kv_heads_) * head_dim_;
    float* k = keys.data_ptr<float>() + row * keys.stride(0) + used * keys.stride(2);
    float* v = values.data_ptr<float>() + row * values.stride(0) + used * values.stride(2);
    for (int64_t head = 0; head < kv_heads_; ++head) {
      float* kc = k + head * keys.stride(1);
      float* vc = v + head * values.stride(1);
      for (int64_t i = 0; i < head_dim_; ++i) {
        kc[i] = new_keys[head * head_dim_ + i];
        vc[i] = static_cast<float>(new_values[head * head_dim_ + i]);
      }
    }
  }

  // softmax(q·k * scaling) · v over the `used + 1` cached columns each row's query may see,
  // per query head (query head h reads key/value head h / groups), into `out` as bf16.
  void attend(const float* rotated, const at::Tensor& keys, const at::Tensor& values,
              int64_t rows, int64_t used, const uint8_t* mask, float scaling,
              BFloat16* out) const {
    const int64_t columns = used + 1, groups = heads_ / kv_heads_;
    const int64_t width = (heads_ + kv_heads_) * head_dim_;
    const float* k = keys.data_ptr<float>();
    const float* v = values.data_ptr<float>();
    // Short contexts on one thread: waking the other costs more than the work.
    const int64_t tasks = rows * heads_;
    const int64_t grain = columns * head_dim_ * heads_ >= 32768 ? 1 : tasks;
    at::parallel_for(0, tasks, grain, [&](int64_t first, int64_t last) {
      std::vector<float> scores(columns);
      std::vector<float> sum(head_dim_);
      for (int64_t task = first; task < last; ++task) {
        const int64_t row = task / heads_, head = task % heads_;
        const uint8_t* seen = mask ? mask + row * columns : nullptr;
        const float* q = rotated + row * width + head * head_dim_;
        const float* kh = k + row * keys.stride(0) + (head / groups) * keys.stride(1);
        const float* vh = v + row * values.stride(0) + (head / groups) * values.stride(1);
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < columns; ++t) {
          if (seen && !seen[t]) continue;
          scores[t] = dot(q, kh + t * keys.stride(2), head_dim_) * scaling;
          top = std::max(top, scores[t]);
        }
        float total = 0.0f;
        std::fill(sum.begin(), sum.end(), 0.0f);
        for (int64_t t = 0; t < columns; ++t) {
          if (seen && !seen[t]) continue;
          const float weight = std::exp(scores[t] - top);
          total += weight;
          const float* vt = vh + t * values.stride(2);
          for (int64_t i = 0; i < head_dim_; ++i) sum[i] += weight * vt[i];
        }
        BFloat16* o = out + row * heads_ * head_dim_ + head * head_dim_;
        for (int64_t i = 0; i < head_dim_; ++i) o[i] = BFloat16(sum[i] / total);
      }
    });
  }

  // silu(gate) * up of each row's gate/up product (bf16, widened as the model's forward does).
  void silu_times(const BFloat16* gate_up, int64_t rows, BFloat16* out) const {
    for (int64_t row = 0; row < rows; ++row) {
      const BFloat16* g = gate_up + row * 2 * intermediate_;
      BFloat16* o = out + row * intermediate_;
      for (int64_t i = 0; i < intermediate_; ++i) {
        const float gate = g[i], up = g[intermediate_ + i];
        o[i] = BFloat16(gate / (1.0f + std::exp(-gate)) * up);
      }
    }
  }

  bool has_wide_ = false, has_int4_ = false;
  int64_t heads_, kv_heads_, head_dim_, intermediate_, hidden_ = 0, layers_ = 0;
  float eps_;
  std::vector<double> scaling_;
  std::vector<at::Tensor> norms_;
  at::Tensor final_norm_;
  std::vector<Projection> projections_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<QuantisedStep>(m, "QuantisedStep")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, double, std::vector<double>,
                          std::vector<at::Tensor>, std::vector<int64_t>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<std::vector<at::Tensor>>,
                          at::Tensor>())
      .def_property_readonly("has_wide", [](const QuantisedStep& s) { return s.has_wide(); })
      .def_property_readonly("takes_many_rows",
                              [](const QuantisedStep& s) { return s.takes_many_rows(); })
      .def("step", &QuantisedStep::step, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("int4_rows_available", &muse::int4_rows_available);
  m.def("int4_rows_kind", &muse::int4_rows_kind);
  m.def("int4_rows", &muse::int4_rows, pybind11::call_guard<pybind11::gil_scoped_release>());
}
