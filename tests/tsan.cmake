# ctest tsan_suite: tests/run-tsan.sh builds the C++ suite with clang and ThreadSanitizer in
# <build>/tsan and runs it under libomp with Archer (about 4 minutes of build, 2 of run on 2 cores).
find_program(MEMATTN_CLANGXX_14 clang++-14)
option(MEMATTN_TSAN_SUITE "ctest runs the C++ suite under ThreadSanitizer (needs clang++-14, libomp-14-dev)" ON)
if(MEMATTN_TSAN_SUITE AND MEMATTN_BUILD_TESTS AND NOT MEMATTN_FUZZ AND NOT MEMATTN_SANITIZE AND NOT MEMATTN_TSAN
   AND MEMATTN_CLANGXX_14)
  add_test(NAME tsan_suite COMMAND bash ${CMAKE_SOURCE_DIR}/tests/run-tsan.sh ${CMAKE_BINARY_DIR}/tsan)
  set_tests_properties(tsan_suite PROPERTIES TIMEOUT 2400 COST 8000)
endif()
