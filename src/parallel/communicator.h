// The collectives DP attention and EP MoE need, behind one interface so a rank's code does not
// care whether its peers are threads of this process (LocalGroup, CPU ranks) or GPUs (an NCCL
// communicator later: the calls map one to one onto ncclAllGather / ncclAllReduce / grouped
// ncclSend+ncclRecv, which is why the API is tensors + row counts and not callbacks).
//
// Rules shared by every implementation:
// - Every member calls the same collectives in the same order (SPMD). A rank with no work still
//   calls them with zero rows (the "idle step"): that is what keeps the others from waiting.
// - Every call has a deadline (CollectiveOptions::timeout). A member that does not arrive turns
//   into an error on every member that did, naming the ranks that are missing; the group is then
//   broken and every later call fails at once with the same message (as an aborted NCCL
//   communicator: a collective that half happened cannot be resumed).
// - Arguments that disagree between members (dtypes, row sizes, counts) are an error on every
//   member, never a silent garbage exchange.
// - Tensors are contiguous, row-major; a "row" is one index of dim 0 (one element of a 1-D tensor).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "tensor/tensor.h"

namespace pdserve::parallel {

enum class ReduceOp { kSum, kMax, kMin };

struct CollectiveOptions {
  // How long a member waits for the others in one collective. Generous by default: a prefill step of
  // a large batch on CPU ranks can take many seconds, and a slow peer is not a dead peer.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // this member's index in the group
  virtual int size() const = 0;
  // The members' global ranks (RankLayout numbering), in group order; errors name these.
  virtual const std::vector<int>& global_ranks() const = 0;
  virtual const std::string& name() const = 0;  // "ep", "attn_tp", ... (for messages)

  virtual Status barrier() = 0;
  // Element-wise reduction of `inout` over all members, result in every member's `inout`. f32, i32
  // and i64. Every member gets bitwise the same result (members are reduced in group order).
  virtual Status all_reduce(Tensor& inout, ReduceOp op) = 0;
  // out = concat over members of `in` along dim 0; all `in` have the same shape.
  virtual Status all_gather(const Tensor& in, Tensor& out) = 0;
  // Like all_gather with member m contributing rows[m] rows (rows is the same on every member).
  virtual Status all_gather_v(const Tensor& in, const std::vector<int64_t>& rows, Tensor& out) = 0;
  // Member s sends rows [sum(send_rows[:d]), +send_rows[d]) of `send` to member d, which stores
  // them at rows [sum(recv_rows[:s]), +recv_rows[s]) of `recv`. send_rows[d] on s must equal
  // recv_rows[s] on d. Zero rows to or from anyone is fine.
  virtual Status all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                              const std::vector<int64_t>& recv_rows) = 0;
  // Breaks the group: members waiting now and every later call fail with `reason`. For a rank
  // that failed outside a collective, so its peers stop waiting instead of timing out.
  virtual void abort(const std::string& reason) = 0;

  // Conveniences built on the calls above (the same on every implementation).
  // Every member's `value`, in group order.
  Result<std::vector<int64_t>> all_gather_value(int64_t value);
  // send[d] goes to member d; returns recv[s] = what member s sent here. For exchanging counts.
  Result<std::vector<int64_t>> all_to_all_values(const std::vector<int64_t>& send);
  // The all-to-all of equal-sized blocks: send and recv have size() * rows_per_member rows.
  Status all_to_all(const Tensor& send, Tensor& recv);
};

}  // namespace pdserve::parallel
