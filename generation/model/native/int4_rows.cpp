// Many rows times int4 weights without a bf16 copy of them: AMX's tiles, AVX512-VNNI, or
// AVX512-BF16.
//
// torch's int4 kernel is compute-bound from a few rows on (its cost grows with every row), so an
// int4 model multiplied many rows (prefills, steps of many requests) with a bf16 copy of its
// weights, which the memory budget may not hold (generation/model/memory.py). Here each block
// of 64 outputs is widened to bf16 a chunk of inputs at a time, into a buffer that stays in the
// core's cache, laid out as AMX's tile product reads it, and multiplied for all the rows
// there: the widening costs about one row's int4 product, the rows cost little more each
// (figures: benchmarks/README.md, "Kernels").
//
// The widened weights are the bf16 copy's numbers ((q - 8) * scale + zero in fp32, rounded
// once: the product of a 4-bit level and a bf16 scale is exact, so the fused multiply-add
// rounds as the copy's multiply then add do); the sums run in fp32 in a fixed order for each
// row, so a row's result does not depend on how many rows share the call.
//
// Three ways, the first this CPU has (`int4_rows_kind()`):
// - AMX's tile product (16 rows at a time) of the widened block;
// - AVX512-VNNI, without widening: each row's inputs are rounded to 16-bit integers, a scale per
//   group of 32, split in two bytes, and VNNI's 8-bit products sum levels times inputs exactly
//   in int32; the weights' scale, zero and the inputs' scale are applied once a group. Its
//   numbers are the int4 weights' own (not rounded to bf16 as the copy's) times inputs held to
//   16 bits; the logits stay as close to fp32's as the copy's. On a Xeon without AMX's help it
//   measured faster than the copy (and than torch's int4 kernel from one row), so where it
//   runs an int4 model keeps no copy for many rows either (generation/model/memory.py);
// - AVX512-BF16's dot products of the widened block (6 rows x 64 outputs in registers), as
//   slow as the copy: a CPU with only this way keeps its copy where the budget holds it.
// MUSE_INT4_ROWS: `0` none, `vnni` / `avx512` the second / third even where a faster one runs
// (for tests and benchmarks). Built only where the compiler targets AVX512-BF16 (`-march=native`
// on such a CPU); elsewhere `int4_rows_available()` is false and the callers keep torch's
// kernel or the copy. Figures: benchmarks/README.md, "Kernels".

#include "int4_rows.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define MUSE_INT4_ROWS 1
#include <immintrin.h>
#if defined(__AVX512VNNI__)
#define MUSE_INT4_VNNI 1
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define MUSE_INT4_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace muse {

#ifdef MUSE_INT4_ROWS
namespace {

using at::BFloat16;

constexpr int64_t kGroup = 32;   // inputs per scale and zero (generation/model/quantize.py GROUP)
constexpr int64_t kBlock = 64;   // outputs per block of the packed layout (quantize.py BLOCK)
constexpr int64_t kChunk = 256;  // inputs widened at a time: 64 outputs x 256 bf16, 32 KiB
constexpr int kTileRows = 16;    // rows per AMX tile
constexpr int kVectorRows = 6;   // rows per AVX512-BF16 pass: 6 x 4 sums, 24 of the 32 registers
constexpr int64_t kPairStride = 4 * 64;  // bytes from one input pair's widened outputs to the next

enum class Kind { kNone, kVector, kVnni, kAmx };

#ifdef MUSE_INT4_AMX
// Linux lends AMX's tile state only to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); torch's oneDNN asks as well, and asking twice is harmless.
constexpr int kRequestPermission = 0x1023;
constexpr int kTileData = 18;

bool permitted() {
  static const bool allowed = syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  return allowed;
}

// AMX's tile configuration (palette 1): tiles 0-3 the sums of `rows` rows for four 16-output
// slices, tile 4 the rows' inputs, tiles 5-7 widened weights (16 input pairs x 16 outputs).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

void configure(int rows) {
  TileConfig config;
  for (int tile = 0; tile < 8; ++tile) {
    config.bytes_per_row[tile] = 64;
    config.rows[tile] = tile < 5 ? rows : 16;
  }
  _tile_loadconfig(&config);
}
#endif

// One block's inputs [k0, k0 + count) widened into `out`, as AMX's bf16 product reads its
// second operand: for each pair of inputs, four 64-byte rows (outputs 0-15, 16-31, 32-47,
// 48-63), each output's two weights side by side. The packed block holds, for each input, a
// byte per pair of outputs j and j + 32 (low and high four bits).
void widen(const uint8_t* block, const BFloat16* scales, int64_t outs, int64_t first_out,
           int64_t k0, int64_t count, __m512i* out) {
  const __m512 levels = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t group = k0 / kGroup; group < (k0 + count) / kGroup; ++group) {
    // Each output's scale and zero, twice (for its two inputs of a pair): outputs 8v to 8v + 7.
    __m512 scale[8], zero[8];
    const auto* pairs = reinterpret_cast<const __m256i*>(scales + (group * outs + first_out) * 2);
    for (int v = 0; v < 8; ++v) {
      const __m512i both =
          _mm512_permutexvar_epi32(twice, _mm512_castsi256_si512(_mm256_loadu_si256(pairs + v)));
      scale[v] = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
      zero[v] = _mm512_castsi512_ps(_mm512_and_si512(both, high_half));
    }
    for (int64_t k = group * kGroup; k < (group + 1) * kGroup; k += 2) {
      const auto* bytes = reinterpret_cast<const __m256i*>(block + k * 32);
      // The two inputs' bytes side by side: outputs 0-7 and 16-23 (low), 8-15 and 24-31 (high).
      const __m256i first = _mm256_loadu_si256(bytes), second = _mm256_loadu_si256(bytes + 1);
      const __m256i low = _mm256_unpacklo_epi8(first, second);
      const __m256i high = _mm256_unpackhi_epi8(first, second);
      const __m512i part[4] = {
          _mm512_cvtepu8_epi32(_mm256_castsi256_si128(low)),    // outputs 0-7 (and 32-39)
          _mm512_cvtepu8_epi32(_mm256_castsi256_si128(high)),   // 8-15 (40-47)
          _mm512_cvtepu8_epi32(_mm256_extracti128_si256(low, 1)),   // 16-23 (48-55)
          _mm512_cvtepu8_epi32(_mm256_extracti128_si256(high, 1)),  // 24-31 (56-63)
      };
      __m512 weight[8];
      for (int v = 0; v < 4; ++v) {
        // vpermps reads an index's low four bits: the low level as it is, the high one shifted.
        weight[v] = _mm512_fmadd_ps(_mm512_permutexvar_ps(part[v], levels), scale[v], zero[v]);
        weight[v + 4] = _mm512_fmadd_ps(
            _mm512_permutexvar_ps(_mm512_srli_epi32(part[v], 4), levels), scale[v + 4],
            zero[v + 4]);
      }
      __m512i* row = out + (k - k0) / 2 * 4;
      for (int v = 0; v < 4; ++v)
        row[v] = (__m512i)_mm512_cvtne2ps_pbh(weight[2 * v + 1], weight[2 * v]);
    }
  }
}

#ifdef MUSE_INT4_AMX
// Up to 16 rows' sums for one block over one chunk, from `sums` (fp32 [rows, 64]) or zero.
void multiply_chunk(const BFloat16* x, int64_t in, int64_t k0, int64_t count, const char* widened,
                    float* sums, bool first) {
  if (first) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  } else {
    _tile_loadd(0, sums, 256); _tile_loadd(1, sums + 16, 256);
    _tile_loadd(2, sums + 32, 256); _tile_loadd(3, sums + 48, 256);
  }
  for (int64_t k = 0; k < count; k += 32) {
    _tile_loadd(4, x + k0 + k, in * 2);
    const char* pairs = widened + (k / 2) * kPairStride;
    _tile_loadd(5, pairs, kPairStride); _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, pairs + 64, kPairStride); _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(7, pairs + 128, kPairStride); _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, pairs + 192, kPairStride); _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, sums, 256); _tile_stored(1, sums + 16, 256);
  _tile_stored(2, sums + 32, 256); _tile_stored(3, sums + 48, 256);
}
#endif

// `Rows` rows' sums for one block over one chunk with AVX512-BF16, from `sums` or zero.
template <int Rows>
void multiply_rows(const BFloat16* x, int64_t in, int64_t k0, int64_t count,
                   const __m512i* widened, float* sums, bool first) {
  __m512 sum[Rows][4];
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < 4; ++v)
      sum[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(sums + r * kBlock + v * 16);
  const int32_t* pairs[Rows];  // each row's inputs two by two, as one 32-bit number
  for (int r = 0; r < Rows; ++r) pairs[r] = reinterpret_cast<const int32_t*>(x + r * in + k0);
  for (int64_t p = 0; p < count / 2; ++p) {
    const __m512bh w0 = (__m512bh)widened[p * 4], w1 = (__m512bh)widened[p * 4 + 1];
    const __m512bh w2 = (__m512bh)widened[p * 4 + 2], w3 = (__m512bh)widened[p * 4 + 3];
    for (int r = 0; r < Rows; ++r) {
      const __m512bh both = (__m512bh)_mm512_set1_epi32(pairs[r][p]);
      sum[r][0] = _mm512_dpbf16_ps(sum[r][0], both, w0);
      sum[r][1] = _mm512_dpbf16_ps(sum[r][1], both, w1);
      sum[r][2] = _mm512_dpbf16_ps(sum[r][2], both, w2);
      sum[r][3] = _mm512_dpbf16_ps(sum[r][3], both, w3);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(sums + r * kBlock + v * 16, sum[r][v]);
}

void multiply_vectors(const BFloat16* x, int64_t rows, int64_t in, int64_t k0, int64_t count,
                      const __m512i* widened, float* sums, bool first) {
  int64_t r = 0;
  for (; r + kVectorRows <= rows; r += kVectorRows)
    multiply_rows<kVectorRows>(x + r * in, in, k0, count, widened, sums + r * kBlock, first);
  const BFloat16* rest = x + r * in;
  float* rest_sums = sums + r * kBlock;
  switch (rows - r) {
    case 1: multiply_rows<1>(rest, in, k0, count, widened, rest_sums, first); break;
    case 2: multiply_rows<2>(rest, in, k0, count, widened, rest_sums, first); break;
    case 3: multiply_rows<3>(rest, in, k0, count, widened, rest_sums, first); break;
    case 4: multiply_rows<4>(rest, in, k0, count, widened, rest_sums, first); break;
    case 5: multiply_rows<5>(rest, in, k0, count, widened, rest_sums, first); break;
    default: break;
  }
}

#ifdef MUSE_INT4_VNNI
constexpr int kVnniRows = 3;  // rows per VNNI pass: 3 x 2 x 4 integer sums, 4 weight vectors
constexpr float kInputLevels = 127 * 256 + 127;  // the largest 16-bit input both halves hold

// The rows' inputs as 16-bit integers, each group of 32 with its own scale, split in two bytes
// for VNNI's 8-bit product: x / scale = 256 * high + low, both in [-128, 127]. (Rounding them
// to 8 bits, as llama.cpp's Q8 blocks do, measured twice the int4 weights' error in the default
// model's logits: benchmarks/README.md, "Decisions".) `high`, `low` [rows, in]; `scale` and
// `offset` (scale x the group's sum) [rows, groups].
struct QuantisedRows {
  std::vector<int8_t> high, low;
  std::vector<float> scale, offset;
};

__m512 widen_bf16(__m256i half) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

QuantisedRows quantise_rows(const BFloat16* x, int64_t rows, int64_t in) {
  const int64_t groups = rows * (in / kGroup);
  QuantisedRows q{std::vector<int8_t>(rows * in), std::vector<int8_t>(rows * in),
                  std::vector<float>(groups), std::vector<float>(groups)};
  const __m512i half_step = _mm512_set1_epi32(128);
  at::parallel_for(0, groups, 256, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {  // a row's groups are contiguous, rows too
      const auto* group = reinterpret_cast<const __m256i*>(x + i * kGroup);
      const __m512 values[2] = {widen_bf16(_mm256_loadu_si256(group)),
                                widen_bf16(_mm256_loadu_si256(group + 1))};
      const float largest = std::max(_mm512_reduce_max_ps(_mm512_abs_ps(values[0])),
                                     _mm512_reduce_max_ps(_mm512_abs_ps(values[1])));
      const __m512 inverse = _mm512_set1_ps(largest > 0 ? kInputLevels / largest : 0.0f);
      __m512i total = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m512i level = _mm512_cvtps_epi32(_mm512_mul_ps(values[h], inverse));
        const __m512i high = _mm512_srai_epi32(_mm512_add_epi32(level, half_step), 8);
        const __m512i low = _mm512_sub_epi32(level, _mm512_slli_epi32(high, 8));
        const int64_t at = i * kGroup + h * 16;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.high.data() + at), _mm512_cvtepi32_epi8(high));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.low.data() + at), _mm512_cvtepi32_epi8(low));
        total = _mm512_add_epi32(total, level);
      }
      q.scale[i] = largest / kInputLevels;
      q.offset[i] = q.scale[i] * static_cast<float>(_mm512_reduce_add_epi32(total));
    }
  });
  return q;
}

// One block's inputs [k0, k0 + count) as VNNI's product reads them: for each four inputs, four
// 64-byte vectors of 16 outputs, each output's four 4-bit levels as four bytes. The outputs come
// in the order the byte interleaves leave them: 0-3, 16-19, 4-7, 20-23; 8-11, 24-27, 12-15,
// 28-31; then those plus 32 (the high four bits). Scales follow it, the sums are put back.
void unpack(const uint8_t* block, int64_t k0, int64_t count, __m512i* out) {
  const __m512i low_bits = _mm512_set1_epi8(0x0F);
  for (int64_t k = k0; k < k0 + count; k += 4) {
    const auto* bytes = reinterpret_cast<const __m256i*>(block + k * 32);
    const __m256i r0 = _mm256_loadu_si256(bytes), r1 = _mm256_loadu_si256(bytes + 1);
    const __m256i r2 = _mm256_loadu_si256(bytes + 2), r3 = _mm256_loadu_si256(bytes + 3);
    const __m256i a_low = _mm256_unpacklo_epi8(r0, r1), a_high = _mm256_unpackhi_epi8(r0, r1);
    const __m256i b_low = _mm256_unpacklo_epi8(r2, r3), b_high = _mm256_unpackhi_epi8(r2, r3);
    const __m512i first = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_unpacklo_epi16(a_low, b_low)),
        _mm256_unpackhi_epi16(a_low, b_low), 1);
    const __m512i second = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_unpacklo_epi16(a_high, b_high)),
        _mm256_unpackhi_epi16(a_high, b_high), 1);
    __m512i* quad = out + (k - k0);  // four vectors a quad: (k - k0) / 4 * 4
    quad[0] = _mm512_and_si512(first, low_bits);
    quad[1] = _mm512_and_si512(second, low_bits);
    quad[2] = _mm512_and_si512(_mm512_srli_epi16(first, 4), low_bits);
    quad[3] = _mm512_and_si512(_mm512_srli_epi16(second, 4), low_bits);
  }
}

// A group's scales and the weights' value at level 0 ((0 - 8) * scale + zero) for the block's
// outputs, in the unpacked order.
void group_scales(const BFloat16* scales, int64_t outs, int64_t first_out, int64_t group,
                  __m512 scale[4], __m512 base[4]) {
  // Output o of the vector pair (0-15, 16-31) goes to the unpacked order's place of o.
  const __m512i first_half =
      _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second_half =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const auto* pairs = reinterpret_cast<const __m512i*>(scales + (group * outs + first_out) * 2);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512i low = _mm512_loadu_si512(pairs), mid = _mm512_loadu_si512(pairs + 1);
  const __m512i upper = _mm512_loadu_si512(pairs + 2), top = _mm512_loadu_si512(pairs + 3);
  const __m512i both[4] = {
      _mm512_permutex2var_epi32(low, first_half, mid),
      _mm512_permutex2var_epi32(low, second_half, mid),
      _mm512_permutex2var_epi32(upper, first_half, top),
      _mm512_permutex2var_epi32(upper, second_half, top),
  };
  for (int v = 0; v < 4; ++v) {
    scale[v] = _mm512_castsi512_ps(_mm512_slli_epi32(both[v], 16));
    const __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(both[v], high_half));
    base[v] = _mm512_fmadd_ps(scale[v], _mm512_set1_ps(-8.0f), zero);
  }
}

// `Rows` rows' sums (fp32 [Rows, 64], in the unpacked order) plus one group of 32 inputs.
template <int Rows>
void multiply_group(const QuantisedRows& q, int64_t in, int64_t row, int64_t k,
                    const __m512i* quads, const __m512 scale[4], const __m512 base[4],
                    float* sums) {
  __m512i high[Rows][4], low[Rows][4];
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < 4; ++v) high[r][v] = low[r][v] = _mm512_setzero_si512();
  const int64_t first = row * in + k;
  for (int p = 0; p < kGroup / 4; ++p) {
    const __m512i w0 = quads[p * 4], w1 = quads[p * 4 + 1];
    const __m512i w2 = quads[p * 4 + 2], w3 = quads[p * 4 + 3];
    for (int r = 0; r < Rows; ++r) {
      int32_t four[2];
      std::memcpy(&four[0], q.high.data() + first + r * in + p * 4, 4);
      std::memcpy(&four[1], q.low.data() + first + r * in + p * 4, 4);
      const __m512i x = _mm512_set1_epi32(four[0]), y = _mm512_set1_epi32(four[1]);
      high[r][0] = _mm512_dpbusd_epi32(high[r][0], w0, x);
      high[r][1] = _mm512_dpbusd_epi32(high[r][1], w1, x);
      high[r][2] = _mm512_dpbusd_epi32(high[r][2], w2, x);
      high[r][3] = _mm512_dpbusd_epi32(high[r][3], w3, x);
      low[r][0] = _mm512_dpbusd_epi32(low[r][0], w0, y);
      low[r][1] = _mm512_dpbusd_epi32(low[r][1], w1, y);
      low[r][2] = _mm512_dpbusd_epi32(low[r][2], w2, y);
      low[r][3] = _mm512_dpbusd_epi32(low[r][3], w3, y);
    }
  }
  const int64_t groups = in / kGroup, group = first / kGroup;
  for (int r = 0; r < Rows; ++r) {
    const __m512 row_scale = _mm512_set1_ps(q.scale[group + r * groups]);
    const __m512 offset = _mm512_set1_ps(q.offset[group + r * groups]);
    for (int v = 0; v < 4; ++v) {
      float* sum = sums + r * kBlock + v * 16;
      // sum(levels * inputs) exactly: at most 15 x 32639 x 32 < 2^24, so exact in fp32 too.
      const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(high[r][v], 8), low[r][v]);
      // sum(x * w) = x's scale * (w's scale * sum(levels * x's integers) + base * sum(integers))
      const __m512 total = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                           _mm512_mul_ps(scale[v], row_scale), _mm512_loadu_ps(sum));
      _mm512_storeu_ps(sum, _mm512_fmadd_ps(base[v], offset, total));
    }
  }
}

// Every row's sums for one block over one chunk of inputs.
void multiply_vnni(const QuantisedRows& q, int64_t rows, int64_t in, const BFloat16* scales,
                   int64_t outs, int64_t first_out, int64_t k0, int64_t count,
                   const __m512i* quads, float* sums) {
  for (int64_t k = k0; k < k0 + count; k += kGroup) {
    __m512 scale[4], base[4];
    group_scales(scales, outs, first_out, k / kGroup, scale, base);
    const __m512i* group_quads = quads + (k - k0);
    int64_t r = 0;
    for (; r + kVnniRows <= rows; r += kVnniRows)
      multiply_group<kVnniRows>(q, in, r, k, group_quads, scale, base, sums + r * kBlock);
    float* rest = sums + r * kBlock;
    switch (rows - r) {
      case 1: multiply_group<1>(q, in, r, k, group_quads, scale, base, rest); break;
      case 2: multiply_group<2>(q, in, r, k, group_quads, scale, base, rest); break;
      default: break;
    }
  }
}

// The whole product with VNNI: each block's chunks unpacked and multiplied for every row, its
// sums then put back in the outputs' order.
void multiply_all_vnni(const QuantisedRows& q, int64_t rows, int64_t in, const uint8_t* weights,
                       const BFloat16* scales, int64_t outs, BFloat16* out) {
  const __m512i first_half =
      _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i second_half =
      _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  at::parallel_for(0, outs / kBlock, 1, [&](int64_t first_block, int64_t last_block) {
    alignas(64) __m512i quads[kChunk];  // 64 outputs x 256 levels, 16 KiB
    std::vector<float> sums(rows * kBlock);
    for (int64_t b = first_block; b < last_block; ++b) {
      std::fill(sums.begin(), sums.end(), 0.0f);
      const uint8_t* block = weights + b * in * 32;
      for (int64_t k0 = 0; k0 < in; k0 += kChunk) {
        const int64_t count = std::min(kChunk, in - k0);
        unpack(block, k0, count, quads);
        multiply_vnni(q, rows, in, scales, outs, b * kBlock, k0, count, quads, sums.data());
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float* sum = sums.data() + r * kBlock;
        const __m512 held[4] = {_mm512_loadu_ps(sum), _mm512_loadu_ps(sum + 16),
                                _mm512_loadu_ps(sum + 32), _mm512_loadu_ps(sum + 48)};
        const __m512 natural[4] = {
            _mm512_permutex2var_ps(held[0], first_half, held[1]),
            _mm512_permutex2var_ps(held[0], second_half, held[1]),
            _mm512_permutex2var_ps(held[2], first_half, held[3]),
            _mm512_permutex2var_ps(held[2], second_half, held[3]),
        };
        for (int v = 0; v < 4; ++v)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * outs + b * kBlock + v * 16),
                              (__m256i)_mm512_cvtneps_pbh(natural[v]));
      }
    }
  });
}
#endif

// MUSE_INT4_ROWS (generation/model/native_build.py NO_AMX): `0` no way, `vnni` / `avx512` that
// one; read at every call, so the serving process can turn AMX off after a fault.
Kind chosen() {
  const char* setting = std::getenv("MUSE_INT4_ROWS");
  const std::string wanted = setting ? setting : "";
  if (wanted == "0") return Kind::kNone;
#ifdef MUSE_INT4_AMX
  if (wanted != "avx512" && wanted != "vnni" && permitted()) return Kind::kAmx;
#endif
#ifdef MUSE_INT4_VNNI
  if (wanted != "avx512") return Kind::kVnni;
#endif
  return Kind::kVector;
}

}  // namespace

bool int4_rows_available() { return chosen() != Kind::kNone; }

std::string int4_rows_kind() {
  switch (chosen()) {
    case Kind::kAmx: return "amx";
    case Kind::kVnni: return "avx512_vnni";
    case Kind::kVector: return "avx512_bf16";
    default: return "";
  }
}

at::Tensor int4_rows(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales) {
  const Kind kind = chosen();
  TORCH_CHECK(kind != Kind::kNone, "the int4 many-rows kernel is off (MUSE_INT4_ROWS=0)");
  TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kBFloat16, "bf16 [rows, in] input");
  const int64_t rows = input.size(0), in = input.size(1), outs = packed.size(0);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(1) * 2 == in && outs % kBlock == 0 && in % kGroup == 0,
              "int4 weights in torch's packed CPU layout");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() &&
                  scales.numel() == in / kGroup * outs * 2,
              "bf16 scales and zeros [in / 32, out, 2]");
  const at::Tensor x = input.contiguous();
  at::Tensor result = at::empty({rows, outs}, input.options());
  if (rows == 0) return result;
  const BFloat16* xs = x.data_ptr<BFloat16>();
  const uint8_t* weights = packed.data_ptr<uint8_t>();
  const BFloat16* scale = scales.data_ptr<BFloat16>();
  BFloat16* o = result.data_ptr<BFloat16>();
  const int64_t padded = (rows + kTileRows - 1) / kTileRows * kTileRows;
#ifdef MUSE_INT4_VNNI
  if (kind == Kind::kVnni) {
    multiply_all_vnni(quantise_rows(xs, rows, in), rows, in, weights, scale, outs, o);
    return result;
  }
#endif
  at::parallel_for(0, outs / kBlock, 1, [&](int64_t first_block, int64_t last_block) {
    // On the thread's stack, 64-byte aligned (the vector loads of it are aligned ones).
    alignas(64) __m512i widened[kChunk / 2 * 4];
    std::vector<float> sums(padded * kBlock);
    int configured = 0;
    for (int64_t b = first_block; b < last_block; ++b) {
      const uint8_t* block = weights + b * in * 32;
      for (int64_t k0 = 0; k0 < in; k0 += kChunk) {
        const int64_t count = std::min(kChunk, in - k0);
        widen(block, scale, outs, b * kBlock, k0, count, widened);
        if (kind == Kind::kVector) {
          multiply_vectors(xs, rows, in, k0, count, widened, sums.data(), k0 == 0);
          continue;
        }
#ifdef MUSE_INT4_AMX
        for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
          const int tile_rows = static_cast<int>(std::min<int64_t>(kTileRows, rows - r0));
          if (tile_rows != configured) configure(configured = tile_rows);
          multiply_chunk(xs + r0 * in, in, k0, count,
                         reinterpret_cast<const char*>(widened),
                         sums.data() + r0 * kBlock, k0 == 0);
        }
#endif
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int v = 0; v < 4; ++v) {
          const __m512 sum = _mm512_loadu_ps(sums.data() + r * kBlock + v * 16);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + r * outs + b * kBlock + v * 16),
                              (__m256i)_mm512_cvtneps_pbh(sum));
        }
    }
#ifdef MUSE_INT4_AMX
    if (configured) _tile_release();
#else
    (void)configured;
#endif
  });
  return result;
}

#else

bool int4_rows_available() { return false; }

std::string int4_rows_kind() { return ""; }

at::Tensor int4_rows(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "the int4 many-rows kernel needs AVX512-BF16, which this build lacks");
}

#endif

}  // namespace muse
