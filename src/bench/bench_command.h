// `pdserve bench`: the online serving benchmark, flag- and output-compatible with
// sglang.bench_serving (docs/bench.md lists the flags and what differs).
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "base/status.h"
#include "http/client.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::bench {

// Registers `bench`; the returned callback runs it and gives the exit code.
std::function<int()> add_bench_command(CLI::App& root);

// The tokenizer to count and build prompts with: `tokenizer` (a folder or a file in it), else
// `model` when it is a local folder, else the server's /model_info tokenizer_path when that is a
// folder on this machine. Shared with bench-one-batch.
Result<std::shared_ptr<tokenizer::Tokenizer>> find_tokenizer(const std::string& tokenizer, const std::string& model,
                                                             const std::string& base_url, http::Client& client);

}  // namespace pdserve::bench
