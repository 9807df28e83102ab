// The .npy reader and header writer against this test's writer and, where installed, numpy.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"
#include "npy.hpp"

namespace memattn::cli_test {
namespace {

TEST(CliNpy, ReadsWhatAnIndependentWriterWrites) {
  ScratchDir dir;
  for (int version : {1, 2, 3})
    for (bool fortran : {false, true}) {
      Array a = Array::random(DType::f16, {2, 3, 1, 5}, 9, fortran);
      write_npy(dir.path("a.npy"), a, version);
      const tool::NpyArray r = tool::read_npy(dir.path("a.npy"), {{DType::f16}, 4, ""});
      EXPECT_EQ(r.descr(), "<f2");
      EXPECT_EQ(r.shape(), a.shape);
      EXPECT_EQ(r.fortran_order(), fortran);
      const Tensor t = r.tensor(), want = a.tensor();
      EXPECT_EQ(t.strides, want.strides);
      EXPECT_EQ(std::memcmp(t.data, a.bytes.data(), a.bytes.size()), 0);
    }
}

// Offsets, key lengths and block tables: '<i4' and '<i8' as memattn's i32 and i64, nothing else.
TEST(CliNpy, ReadsIntegerIndexArrays) {
  ScratchDir dir;
  for (DType t : {DType::i32, DType::i64}) {
    const Array a = Array::integers(t, {2, 2}, {0, 7, -1, 3});
    write_npy(dir.path("a.npy"), a);
    const tool::NpyArray r = tool::read_npy(dir.path("a.npy"), {{DType::i32, DType::i64}, 2, ""});
    EXPECT_EQ(r.dtype(), t);
    EXPECT_EQ(r.descr(), t == DType::i32 ? "<i4" : "<i8");
    EXPECT_EQ(std::memcmp(r.data(), a.bytes.data(), a.bytes.size()), 0);
    EXPECT_EQ(std::string(tool::npy_descr(t)), r.descr());
  }
  write_file(dir.path("u.npy"), npy_bytes("{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }", 8));
  EXPECT_THROW(tool::read_npy(dir.path("u.npy"), {{DType::i32, DType::i64}, 1, ""}), tool::NpyError);
}

TEST(CliNpy, MisalignedDataIsCopied) {
  ScratchDir dir;
  Array a = Array::random(DType::f64, {3}, 9);
  // A header whose length leaves the data at an offset that is not a multiple of 8.
  std::string bytes = "\x93NUMPY\x01";
  const std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }\n";
  bytes += char(0), bytes += char(dict.size()), bytes += char(0);
  bytes += dict;
  ASSERT_NE(bytes.size() % 8, 0u);
  bytes.append(reinterpret_cast<const char*>(a.bytes.data()), a.bytes.size());
  write_file(dir.path("a.npy"), bytes);
  const tool::NpyArray r = tool::read_npy(dir.path("a.npy"), {{DType::f64}, 1, ""});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data()) % alignof(double), 0u);
  EXPECT_EQ(std::memcmp(r.data(), a.bytes.data(), a.bytes.size()), 0);
}

TEST(CliNpy, HeaderIsPaddedTo64Bytes) {
  for (DType t : {DType::f32, DType::f16, DType::f64, DType::u8}) {
    const std::string h = tool::npy_header(t, {2, 3, 4, 5});
    EXPECT_EQ(h.size() % 64, 0u);
    EXPECT_EQ(h.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
    EXPECT_EQ(h.back(), '\n');
    EXPECT_NE(h.find("'descr': '" + descr_of(t) + "'"), std::string::npos) << h;
    EXPECT_NE(h.find("'shape': (2, 3, 4, 5)"), std::string::npos) << h;
  }
  EXPECT_NE(tool::npy_header(DType::f32, {7}).find("(7,)"), std::string::npos);
}

// numpy loads the tool's outputs, and the tool reads numpy's files, C and Fortran order and bool.
TEST(CliNpy, NumpyInterop) {
  const std::string python = python_with_numpy();
  if (python.empty()) GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  ScratchDir dir;
  const std::string make =
      "import numpy as np; r = np.random.default_rng(3)\n"
      "np.save('q.npy', np.asfortranarray(r.standard_normal((2, 6, 4, 8)).astype('<f4')))\n"
      "np.save('k.npy', r.standard_normal((2, 9, 2, 8)).astype('<f4'))\n"
      "np.save('v.npy', r.standard_normal((2, 9, 2, 8)).astype('<f4'))\n"
      "np.save('m.npy', r.random((1, 4, 6, 9)) > 0.2)\n";
  write_file(dir.path("make.py"), make);
  ASSERT_EQ(std::system(("cd '" + dir.dir() + "' && " + python + " make.py").c_str()), 0);
  const ToolResult r = run_tool({"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--mask", "m.npy", "--causal",
                                 "-o", "out.npy", "--lse", "lse.npy"}, dir.dir());
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const auto read = [&](const char* name) {
    return tool::read_npy(dir.path(name), {{DType::f32, DType::u8}, -1, ""});
  };
  const tool::NpyArray q = read("q.npy"), k = read("k.npy"), v = read("v.npy"), m = read("m.npy");
  EXPECT_TRUE(q.fortran_order());
  EXPECT_EQ(m.descr(), "|b1");
  Array out = Array::zeros(DType::f32, {2, 6, 4, 8}), lse = Array::zeros(DType::f32, {2, 4, 6});
  const Tensor mask = m.tensor(), lse_view = lse.tensor();
  Options o;
  o.causal = true, o.mask = &mask;
  forward(q.tensor(), k.tensor(), v.tensor(), out.tensor(), &lse_view, o);

  const std::string check =
      "import numpy as np, sys\n"
      "a = np.load(sys.argv[1]); b = np.fromfile(sys.argv[2], dtype='<f4').reshape(a.shape)\n"
      "assert a.dtype == np.float32 and not np.isfortran(a), a.dtype\n"
      "assert a.shape == tuple(int(x) for x in sys.argv[3].split(',')), a.shape\n"
      "assert a.tobytes() == b.tobytes(), 'values differ'\n";
  write_file(dir.path("check.py"), check);
  for (auto& [name, want, shape] : {std::tuple{"out.npy", &out, "2,6,4,8"}, std::tuple{"lse.npy", &lse, "2,4,6"}}) {
    write_file(dir.path("want.raw"), std::string(reinterpret_cast<const char*>(want->bytes.data()), want->bytes.size()));
    EXPECT_EQ(std::system(("cd '" + dir.dir() + "' && " + python + " check.py " + name + " want.raw " + shape).c_str()), 0)
        << name;
  }
}

}  // namespace
}  // namespace memattn::cli_test
