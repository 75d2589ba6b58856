// Registers the ops under the build's unique namespace TORCH_EXTENSION_NAME and gives the
// shared library a Python module init, so `from . import <name>` loads it (kernel-builder style).
#include <Python.h>
#include <torch/library.h>

#include "../csrc/propagate_api.h"

#define CGSPN_CONCAT_(a, b) a##b
#define CGSPN_CONCAT(a, b) CGSPN_CONCAT_(a, b)
#define CGSPN_STRINGIFY_(a) #a
#define CGSPN_STRINGIFY(a) CGSPN_STRINGIFY_(a)

TORCH_LIBRARY(TORCH_EXTENSION_NAME, ops) {
  ops.def("propagate_fwd(Tensor z, Tensor g, bool save_states) -> (Tensor, Tensor)");
  ops.def("propagate_bwd(Tensor dy, Tensor z, Tensor g, Tensor states) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(TORCH_EXTENSION_NAME, CUDA, ops) {
  ops.impl("propagate_fwd", &cgspn::propagate_fwd);
  ops.impl("propagate_bwd", &cgspn::propagate_bwd);
}

PyMODINIT_FUNC CGSPN_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, CGSPN_STRINGIFY(TORCH_EXTENSION_NAME), nullptr, 0,
                                      nullptr};
  return PyModule_Create(&module);
}
