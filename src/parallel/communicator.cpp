#include "parallel/communicator.h"

#include <algorithm>

namespace pdserve::parallel {

Result<std::vector<int64_t>> Communicator::all_gather_value(int64_t value) {
  Tensor in = Tensor::empty({1}, DType::kI64);
  in.data<int64_t>()[0] = value;
  Tensor out = Tensor::empty({size()}, DType::kI64);
  PDSERVE_RETURN_IF_ERROR(all_gather(in, out));
  return std::vector<int64_t>(out.data<int64_t>(), out.data<int64_t>() + size());
}

Result<std::vector<int64_t>> Communicator::all_to_all_values(const std::vector<int64_t>& send) {
  const int n = size();
  if (static_cast<int>(send.size()) != n) {
    const std::string why = fmt::format("all_to_all_values on group '{}': {} values for {} members", name(), send.size(), n);
    abort(why);  // the peers would otherwise wait for this member until the timeout
    return Error(ErrorCode::kInvalidArgument, why);
  }
  Tensor s = Tensor::empty({n}, DType::kI64), r = Tensor::empty({n}, DType::kI64);
  std::copy(send.begin(), send.end(), s.data<int64_t>());
  const std::vector<int64_t> ones(static_cast<size_t>(n), 1);
  PDSERVE_RETURN_IF_ERROR(all_to_all_v(s, ones, r, ones));
  return std::vector<int64_t>(r.data<int64_t>(), r.data<int64_t>() + n);
}

Status Communicator::all_to_all(const Tensor& send, Tensor& recv) {
  const int n = size();
  const int64_t rows = send.dim() == 0 ? 0 : send.size(0);
  if (rows % n != 0) {
    const std::string why = fmt::format("all_to_all on group '{}': {} rows do not split over {} members", name(), rows, n);
    abort(why);
    return Error(ErrorCode::kInvalidArgument, why);
  }
  const std::vector<int64_t> counts(static_cast<size_t>(n), rows / n);
  return all_to_all_v(send, counts, recv, counts);
}

}  // namespace pdserve::parallel
