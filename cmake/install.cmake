# Install rules: headers, libmemattn.so and .a, the CMake package (memattn::memattn,
# memattn::memattn_static) and lib/pkgconfig/memattn.pc; plus the test that consumes them.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# memattn_version() of the C API reports the project version; only c_api.cpp sees it, so a new
# version recompiles one file.
set_property(SOURCE ${CMAKE_SOURCE_DIR}/src/api/c_api.cpp APPEND PROPERTY COMPILE_DEFINITIONS
             MEMATTN_VERSION_STRING="${PROJECT_VERSION}")

# Consumers see the shared library as memattn::memattn, the static one as memattn::memattn_static.
# memattn_objects is not exported: the libraries are made of its objects, not linked to it, and
# link OpenMP (both) and Highway (the static one passes it on) themselves.
set_target_properties(memattn_shared PROPERTIES EXPORT_NAME memattn)
set_target_properties(memattn PROPERTIES EXPORT_NAME memattn_static)
# Everything here is component "memattn" (the Python module is "python"): the install test takes
# this component alone.
install(TARGETS memattn_shared memattn EXPORT memattnTargets COMPONENT memattn
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# memattn_dist's headers go with that library (component "dist" below).
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/memattn DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT memattn FILES_MATCHING PATTERN "*.hpp" PATTERN "*.h"
        PATTERN "dist.hpp" EXCLUDE PATTERN "memattn_dist.h" EXCLUDE)

set(MEMATTN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/memattn)
install(EXPORT memattnTargets NAMESPACE memattn:: DESTINATION ${MEMATTN_CMAKE_DIR}
        COMPONENT memattn)

# Where MPI was found: libmemattn_dist.a as memattn::memattn_dist (it links memattn::memattn_static
# and MPI) with its headers, component "dist", in an export file of its own that memattnConfig
# loads when present and MPI is found, so that the core package never needs MPI.
if(TARGET memattn_dist)
  install(TARGETS memattn_dist EXPORT memattnDistTargets COMPONENT dist
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(FILES ${CMAKE_SOURCE_DIR}/include/memattn/dist.hpp ${CMAKE_SOURCE_DIR}/include/memattn/memattn_dist.h
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/memattn COMPONENT dist)
  install(EXPORT memattnDistTargets NAMESPACE memattn:: DESTINATION ${MEMATTN_CMAKE_DIR} COMPONENT dist)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/memattnConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/package/memattnConfig.cmake
                              INSTALL_DESTINATION ${MEMATTN_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/package/memattnConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/package/memattnConfig.cmake
              ${CMAKE_BINARY_DIR}/package/memattnConfigVersion.cmake
        DESTINATION ${MEMATTN_CMAKE_DIR} COMPONENT memattn)

# memattn.pc finds its prefix from its own location (${pcfiledir}), so `cmake --install --prefix`
# may pick any prefix after configuring.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  message(FATAL_ERROR
          "memattn.pc needs a relative CMAKE_INSTALL_LIBDIR, got ${CMAKE_INSTALL_LIBDIR}")
endif()
file(RELATIVE_PATH MEMATTN_PC_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
configure_file(${CMAKE_CURRENT_LIST_DIR}/memattn.pc.in ${CMAKE_BINARY_DIR}/package/memattn.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/package/memattn.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT memattn)

# install_consumer: installs this build tree into <build>/install-test/prefix, then builds and runs
# examples/consumer against it through find_package (shared and static) and pkg-config. Not in a
# sanitizer build, whose libraries only link into programs built with the same sanitizers.
if(MEMATTN_BUILD_TESTS AND NOT MEMATTN_SANITIZE)
  add_test(NAME install_consumer
           COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${CMAKE_BINARY_DIR} -DSOURCE_DIR=${CMAKE_SOURCE_DIR}
                   -DWORK_DIR=${CMAKE_BINARY_DIR}/install-test -DC_COMPILER=${CMAKE_C_COMPILER}
                   -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
                   -P ${CMAKE_CURRENT_LIST_DIR}/install_consumer_test.cmake)
  set_tests_properties(install_consumer PROPERTIES TIMEOUT 120)  # takes about 10 s
endif()
