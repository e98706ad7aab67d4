// When the benchmark sends each request (sglang.bench_serving's get_request): all at once for an
// infinite rate, else a renewal process with gamma-distributed gaps of mean 1/rate (shape =
// burstiness; burstiness 1 is a Poisson process, the default).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pdserve::bench {

// Send times in seconds from the start, non-decreasing, the first at 0. rate <= 0 or infinite
// gives all zeros.
std::vector<double> arrival_times(size_t n, double rate, double burstiness, uint64_t seed);

}  // namespace pdserve::bench
