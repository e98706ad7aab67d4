// The one benchmark source compiled with the repository's absolute path (bench/CMakeLists.txt), so
// that ccache reuses the benchmarks' other objects across clones at other paths.
#include "bench_paths.h"

const char* const pdserve_bench_source_dir = PDSERVE_SOURCE_DIR;
