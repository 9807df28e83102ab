# ctest fuzz_smoke: fuzz/run-fuzzers.sh builds the harnesses with clang in <build>/fuzz and runs each briefly.
option(MEMATTN_FUZZ_SMOKE "ctest runs each fuzz harness for a bounded time (needs clang++-14, libclang-rt-14-dev)" ON)
find_program(MEMATTN_CLANGXX_14 clang++-14)
if(MEMATTN_FUZZ_SMOKE AND MEMATTN_BUILD_TESTS AND NOT MEMATTN_FUZZ AND NOT MEMATTN_SANITIZE AND MEMATTN_CLANGXX_14)
  # 35 s per harness, about 2 minutes of fuzzing in all; the clang build is incremental after the first run.
  add_test(NAME fuzz_smoke COMMAND bash ${CMAKE_SOURCE_DIR}/fuzz/run-fuzzers.sh 35 ${CMAKE_BINARY_DIR}/fuzz)
  set_tests_properties(fuzz_smoke PROPERTIES TIMEOUT 1800 COST 5000)
endif()
