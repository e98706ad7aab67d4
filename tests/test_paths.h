// Included into every test file by tests/CMakeLists.txt (-include). PDSERVE_SOURCE_DIR (the
// repository, for fixtures) and PDSERVE_BINARY (the built pdserve) name these two strings, defined
// once in test_paths.cpp: with the absolute paths on every test file's compile line, ccache could
// not reuse a test object built in a checkout at another path (CI builds a fresh clone each run).
#pragma once

extern const char* const pdserve_test_source_dir;
extern const char* const pdserve_test_binary;
