// `memattn demo`: the paper's Table 2 (inference) measured on this machine.
#pragma once

namespace memattn::tool {
int demo_main(int argc, char** argv);
}
