# Install rules, CMake package and pkg-config file (filled in by the install work).
