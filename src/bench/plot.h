// `pdserve bench --plot FILE.svg`: latency distributions (TTFT, TPOT, ITL, end-to-end) and
// throughput over time (output tokens/s and finished requests/s in time bins).
#pragma once

#include <string>
#include <vector>

#include "bench/backend.h"

namespace pdserve::bench {

std::string benchmark_plot_svg(const std::vector<RequestResult>& outputs, double duration);

}  // namespace pdserve::bench
