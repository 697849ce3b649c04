// Many rows times int4 weights without a bf16 copy (int4_rows.cpp).
#pragma once

#include <torch/extension.h>

namespace muse {

// Whether this build and CPU have the kernel (AMX, and the kernel's permission to use it).
bool int4_rows_available();

// bf16 `input` [rows, in] times the int4 weights in torch's packed CPU layout (`packed` uint8
// [out, in / 2], `scales` bf16 [in / 32, out, 2] scales and zeros), bf16 [rows, out].
at::Tensor int4_rows(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales);

}  // namespace muse
