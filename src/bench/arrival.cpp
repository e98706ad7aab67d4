#include "bench/arrival.h"

#include <cmath>
#include <random>

namespace pdserve::bench {

std::vector<double> arrival_times(size_t n, double rate, double burstiness, uint64_t seed) {
  std::vector<double> t(n, 0.0);
  if (!(rate > 0) || std::isinf(rate) || n == 0) return t;
  std::mt19937_64 rng(seed);
  // Gamma(shape k, scale theta) has mean k * theta = 1 / rate.
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  for (size_t i = 1; i < n; ++i) t[i] = t[i - 1] + gap(rng);
  return t;
}

}  // namespace pdserve::bench
