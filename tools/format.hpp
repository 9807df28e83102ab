// Human-readable byte counts for the tool's tables.
#pragma once

#include <cstdio>
#include <string>

namespace memattn::tool {

// "1.1 MiB" (binary units spelled the IEC way, with a space) or "1.1MB" (the paper's style, still
// powers of 1024), one decimal below 10 units.
inline std::string human_bytes(double b, bool iec) {
  const char* iec_units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  const char* paper_units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, b < 10 && u ? "%.1f%s%s" : "%.0f%s%s", b, iec ? " " : "",
                iec ? iec_units[u] : paper_units[u]);
  return buf;
}

}  // namespace memattn::tool
