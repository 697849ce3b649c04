// Many rows times int4 weights without a bf16 copy (int4_rows.cpp).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace muse {

// Whether this build and CPU have the kernel, and which way it multiplies: "amx",
// "avx512_bf16", or "" (none).
bool int4_rows_available();
std::string int4_rows_kind();

// bf16 `input` [rows, in] times the int4 weights in torch's packed CPU layout (`packed` uint8
// [out, in / 2], `scales` bf16 [in / 32, out, 2] scales and zeros), bf16 [rows, out].
at::Tensor int4_rows(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales);

}  // namespace muse
