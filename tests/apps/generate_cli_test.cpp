// `pdserve generate` as a user runs it: real process, real files. Good runs reproduce HF's
// logits; every broken input gives a one-line error naming the file and the problem, exit 1 or 2,
// never a crash.
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(PDSERVE_SOURCE_DIR) + "/tests/golden/data/";

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class GenerateCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() /
           ("pdserve_cli_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override { fs::remove_all(tmp_); }

  RunResult run(const std::string& args) {
    const auto out = tmp_ / "stdout.txt", err = tmp_ / "stderr.txt";
    const std::string cmd = std::string(PDSERVE_BINARY) + " " + args + " > " + out.string() + " 2> " + err.string();
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  fs::path write(const std::string& name, const std::string& content) {
    const auto p = tmp_ / name;
    std::ofstream(p) << content;
    return p;
  }

  // A private copy of a golden checkpoint to break.
  fs::path copy_model(const std::string& name) {
    const auto dst = tmp_ / name;
    fs::copy(kData + name, dst, fs::copy_options::recursive);
    return dst;
  }

  // Asserts a clean failure: exit 1 (or 2 for usage), one "error: ..." line holding every needle.
  void expect_clean_error(const RunResult& r, const std::vector<std::string>& needles, int code = 1) {
    EXPECT_EQ(r.exit_code, code) << r.err;
    // Log lines may precede it; exactly one line is the error.
    std::string err_line;
    int error_lines = 0;
    std::istringstream lines(r.err);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind("error: ", 0) == 0) {
        err_line = line;
        ++error_lines;
      }
    EXPECT_EQ(error_lines, 1) << r.err;
    for (const auto& n : needles) EXPECT_NE(err_line.find(n), std::string::npos) << "missing '" << n << "' in: " << r.err;
  }

  fs::path tmp_;
};

TEST_F(GenerateCliTest, ReproducesHuggingFaceLogitsForBf16AndFp8) {
  for (const std::string name : {"tiny-bf16", "tiny-fp8"}) {
    nlohmann::json golden = nlohmann::json::parse(slurp(kData + name + "/golden.json"));
    const auto prompts = write("prompts.json", golden["prompts"].dump());
    const auto out = tmp_ / "out.json";
    auto r = run("generate --model-path " + kData + name + " --input-ids-file " + prompts.string() +
                 " --max-new-tokens 4 --ignore-eos --return-logits --output-json " + out.string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("tok/s"), std::string::npos) << r.out;
    auto j = nlohmann::json::parse(slurp(out));
    ASSERT_EQ(j["outputs"].size(), golden["prompts"].size());
    for (size_t i = 0; i < golden["prompts"].size(); ++i) {
      const auto got = j["outputs"][i]["prompt_last_logits"].get<std::vector<double>>();
      const auto want = golden["last_logits"][i].get<std::vector<double>>();
      ASSERT_EQ(got.size(), want.size());
      double num = 0, den = 0;
      for (size_t k = 0; k < want.size(); ++k) {
        num += (got[k] - want[k]) * (got[k] - want[k]);
        den += want[k] * want[k];
      }
      EXPECT_LT(std::sqrt(num / den), 1e-3) << name << " prompt " << i;
      const auto ids = j["outputs"][i]["output_ids"].get<std::vector<int>>();
      EXPECT_EQ(ids.size(), 4u);
      // The first greedy token is always clear in these goldens (margins > 1e-3).
      EXPECT_EQ(ids[0], golden["greedy"][i]["tokens"][0].get<int>()) << name << " prompt " << i;
    }
  }
}

TEST_F(GenerateCliTest, DummyWeightsRunWithoutCheckpoint) {
  const auto prompts = write("p.json", "[[1, 2, 3], [7]]");
  auto r = run("generate --model-path " + std::string(PDSERVE_SOURCE_DIR) +
               "/models/tiny-deepseek-v3 --load-format dummy --input-ids-file " + prompts.string() + " --max-new-tokens 3 --ignore-eos");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prompt 1: output_ids ["), std::string::npos) << r.out;
  // Same seed, same output: dummy weights are deterministic.
  auto again = run("generate --model-path " + std::string(PDSERVE_SOURCE_DIR) +
                   "/models/tiny-deepseek-v3 --load-format dummy --input-ids-file " + prompts.string() + " --max-new-tokens 3 --ignore-eos");
  EXPECT_EQ(r.out.substr(0, r.out.find("prompts:")), again.out.substr(0, again.out.find("prompts:")));
}

// --json-model-override-args reaches the model, not only the config: two layers of the dummy model
// decode differently from its four; a bad override is one clean error naming the flag.
TEST_F(GenerateCliTest, JsonModelOverrideArgsChangeTheModel) {
  const auto prompts = write("p.json", "[[1, 2, 3], [7]]");
  const std::string base = "generate --model-path " + std::string(PDSERVE_SOURCE_DIR) +
                           "/models/tiny-deepseek-v3 --load-format dummy --input-ids-file " + prompts.string() +
                           " --max-new-tokens 6 --ignore-eos ";
  auto ids = [](const RunResult& r) { return r.out.substr(0, r.out.find("prompts:")); };
  auto four = run(base), two = run(base + "--json-model-override-args '{\"num_hidden_layers\": 2}'");
  ASSERT_EQ(four.exit_code, 0) << four.err;
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_NE(ids(four), ids(two)) << "a two-layer model decoded exactly as the four-layer one";
  auto same = run(base + "--json-model-override-args '{}'");
  EXPECT_EQ(ids(four), ids(same));
  expect_clean_error(run(base + "--json-model-override-args '[2]'"), {"--json-model-override-args", "JSON object"});
  expect_clean_error(run(base + "--json-model-override-args '{\"num_hidden_layers\": -1}'"),
                     {"--json-model-override-args", "num_hidden_layers"});
}

TEST_F(GenerateCliTest, SeededSamplingIsReproducible) {
  const auto prompts = write("p.json", "[[3, 4, 5], [9, 10]]");
  const std::string base = "generate --model-path " + kData + "tiny-bf16 --input-ids-file " + prompts.string() +
                           " --max-new-tokens 12 --ignore-eos --top-k 50 --min-p 0.01 ";
  const std::string sampled = base + "--temperature 1.5 --top-p 0.95 ";
  auto ids = [](const RunResult& r) { return r.out.substr(0, r.out.find("prompts:")); };
  auto a = run(sampled + "--seed 5"), b = run(sampled + "--seed 5"), c = run(sampled + "--seed 6");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(ids(a), ids(b));
  EXPECT_NE(ids(a), ids(c));  // 24 draws at temperature 1.5 over ~50 candidates: equal only by a fluke
  expect_clean_error(run(base + "--temperature 1 --top-p 0"), {"--top-p"});
  expect_clean_error(run(base + "--temperature -1"), {"--temperature"});
  expect_clean_error(run(sampled + "--top-p 0.5"), {"--top-p"}, 2);  // given twice: a usage error
}

TEST_F(GenerateCliTest, TruncatedShard) {
  const auto dir = copy_model("tiny-bf16");
  const auto shard = dir / "model-00003-of-00012.safetensors";
  fs::resize_file(shard, fs::file_size(shard) / 2);
  const auto prompts = write("p.json", "[[5]]");
  expect_clean_error(run("generate --model-path " + dir.string() + " --input-ids-file " + prompts.string()),
                     {"model-00003-of-00012.safetensors"});
}

TEST_F(GenerateCliTest, CorruptHeader) {
  const auto dir = copy_model("tiny-fp8");
  const auto shard = dir / "model-00002-of-00003.safetensors";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write("\x01garbage{{{", 11);
  }
  const auto prompts = write("p.json", "[[5]]");
  expect_clean_error(run("generate --model-path " + dir.string() + " --input-ids-file " + prompts.string()),
                     {"model-00002-of-00003.safetensors"});
}

TEST_F(GenerateCliTest, MissingShard) {
  const auto dir = copy_model("tiny-bf16");
  fs::remove(dir / "model-00005-of-00012.safetensors");
  const auto prompts = write("p.json", "[[5]]");
  expect_clean_error(run("generate --model-path " + dir.string() + " --input-ids-file " + prompts.string()),
                     {"model-00005-of-00012.safetensors"});
}

TEST_F(GenerateCliTest, WeightsDoNotMatchConfig) {
  const auto dir = copy_model("tiny-noq-bf16");
  auto cfg = nlohmann::json::parse(slurp(dir / "config.json"));
  cfg["moe_intermediate_size"] = 80;
  std::ofstream(dir / "config.json") << cfg.dump();
  const auto prompts = write("p.json", "[[5]]");
  expect_clean_error(run("generate --model-path " + dir.string() + " --input-ids-file " + prompts.string()),
                     {"mlp.experts.0.gate_proj.weight", "shape", "expected"});
}

TEST_F(GenerateCliTest, BadConfigs) {
  const auto dir = copy_model("tiny-noq-bf16");
  const auto prompts = write("p.json", "[[5]]");
  const std::string cmd = "generate --model-path " + dir.string() + " --input-ids-file " + prompts.string();
  auto cfg = nlohmann::json::parse(slurp(dir / "config.json"));
  auto broken = cfg;
  broken.erase("hidden_size");
  std::ofstream(dir / "config.json") << broken.dump();
  expect_clean_error(run(cmd), {"config.json", "hidden_size"});
  std::ofstream(dir / "config.json") << "{\"vocab_size\": 10,";
  expect_clean_error(run(cmd), {"config.json"});
  fs::remove(dir / "config.json");
  expect_clean_error(run(cmd), {"config.json"});
}

TEST_F(GenerateCliTest, BadPrompts) {
  const std::string model = "generate --model-path " + kData + "tiny-noq-bf16 --input-ids-file ";
  expect_clean_error(run(model + write("a.json", "[[1, 2, 512]]").string()), {"a.json", "512", "out of range"});
  expect_clean_error(run(model + write("b.json", "[[1], []]").string()), {"b.json", "prompt 1 is empty"});
  expect_clean_error(run(model + write("c.json", "[[1, -1]]").string()), {"c.json", "-1"});
  expect_clean_error(run(model + write("d.json", "{\"x\": 1}").string()), {"d.json"});
  expect_clean_error(run(model + write("e.json", "[[1, 2").string()), {"e.json", "JSON"});
  expect_clean_error(run(model + (tmp_ / "missing.json").string()), {"missing.json"});
}

TEST_F(GenerateCliTest, NoWeightsAndUnknownFlags) {
  const auto prompts = write("p.json", "[[5]]");
  expect_clean_error(run("generate --model-path " + std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3 --input-ids-file " +
                         prompts.string()),
                     {"safetensors", "--load-format dummy"});
  expect_clean_error(run("generate --model-path x --input-ids-file y --no-such-flag"), {"--no-such-flag"}, 2);
  expect_clean_error(run("generate --model-path " + kData + "tiny-noq-bf16 --input-ids-file " + prompts.string() +
                         " --load-format pt"),
                     {"--load-format"});
}

}  // namespace
