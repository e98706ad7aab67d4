// Grids for kernels over groups (experts) whose live rows are counted on the device: the masked
// MoE layout, [groups][slab rows][cols] with per-group counts. The counts are not known when the
// launch is built (and a CUDA graph replays it unchanged), so the grid cannot follow them.
#pragma once

#include <algorithm>

#include "ops/cuda/cuda_common.h"

namespace pdserve::ops::cuda {

// Blocks along x per group for a kernel that strides over a group's live rows: enough for a group
// whose every row is live (`needed`), at most `cap`, and at most about two waves of 8 blocks per
// SM over all groups; at least 1. A grid over every slab row (EP8 decode: 32 x 2048 rows for ~64
// live per expert) spent ~20 us on blocks that exit at once.
inline unsigned blocks_per_counted_group(long long needed, long long groups, long long cap = 1LL << 30) {
  groups = std::max(groups, 1LL);
  const long long two_waves = (2LL * 8 * sm_count() + groups - 1) / groups;
  return static_cast<unsigned>(std::max(1LL, std::min({needed, cap, two_waves})));
}

}  // namespace pdserve::ops::cuda
