// The golden tiny-bf16 checkpoint (tests/golden), loaded once per test binary: the real model the
// scheduler tests run their requests through.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "model/deepseek_v3.h"

namespace pdserve::scheduler {

inline const std::string kTinyModel = std::string(PDSERVE_SOURCE_DIR) + "/tests/golden/data/tiny-bf16";

inline std::shared_ptr<const model::DeepseekV3Model> tiny_model() {
  static std::shared_ptr<const model::DeepseekV3Model> m = [] {
    auto r = model::DeepseekV3Model::load(kTinyModel, {});
    EXPECT_TRUE(r.has_value());
    return std::shared_ptr<const model::DeepseekV3Model>(std::move(*r));
  }();
  return m;
}

}  // namespace pdserve::scheduler
