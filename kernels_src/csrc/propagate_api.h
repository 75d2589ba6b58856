// Torch-facing C-GSPN propagation ops (registered in torch-ext/torch_binding.cpp).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace cgspn {

// Y (input dtype) and, when save_states, the float32 line states (4, B, H*W, Cc) for backward.
std::tuple<at::Tensor, at::Tensor> propagate_fwd(const at::Tensor& z, const at::Tensor& g, bool save_states);
// (dZ, dG) from dY; recomputes the states when `states` is empty.
std::tuple<at::Tensor, at::Tensor> propagate_bwd(const at::Tensor& dy, const at::Tensor& z, const at::Tensor& g,
                                                 const at::Tensor& states);

}  // namespace cgspn
