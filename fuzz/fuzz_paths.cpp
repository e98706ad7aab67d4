// The one fuzz source compiled with the repository's absolute path (fuzz/CMakeLists.txt): with the
// path on every fuzz target's compile line, ccache could not reuse their objects across clones at
// other paths (CI builds a fresh clone each run).
#include "fuzz/fuzz_paths.h"

namespace pdserve::fuzz {
const char* const kConfiguredSourceDir = PDSERVE_SOURCE_DIR;
}
