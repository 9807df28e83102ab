// README.md shows examples/quickstart.cpp verbatim, so the example users read is the one that
// CMake builds and ctest runs (test example_quickstart).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

std::string read_source_file(const std::string& relative) {
  std::ifstream in(std::string(MEMATTN_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST(Readme, contains_quickstart_example_verbatim) {
  const std::string readme = read_source_file("README.md");
  const std::string example = read_source_file("examples/quickstart.cpp");
  ASSERT_FALSE(readme.empty()) << "README.md not found in " MEMATTN_SOURCE_DIR;
  ASSERT_FALSE(example.empty()) << "examples/quickstart.cpp not found in " MEMATTN_SOURCE_DIR;
  EXPECT_NE(readme.find("```cpp\n" + example + "```\n"), std::string::npos)
      << "README.md must contain examples/quickstart.cpp verbatim in a ```cpp block";
}
