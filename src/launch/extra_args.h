// `pdserve repro --prefill-extra-args/--decode-extra-args`: more `pdserve serve` flags for one
// side (expert parallelism, EPLB, CUDA graph sizes, ...), written as on a shell command line, the
// way the cluster scripts' PREFILL_EXTRA_ARGS / DECODE_EXTRA_ARGS take them (docs/cluster.md).
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace pdserve::launch {

// Words of `text` split at whitespace outside quotes; '...' keeps everything, "..." too but for
// \" and \\ (enough for inline JSON like --init-expert-location '{"logical_count": ...}').
// kInvalidArgument for an unterminated quote.
Result<std::vector<std::string>> split_command_line(const std::string& text);

// The flags of `words` that repro sets itself (and the option of repro to use instead) are refused:
// kInvalidArgument naming `option`, the flag and the repro option.
Status check_extra_server_args(const std::vector<std::string>& words, const std::string& option);

}  // namespace pdserve::launch
