// `pdserve analyze --log DECODE_LOG... --trace-dir DIR [--profile-id ID] [--prefill-log ...]`
// (docs/analyze.md): prints the per-GPU throughput table; --output-json / --html write the rest.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace pdserve::profile {

std::function<int()> add_analyze_command(CLI::App& root);

}  // namespace pdserve::profile
