// SGLang's kernel, overlap and tuning flags (server/sglang_compat_args.h): taken with a note when
// pdserve already behaves so, refused with the reason when it cannot, removed ones with SGLang's note.
#include "server/sglang_compat_args.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "server/server_args.h"
#include "server/parsed_server_args.h"

namespace pdserve::server {
namespace {

model::ModelConfig config(bool fp8) {
  model::ModelConfig c;
  if (fp8) c.quantization = model::FP8QuantConfig{};
  return c;
}

bool has(const std::vector<std::string>& notes, const std::string& needle) {
  return std::any_of(notes.begin(), notes.end(), [&](const std::string& n) { return n.find(needle) != std::string::npos; });
}

std::string refusal(const ServerArgs& a, bool fp8 = true, const std::string& mode = "null") {
  auto r = a.compat.resolve(config(fp8), mode, false);
  return r.has_value() ? std::string("(accepted)") : r.error().message();
}

// The H100 blog's decode and prefill flags (sglang-spec §1.1) with the GB200 runs' kernel choices.
TEST(SglangCompatArgs, PublishedKernelAndTuningFlagsAreTakenWithANoteEach) {
  const std::string cfg_file = ::testing::TempDir() + "/deepep.json";
  std::ofstream(cfg_file) << R"({"normal_dispatch": {"num_sms": 24}, "normal_combine": {"num_sms": 24}})";
  ServerArgs a = parsed({"--deepep-config", cfg_file, "--disable-overlap-schedule", "--attention-backend", "fa3",
                         "--moe-runner-backend", "deep_gemm", "--kv-cache-dtype", "bf16", "--quantization", "fp8",
                         "--disable-shared-experts-fusion", "--disable-chunked-prefix-cache",
                         "--enable-single-batch-overlap", "--load-balance-method", "round_robin"});
  auto notes = a.compat.resolve(config(true), "decode", true);
  ASSERT_TRUE(notes.has_value()) << notes.error().message();
  EXPECT_EQ(notes->size(), 10u);
  EXPECT_TRUE(has(*notes, "--deepep-config: read (2 keys)"));
  EXPECT_TRUE(has(*notes, "--attention-backend fa3: no effect"));
  EXPECT_TRUE(has(*notes, "--quantization fp8: the checkpoint's own"));
  EXPECT_TRUE(has(*notes, "--enable-single-batch-overlap is accepted but not implemented"));
  EXPECT_FALSE(a.compat.dp_follows_bootstrap_room());
  // /server_info shows them as SGLang names them.
  const auto j = a.to_json();
  EXPECT_EQ(j.at("attention_backend"), "fa3");
  EXPECT_EQ(j.at("disable_overlap_schedule"), true);
  EXPECT_EQ(j.at("load_balance_method"), "round_robin");
  // Nothing given: no notes, the room decides the DP rank.
  ServerArgs none = parsed({});
  EXPECT_TRUE(none.compat.resolve(config(false), "null", false)->empty());
  EXPECT_TRUE(none.compat.dp_follows_bootstrap_room());
  // DeepEP tuning as inline JSON text, and without the DeepEP backend.
  auto inline_cfg = parsed({"--deepep-config", R"({"a": 1})"}).compat.resolve(config(false), "null", false);
  ASSERT_TRUE(inline_cfg.has_value());
  EXPECT_TRUE(has(*inline_cfg, "no effect without --moe-a2a-backend deepep"));
}

TEST(SglangCompatArgs, WhatWouldChangeTheResultsIsRefusedWithTheWayOut) {
  EXPECT_NE(refusal(parsed({"--kv-cache-dtype", "fp8_e4m3"})).find("use auto or bf16"), std::string::npos);
  EXPECT_NE(refusal(parsed({"--quantization", "modelopt_fp4"})).find("--quantization modelopt_fp4 is not in this build"),
            std::string::npos);
  EXPECT_NE(refusal(parsed({"--quantization", "fp8"}), /*fp8=*/false).find("online FP8 quantization"), std::string::npos);
  EXPECT_NE(refusal(parsed({"--load-balance-method", "total_tokens"})).find("use auto"), std::string::npos);
  EXPECT_NE(refusal(parsed({"--load-balance-method", "round_robin"}), true, "prefill").find("must follow the room"),
            std::string::npos);
  EXPECT_EQ(refusal(parsed({"--load-balance-method", "follow_bootstrap_room"}), true, "prefill"), "(accepted)");
  EXPECT_NE(refusal(parsed({"--deepep-config", "/nonexistent/deepep.json"})).find("no such file"), std::string::npos);
  EXPECT_NE(refusal(parsed({"--deepep-config", "{not json"})).find("not a JSON object"), std::string::npos);
  // Values SGLang does not know fail at parse time, naming its choices.
  EXPECT_THROW(parsed({"--attention-backend", "fastest"}), CLI::ValidationError);
  EXPECT_THROW(parsed({"--kv-cache-dtype", "fp9"}), CLI::ValidationError);
}

TEST(SglangCompatArgs, FlagsSglangRemovedAreRefusedWithItsNote) {
  try {
    parsed({"--enable-deepep-moe"});
    ADD_FAILURE() << "--enable-deepep-moe was taken";
  } catch (const CLI::ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("use --moe-a2a-backend deepep"), std::string::npos) << e.what();
  }
  try {
    parsed({"--enable-ep-moe"});
    ADD_FAILURE() << "--enable-ep-moe was taken";
  } catch (const CLI::ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("--ep-size to the same value as --tp-size"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pdserve::server
