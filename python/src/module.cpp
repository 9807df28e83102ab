// The extension memattn._memattn: memattn's C++ API over numpy arrays and over descriptors of
// torch tensors built by the Python layer (memattn/_tensors.py), so no libtorch is linked.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "memattn/memattn.hpp"
#include "operands.hpp"

namespace py = pybind11;
using memattn::ErrorCode, memattn::Tensor;
using memattn_python::Access, memattn_python::Rank, memattn_python::to_tensor;

namespace {

template <typename Enum, size_t N>
Enum parse_choice(const std::string& given, const char* arg, const std::pair<const char*, Enum> (&choices)[N]) {
  std::string allowed;
  for (const auto& [name, value] : choices) {
    if (given == name) return value;
    allowed += (allowed.empty() ? "'" : ", '") + std::string(name) + "'";
  }
  throw memattn::Error(ErrorCode::invalid_argument,
                       std::string(arg) + " must be one of " + allowed + ", got '" + given + "'");
}

std::optional<Tensor> optional_tensor(py::handle operand, const char* name, Access access,
                                      Rank rank = Rank::exact) {
  if (operand.is_none()) return std::nullopt;
  return to_tensor(operand, name, access, rank);
}

// memattn::Options plus the mask, bias, ALiBi slopes, sinks and target it points to; it lives as a Python object for
// the duration of a call, so the pointers stay valid (and it cannot be copied).
class CallOptions {
 public:
  CallOptions(bool causal, const std::string& align, int64_t window_left, int64_t window_right,
              py::object mask, py::object bias, std::optional<double> scale,
              const std::string& algorithm, int num_threads,
              const std::optional<std::string>& target, double softcap, py::object alibi_slopes,
              py::object sinks, py::object cu_seqlens_q, py::object cu_seqlens_k, int64_t max_seqlen_q,
              int64_t max_seqlen_k, int64_t diagonal_offset)
      : mask_(optional_tensor(mask, "mask", Access::read, Rank::broadcast)),
        bias_(optional_tensor(bias, "bias", Access::read, Rank::broadcast)),
        alibi_slopes_(optional_tensor(alibi_slopes, "alibi_slopes", Access::read)),
        sinks_(optional_tensor(sinks, "sinks", Access::read)),
        cu_seqlens_q_(optional_tensor(cu_seqlens_q, "cu_seqlens_q", Access::read)),
        cu_seqlens_k_(optional_tensor(cu_seqlens_k, "cu_seqlens_k", Access::read)),
        target_(target) {
    using memattn::Algorithm, memattn::Align;
    options_.causal = causal;
    options_.align = parse_choice(align, "align", {std::pair{"top_left", Align::top_left},
                                                   std::pair{"bottom_right", Align::bottom_right}});
    options_.window_left = window_left;
    options_.window_right = window_right;
    options_.diagonal_offset = diagonal_offset;
    options_.mask = mask_ ? &*mask_ : nullptr;
    options_.bias = bias_ ? &*bias_ : nullptr;
    options_.softcap = softcap;
    options_.alibi_slopes = alibi_slopes_ ? &*alibi_slopes_ : nullptr;
    options_.sinks = sinks_ ? &*sinks_ : nullptr;
    if (scale) options_.scale = *scale;
    options_.algorithm = parse_choice(
        algorithm, "algorithm",
        {std::pair{"auto", Algorithm::automatic}, std::pair{"naive", Algorithm::naive},
         std::pair{"sequential", Algorithm::sequential}, std::pair{"chunked", Algorithm::chunked},
         std::pair{"flash", Algorithm::flash}});
    options_.num_threads = num_threads;
    options_.target = target_ ? target_->c_str() : nullptr;
    options_.cu_seqlens_q = cu_seqlens_q_ ? &*cu_seqlens_q_ : nullptr;
    options_.cu_seqlens_k = cu_seqlens_k_ ? &*cu_seqlens_k_ : nullptr;
    options_.max_seqlen_q = max_seqlen_q;
    options_.max_seqlen_k = max_seqlen_k;
  }
  CallOptions(const CallOptions&) = delete;
  CallOptions& operator=(const CallOptions&) = delete;

  const memattn::Options& get() const { return options_; }

 private:
  std::optional<Tensor> mask_, bias_, alibi_slopes_, sinks_, cu_seqlens_q_, cu_seqlens_k_;
  std::optional<std::string> target_;
  memattn::Options options_;
};

const char* code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument: return "invalid_argument";
    case ErrorCode::size_overflow: return "size_overflow";
    case ErrorCode::workspace_too_small: return "workspace_too_small";
    case ErrorCode::aliasing: return "aliasing";
    case ErrorCode::out_of_memory: return "out_of_memory";
    case ErrorCode::unsupported: return "unsupported";
    case ErrorCode::wrong_dtype: return "wrong_dtype";
  }
  return "unknown";
}

// memattn::Error becomes the Python exception its code stands for, with the C++ message unchanged
// and the code's name in `.code`.
void raise_python(const memattn::Error& e) {
  PyObject* type = e.code() == ErrorCode::out_of_memory ? PyExc_MemoryError
                   : e.code() == ErrorCode::wrong_dtype ? PyExc_TypeError
                                                        : PyExc_ValueError;
  py::object exc = py::reinterpret_borrow<py::object>(type)(e.what());
  exc.attr("code") = code_name(e.code());
  PyErr_SetObject(type, exc.ptr());
}

void forward(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
             const CallOptions& options) {
  const Tensor tq = to_tensor(q, "q", Access::read), tk = to_tensor(k, "k", Access::read),
               tv = to_tensor(v, "v", Access::read), tout = to_tensor(out, "out", Access::write);
  const std::optional<Tensor> tlse = optional_tensor(lse, "lse", Access::write);
  py::gil_scoped_release unlocked;  // the Python layer holds the operands until we return
  memattn::forward(tq, tk, tv, tout, tlse ? &*tlse : nullptr, options.get());
}

void backward(py::handle q, py::handle k, py::handle v, py::handle out, py::handle dout,
              py::handle lse, py::handle dq, py::handle dk, py::handle dv, py::handle dbias,
              const CallOptions& options, py::handle dsinks) {
  const Tensor tq = to_tensor(q, "q", Access::read), tk = to_tensor(k, "k", Access::read),
               tv = to_tensor(v, "v", Access::read), tout = to_tensor(out, "out", Access::read),
               tdout = to_tensor(dout, "dout", Access::read),
               tlse = to_tensor(lse, "lse", Access::read),
               tdq = to_tensor(dq, "dq", Access::write), tdk = to_tensor(dk, "dk", Access::write),
               tdv = to_tensor(dv, "dv", Access::write);
  // dbias has the bias's own shape, so it is broadcast-padded the same way.
  const std::optional<Tensor> tdbias = optional_tensor(dbias, "dbias", Access::write, Rank::broadcast);
  const std::optional<Tensor> tdsinks = optional_tensor(dsinks, "dsinks", Access::write);
  py::gil_scoped_release unlocked;
  memattn::backward(tq, tk, tv, tout, tdout, tlse, tdq, tdk, tdv, options.get(),
                    tdbias ? &*tdbias : nullptr, {}, tdsinks ? &*tdsinks : nullptr);
}

void attention_with_kvcache(py::handle q, py::handle k_cache, py::handle v_cache, py::handle seqlens_k,
                            py::handle block_table, py::handle out, py::handle lse, const CallOptions& options) {
  const Tensor tq = to_tensor(q, "q", Access::read), tk = to_tensor(k_cache, "k_cache", Access::read),
               tv = to_tensor(v_cache, "v_cache", Access::read),
               tlens = to_tensor(seqlens_k, "seqlens_k", Access::read), tout = to_tensor(out, "out", Access::write);
  const std::optional<Tensor> ttable = optional_tensor(block_table, "block_table", Access::read);
  const std::optional<Tensor> tlse = optional_tensor(lse, "lse", Access::write);
  py::gil_scoped_release unlocked;  // the Python layer holds the operands until we return
  memattn::attention_with_kvcache(tq, tk, tv, tlens, ttable ? &*ttable : nullptr, tout, tlse ? &*tlse : nullptr,
                                  options.get());
}

// memattn::merge over sequences of parts; each part is named by its index in messages.
void merge(const py::sequence& outs, const py::sequence& lses, py::handle out, py::handle lse,
           int num_threads) {
  std::vector<Tensor> touts, tlses;
  for (const auto& [parts, name, tensors] :
       {std::tuple{&outs, "outs", &touts}, std::tuple{&lses, "lses", &tlses}})
    for (size_t i = 0; i < parts->size(); ++i) {
      const std::string indexed = std::string(name) + "[" + std::to_string(i) + "]";
      tensors->push_back(to_tensor((*parts)[i], indexed.c_str(), Access::read));
    }
  const Tensor tout = to_tensor(out, "out", Access::write);
  const std::optional<Tensor> tlse = optional_tensor(lse, "lse", Access::write);
  py::gil_scoped_release unlocked;  // the Python layer holds the parts until we return
  memattn::merge(touts, tlses, tout, tlse ? &*tlse : nullptr, {num_threads});
}

// The view memattn would get for an operand: (address, dtype, shape, strides); for the zero-copy
// tests and for debugging.
py::tuple inspect_operand(py::handle operand, const std::string& name, bool broadcast) {
  const Tensor t = to_tensor(operand, name.c_str(), Access::read, broadcast ? Rank::broadcast : Rank::exact);
  py::tuple shape(t.ndim), strides(t.ndim);
  for (int i = 0; i < t.ndim; ++i) {
    shape[size_t(i)] = t.shape[i];
    strides[size_t(i)] = t.strides[i];
  }
  return py::make_tuple(reinterpret_cast<uintptr_t>(t.data), memattn::dtype_name(t.dtype), shape, strides);
}

}  // namespace

PYBIND11_MODULE(_memattn, m) {
  m.doc() = "memattn's C++ API over numpy arrays and torch tensor descriptors; use the memattn package.";
  m.attr("__version__") = MEMATTN_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const memattn::Error& e) {
      raise_python(e);
    }
  });

  py::class_<CallOptions>(m, "Options")
      .def(py::init<bool, const std::string&, int64_t, int64_t, py::object, py::object,
                    std::optional<double>, const std::string&, int, const std::optional<std::string>&,
                    double, py::object, py::object, py::object, py::object, int64_t, int64_t, int64_t>(),
           py::kw_only(), py::arg("causal") = false, py::arg("align") = "top_left",
           py::arg("window_left") = -1, py::arg("window_right") = -1, py::arg("mask") = py::none(),
           py::arg("bias") = py::none(), py::arg("scale") = py::none(), py::arg("algorithm") = "auto",
           py::arg("num_threads") = 0, py::arg("target") = py::none(), py::arg("softcap") = 0.0,
           py::arg("alibi_slopes") = py::none(), py::arg("sinks") = py::none(),
           py::arg("cu_seqlens_q") = py::none(), py::arg("cu_seqlens_k") = py::none(),
           py::arg("max_seqlen_q") = 0, py::arg("max_seqlen_k") = 0, py::arg("diagonal_offset") = 0);

  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("options"), "memattn::forward; the GIL is released while it runs.");
  m.def("backward", &backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("dout"), py::arg("lse"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("dbias"), py::arg("options"), py::arg("dsinks") = py::none(),
        "memattn::backward; the GIL is released while it runs.");
  m.def("attention_with_kvcache", &attention_with_kvcache, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("seqlens_k"), py::arg("block_table"), py::arg("out"), py::arg("lse"), py::arg("options"),
        "memattn::attention_with_kvcache; the GIL is released while it runs.");
  m.def("merge", &merge, py::arg("outs"), py::arg("lses"), py::arg("out"), py::arg("lse"),
        py::arg("num_threads"), "memattn::merge; the GIL is released while it runs.");
  m.def(
      "workspace_bytes",
      [](py::handle q, py::handle k, py::handle v, const CallOptions& options) {
        return memattn::workspace_bytes(to_tensor(q, "q", Access::read), to_tensor(k, "k", Access::read),
                                        to_tensor(v, "v", Access::read), options.get());
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("options"));
  m.def(
      "backward_workspace_bytes",
      [](py::handle q, py::handle k, py::handle v, const CallOptions& options, bool bias_grad) {
        return memattn::backward_workspace_bytes(to_tensor(q, "q", Access::read),
                                                 to_tensor(k, "k", Access::read),
                                                 to_tensor(v, "v", Access::read), options.get(), {bias_grad});
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("options"), py::arg("bias_grad"));
  m.def("supported_targets", &memattn::supported_targets);
  m.def(
      "selected_target",
      [](const std::optional<std::string>& target) {
        memattn::Options options;
        if (target) options.target = target->c_str();
        return memattn::selected_target(options);
      },
      py::arg("target") = py::none());
  m.def(
      "tile_family",
      [](py::handle like, const CallOptions& options) {
        // The dtype is read off an empty operand, as any operand's is, so every spelling the
        // module accepts for arrays is accepted here, with the same errors.
        return memattn::tile_family(to_tensor(like, "dtype", Access::read).dtype, options.get());
      },
      py::arg("like"), py::arg("options"),
      "memattn::tile_family for the dtype of `like` (an operand: numpy array or descriptor).");
  m.def(
      "backward_tile_family",
      [](py::handle q, py::handle k, py::handle v, const CallOptions& options) {
        return memattn::backward_tile_family(to_tensor(q, "q", Access::read), to_tensor(k, "k", Access::read),
                                             to_tensor(v, "v", Access::read), options.get());
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("options"));
  m.def("inspect_operand", &inspect_operand, py::arg("operand"), py::arg("name") = "operand",
        py::arg("broadcast") = false,
        "(address, dtype, shape, element strides) of the view memattn takes of an operand.");
}
