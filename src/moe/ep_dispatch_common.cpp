#include "moe/ep_dispatch_common.h"

#include <fmt/format.h>

namespace pdserve::moe::detail {

namespace {
bool host_contiguous(const Tensor& t, DType dtype, int64_t dims) {
  return t.defined() && t.device() == Device::kCpu && t.dtype() == dtype && t.dim() == dims && t.is_contiguous();
}
std::string describe(const Tensor& t) {
  return t.defined() ? fmt::format("{} {}", dtype_name(t.dtype()), shape_to_string(t.shape())) : "undefined";
}
}  // namespace

Status check_topk_ids(const Tensor& topk_ids, int64_t num_experts) {
  if (!host_contiguous(topk_ids, DType::kI32, 2))
    return make_error(ErrorCode::kInvalidArgument, "topk_ids must be a contiguous host i32 [T, K], got {}",
                      describe(topk_ids));
  const int32_t* ids = topk_ids.data<int32_t>();
  for (int64_t i = 0; i < topk_ids.numel(); ++i)
    if (ids[i] < -1 || ids[i] >= num_experts)
      return make_error(ErrorCode::kInvalidArgument, "topk_ids[{}, {}] = {} is outside [-1, {})", i / topk_ids.size(1),
                        i % topk_ids.size(1), ids[i], num_experts);
  return ok_status();
}

Status check_inputs(const parallel::Communicator& ep, const EpGeometry& geo, const Tensor& x, const Tensor& topk_ids,
                    const Tensor* topk_weights) {
  PDSERVE_RETURN_IF_ERROR(geo.validate());
  if (geo.ep_size != ep.size() || geo.ep_rank != ep.rank())
    return make_error(ErrorCode::kInvalidArgument, "EP geometry (rank {} of {}) does not match group '{}' (rank {} of {})",
                      geo.ep_rank, geo.ep_size, ep.name(), ep.rank(), ep.size());
  if (!host_contiguous(x, DType::kF32, 2))
    return make_error(ErrorCode::kInvalidArgument, "x must be a contiguous host f32 [T, H], got {}", describe(x));
  PDSERVE_RETURN_IF_ERROR(check_topk_ids(topk_ids, geo.num_experts));
  if (topk_ids.size(0) != x.size(0))
    return make_error(ErrorCode::kInvalidArgument, "topk_ids {} and x {} disagree on the number of tokens",
                      describe(topk_ids), describe(x));
  if (topk_weights && (!host_contiguous(*topk_weights, DType::kF32, 2) || topk_weights->shape() != topk_ids.shape()))
    return make_error(ErrorCode::kInvalidArgument, "topk_weights must be f32 shaped like topk_ids {}, got {}",
                      describe(topk_ids), describe(*topk_weights));
  return ok_status();
}

}  // namespace pdserve::moe::detail
