// Python operands as memattn::Tensor views: numpy arrays read directly, torch tensors through the
// descriptor tuple memattn/_tensors.py builds. Never a copy; what cannot be viewed is refused.
#pragma once

#include <pybind11/pybind11.h>

#include "memattn/memattn.hpp"

namespace memattn_python {

enum class Access { read, write };
// Broadcast operands (mask, bias and dbias, shaped like the bias) may have fewer than 4 dims:
// leading size-1 dims are prepended, as numpy and torch broadcasting do.
enum class Rank { exact, broadcast };

// `operand` is a numpy.ndarray or a tuple (data address, dtype name, shape, element strides).
// Throws memattn::Error (the Python layer's exception mapping applies) naming `name`.
memattn::Tensor to_tensor(pybind11::handle operand, const char* name, Access access,
                          Rank rank = Rank::exact);

}  // namespace memattn_python
