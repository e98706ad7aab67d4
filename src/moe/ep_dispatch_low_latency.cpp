#include "moe/ep_dispatch_low_latency.h"

#include <charconv>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "moe/ep_dispatch_common.h"
#include "ops/moe_dispatch.h"

namespace pdserve::moe {

Result<int64_t> parse_max_dispatch_tokens_per_rank(const std::optional<std::string>& value, const char* name) {
  if (!value) return kDefaultMaxDispatchTokensPerRank;
  int64_t v = 0;
  const char* b = value->data();
  const char* e = b + value->size();
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || v < 1 || v > kMaxDispatchTokensPerRankLimit)
    return make_error(ErrorCode::kInvalidArgument, "{}='{}' must be an integer in [1, {}]", name, *value,
                      kMaxDispatchTokensPerRankLimit);
  return v;
}

Result<int64_t> max_dispatch_tokens_per_rank_from_env() {
  for (const char* name : {"SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "PDSERVE_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"})
    if (const char* v = std::getenv(name)) return parse_max_dispatch_tokens_per_rank(std::string(v), name);
  return kDefaultMaxDispatchTokensPerRank;
}

Result<LowLatencyDispatcher> LowLatencyDispatcher::create(const EpGeometry& geo, int64_t hidden, int64_t max_tokens) {
  PDSERVE_RETURN_IF_ERROR(geo.validate());
  if (hidden < 1) return make_error(ErrorCode::kInvalidArgument, "low-latency dispatch: hidden {} must be >= 1", hidden);
  if (max_tokens < 1 || max_tokens > kMaxDispatchTokensPerRankLimit)
    return make_error(ErrorCode::kInvalidArgument, "low-latency dispatch: max tokens per rank {} must be in [1, {}]",
                      max_tokens, kMaxDispatchTokensPerRankLimit);
  LowLatencyDispatcher d;
  d.geo_ = geo;
  d.hidden_ = hidden;
  d.max_tokens_ = max_tokens;
  d.recv_x_ = Tensor::empty({geo.local_experts(), geo.ep_size * max_tokens, hidden}, DType::kF32);
  d.recv_count_ = Tensor::empty({geo.local_experts()}, DType::kI32);
  return d;
}

Status LowLatencyDispatcher::dispatch(parallel::Communicator& ep, const Tensor& x, const Tensor& topk_ids) {
  PDSERVE_RETURN_IF_ERROR(detail::abort_on_error(ep, detail::check_inputs(ep, geo_, x, topk_ids, nullptr)));
  const int64_t T = x.size(0), H = hidden_, K = topk_ids.size(1), R = geo_.ep_size, G = geo_.local_experts();
  if (x.size(1) != H || T > max_tokens_)
    return detail::abort_on_error(
        ep, Status(make_error(ErrorCode::kInvalidArgument,
                              "low-latency dispatch: x {} must be [T <= {}, {}] (T above the limit: raise "
                              "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK or lower the decode batch)",
                              shape_to_string(x.shape()), max_tokens_, H)));

  // Send order: destination rank, then its local expert, then token. cnt[d * G + g] rows each.
  std::vector<int64_t> cnt(static_cast<size_t>(R * G), 0);
  const int32_t* ids = topk_ids.data<int32_t>();
  for (int64_t i = 0; i < T * K; ++i)
    if (ids[i] >= 0) ++cnt[static_cast<size_t>(ids[i])];  // global id e == d * G + g
  std::vector<int64_t> base(static_cast<size_t>(R * G), 0);
  for (size_t b = 1; b < base.size(); ++b) base[b] = base[b - 1] + cnt[b - 1];
  const int64_t total = R * G == 0 ? 0 : base.back() + cnt.back();
  Tensor send_x = send_x_.view({total, H}, DType::kF32);
  send_slots_ = slots_.view({T, K}, DType::kI32);
  {
    std::vector<int64_t> next = base;
    // Block (d, g) is global expert d * G + g; walking tokens in order fills each block in token order.
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int32_t e = ids[t * K + j];
        int32_t slot = -1;
        if (e >= 0) {
          const int64_t row = next[static_cast<size_t>(e)]++;
          slot = static_cast<int32_t>(row);
          std::memcpy(send_x.data<float>() + row * H, x.data<float>() + t * H, sizeof(float) * H);
        }
        send_slots_.data<int32_t>()[t * K + j] = slot;
      }
  }
  send_rows_.assign(static_cast<size_t>(R), 0);
  for (int64_t d = 0; d < R; ++d)
    for (int64_t g = 0; g < G; ++g) send_rows_[static_cast<size_t>(d)] += cnt[static_cast<size_t>(d * G + g)];

  // Fixed-size count exchange (R * G values each way), then the variable rows.
  Tensor cnt_send = Tensor::empty({R * G}, DType::kI64), cnt_recv = Tensor::empty({R * G}, DType::kI64);
  std::memcpy(cnt_send.data<int64_t>(), cnt.data(), sizeof(int64_t) * cnt.size());
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all(cnt_send, cnt_recv));
  recv_per_expert_.assign(cnt_recv.data<int64_t>(), cnt_recv.data<int64_t>() + R * G);
  recv_rows_.assign(static_cast<size_t>(R), 0);
  int64_t n_recv = 0;
  for (int64_t s = 0; s < R; ++s) {
    for (int64_t g = 0; g < G; ++g) recv_rows_[static_cast<size_t>(s)] += recv_per_expert_[static_cast<size_t>(s * G + g)];
    n_recv += recv_rows_[static_cast<size_t>(s)];
  }
  Tensor staging = staging_.view({n_recv, H}, DType::kF32);
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all_v(send_x, send_rows_, staging, recv_rows_));

  // Staging holds (source rank, local expert, token) order; slabs want (expert, source, token).
  int32_t* count = recv_count_.data<int32_t>();
  std::memset(count, 0, recv_count_.nbytes());
  const int64_t slab = R * max_tokens_;
  int64_t row = 0;
  for (int64_t s = 0; s < R; ++s)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t n = recv_per_expert_[static_cast<size_t>(s * G + g)];
      std::memcpy(recv_x_.data<float>() + (g * slab + count[g]) * H, staging.data<float>() + row * H,
                  sizeof(float) * static_cast<size_t>(n * H));
      count[g] += static_cast<int32_t>(n);
      row += n;
    }
  num_tokens_ = T;
  top_k_ = K;
  pending_ = true;
  return ok_status();
}

Status LowLatencyDispatcher::combine(parallel::Communicator& ep, const Tensor& expert_out, const Tensor& topk_weights,
                                     Tensor& out) {
  const int64_t H = hidden_, R = geo_.ep_size, G = geo_.local_experts(), slab = R * max_tokens_;
  auto bad = [&](const std::string& why) {
    return detail::abort_on_error(ep, Status(Error(ErrorCode::kInvalidArgument, "low-latency combine: " + why)));
  };
  if (!pending_) return bad("no dispatch to combine (call dispatch first; each dispatch is combined once)");
  pending_ = false;
  if (!expert_out.defined() || expert_out.dtype() != DType::kF32 || !expert_out.is_contiguous() ||
      expert_out.shape() != Shape{G, slab, H})
    return bad(fmt::format("expert_out must be f32 [{}, {}, {}]", G, slab, H));
  if (!topk_weights.defined() || topk_weights.dtype() != DType::kF32 || topk_weights.shape() != Shape{num_tokens_, top_k_})
    return bad(fmt::format("topk_weights must be f32 [{}, {}] like the dispatched topk_ids", num_tokens_, top_k_));
  if (!out.defined() || out.dtype() != DType::kF32 || out.shape() != Shape{num_tokens_, H})
    return bad(fmt::format("out must be f32 [{}, {}]", num_tokens_, H));

  // Rows go back in the order they arrived: (source rank, local expert, token).
  int64_t n_recv = 0, n_back = 0;
  for (int64_t c : recv_rows_) n_recv += c;
  for (int64_t c : send_rows_) n_back += c;
  Tensor send = send_back_.view({n_recv, H}, DType::kF32);
  std::vector<int64_t> taken(static_cast<size_t>(G), 0);
  int64_t row = 0;
  for (int64_t s = 0; s < R; ++s)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t n = recv_per_expert_[static_cast<size_t>(s * G + g)];
      std::memcpy(send.data<float>() + row * H, expert_out.data<float>() + (g * slab + taken[static_cast<size_t>(g)]) * H,
                  sizeof(float) * static_cast<size_t>(n * H));
      taken[static_cast<size_t>(g)] += n;
      row += n;
    }
  Tensor back = recv_back_.view({n_back, H}, DType::kF32);
  PDSERVE_RETURN_IF_ERROR(ep.all_to_all_v(send, recv_rows_, back, send_rows_));
  ops::moe_combine(back, send_slots_, topk_weights, out);
  return ok_status();
}

}  // namespace pdserve::moe
