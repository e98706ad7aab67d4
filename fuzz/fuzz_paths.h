// The folder this build was configured from (fuzz_paths.cpp says why it is an object of its own).
#pragma once

namespace pdserve::fuzz {
extern const char* const kConfiguredSourceDir;
}
