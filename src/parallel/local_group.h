// Communicator for CPU ranks that are threads of one process: members exchange data through shared
// memory, each member copying straight out of its peers' send tensors (one copy, like a GPU reading
// a peer's buffer over NVLink). Nothing spins, so eight ranks run on a two-core machine.
//
// One collective = post (tensors + counts) -> wait for all -> check the members agree -> copy ->
// wait for all again (a peer may still be reading this member's send tensor) -> return. The first
// wait has the group's deadline; a member that is late makes the group broken for good (see
// communicator.h), and the message names the ranks that did not arrive. The second wait has none:
// past the first, members only run copies that cannot block.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace pdserve::parallel {

class LocalGroup : public std::enable_shared_from_this<LocalGroup> {
 public:
  // `global_ranks` are the members' RankLayout numbers (used in messages only), in group order.
  static std::shared_ptr<LocalGroup> create(std::string name, std::vector<int> global_ranks,
                                            CollectiveOptions opts = {});

  // The handle of member `rank` (0 .. size-1). Each member's handle is used by one thread at a time;
  // handles keep the group alive.
  std::unique_ptr<Communicator> member(int rank);

  int size() const { return static_cast<int>(global_ranks_.size()); }
  const std::string& name() const { return name_; }
  const std::vector<int>& global_ranks() const { return global_ranks_; }
  void abort(const std::string& reason);
  bool broken() const;

  // What one member brought to a collective. Internal to the implementation; public so the member
  // class in the .cpp can fill it.
  enum class Op { kBarrier, kAllReduce, kAllGather, kAllGatherV, kAllToAllV };
  struct Post {
    Op op = Op::kBarrier;
    ReduceOp reduce = ReduceOp::kSum;
    const Tensor* send = nullptr;
    Tensor* recv = nullptr;
    const std::vector<int64_t>* send_rows = nullptr;
    const std::vector<int64_t>* recv_rows = nullptr;
  };
  // Posts `post` and waits for every member to post (arrive = true; errors: the deadline passed, and
  // the group breaks, or it was broken), or waits for every member to finish copying (arrive =
  // false; always completes).
  Status wait_all(int rank, const Post* post, bool arrive);
  // The posts of the collective in progress; valid between the two waits.
  const std::vector<Post>& posts() const { return posts_; }
  // Breaks the group with `error`'s message and returns it (for disagreements found after arrival).
  Error fail(Error error);

 private:
  LocalGroup(std::string name, std::vector<int> global_ranks, CollectiveOptions opts);
  Error broken_error() const;  // requires mu_

  const std::string name_;
  const std::vector<int> global_ranks_;
  const CollectiveOptions opts_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Post> posts_;
  std::vector<char> here_;   // members waiting in the current round
  int count_ = 0;            // how many of them
  uint64_t round_ = 0;       // completed rounds (two per collective)
  bool broken_ = false;
  std::string reason_;
};

const char* local_op_name(LocalGroup::Op op);

}  // namespace pdserve::parallel
