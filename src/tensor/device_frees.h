// Deferred device frees for processes where GPU EP ranks share a GPU (see the class comment).
#pragma once

namespace pdserve {

// While a GPU EP group is alive its ranks' kernels spin waiting for each other, and cudaFree waits
// for every kernel on the device: one rank freeing a tensor would wait for a peer that waits for
// it (a deadlock until the group timeout). While at least one DeferredDeviceFrees exists, device
// frees go to a cache of the freeing thread and later allocations of the same rounded size on
// that thread reuse them. Reuse is safe because a rank thread orders all its work on its own
// stream: a reused block's new writes queue behind the old reads. The caches are released when
// their thread exits. PDSERVE_DEBUG_DEVICE_ALLOC=1 logs every device allocation and free made
// while deferral is on (to find the call that would have stalled a group).
class DeferredDeviceFrees {
 public:
  DeferredDeviceFrees();
  ~DeferredDeviceFrees();
  DeferredDeviceFrees(const DeferredDeviceFrees&) = delete;
  DeferredDeviceFrees& operator=(const DeferredDeviceFrees&) = delete;

 private:
  [[maybe_unused]] bool active_ = false;  // read only in CUDA builds
};

}  // namespace pdserve
