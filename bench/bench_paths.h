// The folder this build was configured from (bench_paths.cpp says why it is an object of its own).
#pragma once

extern const char* const pdserve_bench_source_dir;
