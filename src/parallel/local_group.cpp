#include "parallel/local_group.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace pdserve::parallel {

const char* local_op_name(LocalGroup::Op op) {
  switch (op) {
    case LocalGroup::Op::kBarrier: return "barrier";
    case LocalGroup::Op::kAllReduce: return "all_reduce";
    case LocalGroup::Op::kAllGather: return "all_gather";
    case LocalGroup::Op::kAllGatherV: return "all_gather_v";
    case LocalGroup::Op::kAllToAllV: return "all_to_all_v";
  }
  return "?";
}

std::shared_ptr<LocalGroup> LocalGroup::create(std::string name, std::vector<int> global_ranks, CollectiveOptions opts) {
  return std::shared_ptr<LocalGroup>(new LocalGroup(std::move(name), std::move(global_ranks), opts));
}

LocalGroup::LocalGroup(std::string name, std::vector<int> global_ranks, CollectiveOptions opts)
    : name_(std::move(name)), global_ranks_(std::move(global_ranks)), opts_(opts) {
  posts_.resize(global_ranks_.size());
  here_.assign(global_ranks_.size(), 0);
}

void LocalGroup::abort(const std::string& reason) {
  std::lock_guard lk(mu_);
  if (broken_) return;  // keep the first reason: it is the cause, later ones are consequences
  broken_ = true;
  reason_ = fmt::format("group '{}' aborted: {}", name_, reason);
  cv_.notify_all();
}

bool LocalGroup::broken() const {
  std::lock_guard lk(mu_);
  return broken_;
}

Error LocalGroup::broken_error() const { return Error(ErrorCode::kInternal, reason_); }

Error LocalGroup::fail(Error error) {
  std::lock_guard lk(mu_);
  if (!broken_) {
    broken_ = true;
    reason_ = error.message();
    cv_.notify_all();
  }
  return error;
}

Status LocalGroup::wait_all(int rank, const Post* post, bool arrive) {
  std::unique_lock lk(mu_);
  // The second wait of a collective has no deadline and ignores aborts: every member has passed the
  // first, and in between runs only copies that cannot block, so it always completes. Leaving it
  // early would free this member's tensors while a peer may still be copying from them.
  if (broken_ && arrive) return broken_error();
  if (post) posts_[static_cast<size_t>(rank)] = *post;
  const uint64_t round = round_;
  here_[static_cast<size_t>(rank)] = 1;
  if (++count_ == size()) {
    count_ = 0;
    std::fill(here_.begin(), here_.end(), 0);
    ++round_;
    cv_.notify_all();
    return ok_status();
  }
  if (!arrive) {
    cv_.wait(lk, [&] { return round_ != round; });
    return ok_status();
  }
  const auto deadline = std::chrono::steady_clock::now() + opts_.timeout;
  cv_.wait_until(lk, deadline, [&] { return round_ != round || broken_; });
  if (round_ != round) return ok_status();  // everyone came, even if the group broke since
  if (broken_) return broken_error();
  std::vector<int> missing;
  for (size_t m = 0; m < here_.size(); ++m)
    if (!here_[m]) missing.push_back(global_ranks_[m]);
  const Op op = posts_[static_cast<size_t>(rank)].op;
  broken_ = true;
  reason_ = fmt::format("{} #{} on group '{}' (ranks {}) timed out after {} ms: rank{} {} did not arrive", local_op_name(op),
                        round / 2, name_, fmt::join(global_ranks_, ","), opts_.timeout.count(),
                        missing.size() == 1 ? "" : "s", fmt::join(missing, ", "));
  cv_.notify_all();
  return broken_error();
}

namespace {

using Op = LocalGroup::Op;
using Post = LocalGroup::Post;

int64_t row_elems(const Tensor& t) {
  int64_t e = 1;
  for (int64_t d = 1; d < t.dim(); ++d) e *= t.size(d);
  return e;
}
size_t row_bytes(const Tensor& t) { return static_cast<size_t>(row_elems(t)) * dtype_size(t.dtype()); }

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

template <class T>
void reduce_into(T* acc, const T* x, int64_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: for (int64_t i = 0; i < n; ++i) acc[i] += x[i]; break;
    case ReduceOp::kMax: for (int64_t i = 0; i < n; ++i) acc[i] = std::max(acc[i], x[i]); break;
    case ReduceOp::kMin: for (int64_t i = 0; i < n; ++i) acc[i] = std::min(acc[i], x[i]); break;
  }
}

class LocalMember final : public Communicator {
 public:
  LocalMember(std::shared_ptr<LocalGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return g_->size(); }
  const std::vector<int>& global_ranks() const override { return g_->global_ranks(); }
  const std::string& name() const override { return g_->name(); }
  void abort(const std::string& reason) override { g_->abort(reason); }

  Status barrier() override { return run(Post{}); }

  Status all_reduce(Tensor& inout, ReduceOp op) override {
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_reduce", "inout", inout));
    if (inout.dtype() != DType::kF32 && inout.dtype() != DType::kI32 && inout.dtype() != DType::kI64)
      return local_error(fmt::format("all_reduce: dtype {} is not supported (f32, i32, i64)", dtype_name(inout.dtype())));
    Post p;
    p.op = Op::kAllReduce;
    p.reduce = op;
    p.send = &inout;
    p.recv = &inout;
    return run(p);
  }

  Status all_gather(const Tensor& in, Tensor& out) override {
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_gather", "in", in));
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_gather", "out", out));
    if (out.size(0) != in.size(0) * size() || row_bytes(out) != row_bytes(in) || out.dtype() != in.dtype())
      return local_error(fmt::format("all_gather: out {} {} must be {} rows of in {} {}", dtype_name(out.dtype()),
                                     shape_to_string(out.shape()), size(), dtype_name(in.dtype()),
                                     shape_to_string(in.shape())));
    Post p;
    p.op = Op::kAllGather;
    p.send = &in;
    p.recv = &out;
    return run(p);
  }

  Status all_gather_v(const Tensor& in, const std::vector<int64_t>& rows, Tensor& out) override {
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_gather_v", "in", in));
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_gather_v", "out", out));
    PDSERVE_RETURN_IF_ERROR(check_counts("all_gather_v", "rows", rows));
    if (in.size(0) != rows[static_cast<size_t>(rank_)] || out.size(0) != sum(rows) || row_bytes(out) != row_bytes(in) ||
        out.dtype() != in.dtype())
      return local_error(fmt::format("all_gather_v: in {} and out {} do not match rows [{}] (member {})",
                                     shape_to_string(in.shape()), shape_to_string(out.shape()), fmt::join(rows, ","),
                                     rank_));
    Post p;
    p.op = Op::kAllGatherV;
    p.send = &in;
    p.recv = &out;
    p.send_rows = &rows;
    return run(p);
  }

  Status all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                      const std::vector<int64_t>& recv_rows) override {
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_to_all_v", "send", send));
    PDSERVE_RETURN_IF_ERROR(check_tensor("all_to_all_v", "recv", recv));
    PDSERVE_RETURN_IF_ERROR(check_counts("all_to_all_v", "send_rows", send_rows));
    PDSERVE_RETURN_IF_ERROR(check_counts("all_to_all_v", "recv_rows", recv_rows));
    if (sum(send_rows) != send.size(0) || sum(recv_rows) != recv.size(0))
      return local_error(fmt::format("all_to_all_v: send {} / recv {} rows do not match the counts [{}] / [{}]",
                                     shape_to_string(send.shape()), shape_to_string(recv.shape()),
                                     fmt::join(send_rows, ","), fmt::join(recv_rows, ",")));
    if (row_bytes(send) != row_bytes(recv) || send.dtype() != recv.dtype())
      return local_error(fmt::format("all_to_all_v: send {} {} and recv {} {} rows differ", dtype_name(send.dtype()),
                                     shape_to_string(send.shape()), dtype_name(recv.dtype()),
                                     shape_to_string(recv.shape())));
    Post p;
    p.op = Op::kAllToAllV;
    p.send = &send;
    p.recv = &recv;
    p.send_rows = &send_rows;
    p.recv_rows = &recv_rows;
    return run(p);
  }

 private:
  // A bad argument on one member: break the group so the peers stop waiting, and say why.
  Status local_error(const std::string& what) {
    const std::string msg = fmt::format("{} on group '{}', rank {}", what, name(), global_ranks()[static_cast<size_t>(rank_)]);
    g_->abort(msg);
    return Error(ErrorCode::kInvalidArgument, msg);
  }
  Status check_tensor(const char* op, const char* name, const Tensor& t) {
    if (!t.defined() || t.dim() < 1) return local_error(fmt::format("{}: {} is undefined or 0-d", op, name));
    if (t.device() != Device::kCpu) return local_error(fmt::format("{}: {} is not in host memory", op, name));
    if (!t.is_contiguous()) return local_error(fmt::format("{}: {} is not contiguous", op, name));
    return ok_status();
  }
  Status check_counts(const char* op, const char* name, const std::vector<int64_t>& v) {
    if (static_cast<int>(v.size()) != size())
      return local_error(fmt::format("{}: {} has {} entries for {} members", op, name, v.size(), size()));
    for (int64_t c : v)
      if (c < 0) return local_error(fmt::format("{}: {} has a negative count [{}]", op, name, fmt::join(v, ",")));
    return ok_status();
  }

  Status run(const Post& p) {
    PDSERVE_RETURN_IF_ERROR(g_->wait_all(rank_, &p, /*arrive=*/true));
    const std::vector<Post>& posts = g_->posts();
    const std::string why = disagreement(posts);
    Tensor reduced;
    if (why.empty()) copy(posts, reduced);
    // Wait even when the posts disagree: a peer may still be reading this member's tensors to find
    // the same disagreement, and they live on this member's stack.
    Status departed = g_->wait_all(rank_, nullptr, /*arrive=*/false);
    if (!why.empty())
      return g_->fail(make_error(ErrorCode::kInvalidArgument, "{} on group '{}': members disagree: {}",
                                 local_op_name(p.op), name(), why));
    PDSERVE_RETURN_IF_ERROR(departed);
    // Only now may this member's own tensor change: its peers have finished reading it.
    if (p.op == Op::kAllReduce) std::memcpy(p.recv->raw_data(), reduced.raw_data(), reduced.nbytes());
    return ok_status();
  }

  // Empty when every member's post fits together. Computed from all posts, so every member finds
  // the same answer and they all fail together.
  std::string disagreement(const std::vector<Post>& posts) const {
    const Post& a = posts[0];
    for (size_t m = 1; m < posts.size(); ++m) {
      const Post& b = posts[m];
      if (b.op != a.op)
        return fmt::format("rank {} called {}, rank {} called {}", global_ranks()[0], local_op_name(a.op),
                           global_ranks()[m], local_op_name(b.op));
      if (a.op == Op::kBarrier) continue;
      if (b.send->dtype() != a.send->dtype() || row_bytes(*b.send) != row_bytes(*a.send))
        return fmt::format("rank {} sends {} {}, rank {} sends {} {}", global_ranks()[0], dtype_name(a.send->dtype()),
                           shape_to_string(a.send->shape()), global_ranks()[m], dtype_name(b.send->dtype()),
                           shape_to_string(b.send->shape()));
      if (a.op == Op::kAllReduce && (b.reduce != a.reduce || b.send->numel() != a.send->numel()))
        return fmt::format("reduce op or size differs between ranks {} and {}", global_ranks()[0], global_ranks()[m]);
      if (a.op == Op::kAllGather && b.send->size(0) != a.send->size(0))
        return fmt::format("rank {} gathers {} rows, rank {} gathers {}", global_ranks()[0], a.send->size(0),
                           global_ranks()[m], b.send->size(0));
      if (a.op == Op::kAllGatherV && *b.send_rows != *a.send_rows)
        return fmt::format("rank {} has rows [{}], rank {} has [{}]", global_ranks()[0], fmt::join(*a.send_rows, ","),
                           global_ranks()[m], fmt::join(*b.send_rows, ","));
    }
    if (a.op == Op::kAllToAllV)
      for (size_t s = 0; s < posts.size(); ++s)
        for (size_t d = 0; d < posts.size(); ++d)
          if ((*posts[s].send_rows)[d] != (*posts[d].recv_rows)[s])
            return fmt::format("rank {} sends {} rows to rank {}, which expects {}", global_ranks()[s],
                               (*posts[s].send_rows)[d], global_ranks()[d], (*posts[d].recv_rows)[s]);
    return {};
  }

  void copy(const std::vector<Post>& posts, Tensor& reduced) const {
    const Post& mine = posts[static_cast<size_t>(rank_)];
    char* out = mine.recv ? static_cast<char*>(mine.recv->raw_data()) : nullptr;
    switch (mine.op) {
      case Op::kBarrier: return;
      case Op::kAllReduce: {
        reduced = posts[0].send->clone();
        for (size_t m = 1; m < posts.size(); ++m) {
          const Tensor& x = *posts[m].send;
          if (x.dtype() == DType::kF32) reduce_into(reduced.data<float>(), x.data<float>(), x.numel(), mine.reduce);
          if (x.dtype() == DType::kI32) reduce_into(reduced.data<int32_t>(), x.data<int32_t>(), x.numel(), mine.reduce);
          if (x.dtype() == DType::kI64) reduce_into(reduced.data<int64_t>(), x.data<int64_t>(), x.numel(), mine.reduce);
        }
        return;
      }
      case Op::kAllGather:
      case Op::kAllGatherV: {
        for (const Post& p : posts) {
          std::memcpy(out, p.send->raw_data(), p.send->nbytes());
          out += p.send->nbytes();
        }
        return;
      }
      case Op::kAllToAllV: {
        const size_t rb = row_bytes(*mine.recv);
        for (size_t s = 0; s < posts.size(); ++s) {
          const std::vector<int64_t>& sr = *posts[s].send_rows;
          const int64_t from = std::accumulate(sr.begin(), sr.begin() + rank_, int64_t{0});
          const int64_t rows = sr[static_cast<size_t>(rank_)];
          std::memcpy(out, static_cast<const char*>(posts[s].send->raw_data()) + static_cast<size_t>(from) * rb,
                      static_cast<size_t>(rows) * rb);
          out += static_cast<size_t>(rows) * rb;
        }
        return;
      }
    }
  }

  std::shared_ptr<LocalGroup> g_;
  int rank_;
};

}  // namespace

std::unique_ptr<Communicator> LocalGroup::member(int rank) {
  if (rank < 0 || rank >= size()) return nullptr;
  return std::make_unique<LocalMember>(shared_from_this(), rank);
}

}  // namespace pdserve::parallel
