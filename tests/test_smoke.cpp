// Smoke tests: each algorithm against Ref64 on a small problem in each dtype.
#include <gtest/gtest.h>

#include "support.hpp"

using namespace mt;

TEST(Smoke, AllAlgorithmsAllDtypes) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
    for (auto alg : {memattn::Algorithm::naive, memattn::Algorithm::sequential,
                     memattn::Algorithm::chunked, memattn::Algorithm::flash}) {
      if (dt == DType::f64 && alg == memattn::Algorithm::flash) continue;
      Case c(Shape{2, 37, 45, 4, 2, 24, 20}, dt, 7);
      c.options.algorithm = alg;
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " " + memattn::algorithm_name(alg));
      expect_accurate(c);
    }
}
