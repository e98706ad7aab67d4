// DeepseekV3GpuModel in a build without CUDA (PDSERVE_CUDA=OFF): every entry point says so, so
// that `--device cuda` fails with a clear message instead of a link error.
#include "model/deepseek_v3_gpu.h"

#include <cstdlib>

#ifndef PDSERVE_HAVE_CUDA

namespace pdserve::model {

struct DeepseekV3GpuModel::Impl {};
DeepseekV3GpuModel::DeepseekV3GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeepseekV3GpuModel::~DeepseekV3GpuModel() = default;
bool cuda_device_available() { return false; }
Result<std::unique_ptr<DeepseekV3GpuModel>> DeepseekV3GpuModel::create(std::shared_ptr<const DeepseekV3Model>,
                                                                       const GpuModelOptions&) {
  return make_error(ErrorCode::kUnsupported, "--device cuda: this build has no CUDA (configure with PDSERVE_CUDA=ON)");
}
const ModelConfig& DeepseekV3GpuModel::config() const { std::abort(); }
int64_t DeepseekV3GpuModel::num_pages() const { return 0; }
int64_t DeepseekV3GpuModel::page_size() const { return 0; }
const GpuMemoryReport& DeepseekV3GpuModel::memory() const { std::abort(); }
Tensor DeepseekV3GpuModel::kv_cache() const { return Tensor(); }
Result<Tensor> DeepseekV3GpuModel::forward(const std::vector<SequenceInput>&, const ForwardOptions&) {
  return make_error(ErrorCode::kUnsupported, "no CUDA in this build");
}
Result<Tensor> DeepseekV3GpuModel::forward_eager(const std::vector<SequenceInput>&, const ForwardOptions&, bool) {
  return make_error(ErrorCode::kUnsupported, "no CUDA in this build");
}
bool DeepseekV3GpuModel::last_forward_used_graph() const { return false; }
bool DeepseekV3GpuModel::counts_experts() const { return false; }
void DeepseekV3GpuModel::set_routed_experts(std::shared_ptr<RoutedExperts>) {}
Status DeepseekV3GpuModel::idle_forward(RoutedExperts&) { return make_error(ErrorCode::kUnsupported, "no CUDA in this build"); }
Status DeepseekV3GpuModel::capture_routed_graphs() { return make_error(ErrorCode::kUnsupported, "no CUDA in this build"); }
Result<std::vector<int32_t>> DeepseekV3GpuModel::forward_sample(const std::vector<SequenceInput>&,
                                                                const std::vector<RowSampling>&, RoutingTrace*,
                                                                ExpertCounts*) {
  return make_error(ErrorCode::kUnsupported, "no CUDA in this build");
}

}  // namespace pdserve::model

#endif  // PDSERVE_HAVE_CUDA
