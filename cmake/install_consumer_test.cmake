# ctest install_consumer (cmake -P): install the build tree into a fresh prefix, then build and run
# examples/consumer against that prefix alone, through find_package and through pkg-config.
# Inputs: BUILD_DIR, SOURCE_DIR, WORK_DIR, C_COMPILER, CXX_COMPILER. With MPIEXEC (a command line,
# ;-separated, ending in the rank-count flag; ctest install_consumer_dist) it installs the "dist"
# component too and builds and runs examples/consumer_dist under it on 2 ranks instead.
cmake_minimum_required(VERSION 3.20)

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})  # nothing from an earlier run may stand in for this one's files

function(run)
  message(STATUS "install_consumer: ${ARGV}")
  execute_process(COMMAND ${ARGV} COMMAND_ERROR_IS_FATAL ANY)
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component memattn)

if(MPIEXEC)
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component dist)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/consumer_dist -B ${WORK_DIR}/dist-build
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
      -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/dist-build -j 2)
  run(${MPIEXEC} 2 ${WORK_DIR}/dist-build/consumer_dist)
  return()
endif()

# find_package: the prefix comes first in the search; the consumer checks the package's location.
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/consumer -B ${WORK_DIR}/cmake-build
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} -DMEMATTN_EXPECTED_PREFIX=${prefix}
    -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build -j 2)
foreach(program consumer_c consumer_cpp consumer_c_static consumer_cpp_static)
  run(${WORK_DIR}/cmake-build/${program})
  # memattn::memattn must be the shared library and memattn::memattn_static the static one.
  execute_process(COMMAND readelf -d ${WORK_DIR}/cmake-build/${program} OUTPUT_VARIABLE dynamic
                  COMMAND_ERROR_IS_FATAL ANY)
  string(FIND "${dynamic}" "libmemattn.so" at)
  if(program MATCHES "_static$" AND NOT at EQUAL -1)
    message(FATAL_ERROR "install_consumer: ${program} needs libmemattn.so:\n${dynamic}")
  elseif(NOT program MATCHES "_static$" AND at EQUAL -1)
    message(FATAL_ERROR "install_consumer: ${program} does not link libmemattn.so:\n${dynamic}")
  endif()
endforeach()

# pkg-config: the script builds the same programs with the flags memattn.pc gives and runs them.
set(ENV{CC} ${C_COMPILER})
set(ENV{CXX} ${CXX_COMPILER})
run(sh ${SOURCE_DIR}/examples/consumer/build-with-pkg-config.sh ${prefix}
    ${WORK_DIR}/pkg-config-build)
