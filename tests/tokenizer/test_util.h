// Shared helpers of the tokenizer tests: where the DeepSeek-V3 files are, and running the Node
// peer (tests/tokenizer/node/peer.mjs) as a child process.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <system_error>

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace pdserve::tokenizer::testing {

inline std::filesystem::path source_dir() { return PDSERVE_SOURCE_DIR; }
// scripts/setup.sh copies the npm package's files here.
inline std::filesystem::path model_dir() { return source_dir() / "models" / "deepseek-v3"; }
inline std::filesystem::path node_dir() { return source_dir() / "tests" / "tokenizer" / "node"; }

// Loaded once per test program (half a second each time otherwise).
inline std::shared_ptr<const Tokenizer> deepseek() {
  static std::shared_ptr<const Tokenizer> tok = [] {
    auto r = Tokenizer::load(model_dir());
    if (!r) {
      ADD_FAILURE() << "cannot load the DeepSeek-V3 tokenizer (run scripts/setup.sh): " << r.error().message();
      return std::shared_ptr<const Tokenizer>();
    }
    return std::shared_ptr<const Tokenizer>(std::move(*r));
  }();
  return tok;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

// Runs a shell command, returns its exit status and fills `output` with stdout+stderr.
inline int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  std::string out;
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The node binary from PATH (empty if none).
inline std::string node_binary() {
  std::string out;
  if (run_command("command -v node", &out) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// A file in this test process's own temporary folder, removed when the process exits.
inline std::filesystem::path temp_path(const std::string& name) {
  struct Folder {
    std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("pdserve_tok_" + std::to_string(::getpid()));
    Folder() { std::filesystem::create_directories(dir); }
    ~Folder() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static Folder folder;
  return folder.dir / name;
}

inline void write_file(const std::filesystem::path& p, const std::string& data) {
  std::ofstream f(p, std::ios::binary);
  f << data;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `node peer.mjs MODE in.json out.json` and returns out.json parsed. Fails the test (and
// returns null) when Node or the npm packages are missing: CI must have them (scripts/setup.sh).
inline nlohmann::json run_peer(const std::string& mode, const nlohmann::json& input) {
  const std::string node = node_binary();
  if (node.empty()) {
    ADD_FAILURE() << "node is not on PATH (scripts/setup.sh installs it)";
    return nullptr;
  }
  if (!std::filesystem::exists(node_dir() / "node_modules" / "@lenml" / "tokenizers")) {
    ADD_FAILURE() << "npm packages missing in " << node_dir() << " (run scripts/setup.sh)";
    return nullptr;
  }
  const auto in = temp_path(mode + "_in.json"), out = temp_path(mode + "_out.json");
  write_file(in, input.dump());
  std::string log;
  const std::string cmd = shell_quote(node) + " " + shell_quote((node_dir() / "peer.mjs").string()) + " " + mode + " " +
                          shell_quote(in.string()) + " " + shell_quote(out.string());
  const int rc = run_command(cmd, &log);
  if (rc != 0) {
    ADD_FAILURE() << "node peer failed (" << rc << "): " << log;
    return nullptr;
  }
  return nlohmann::json::parse(read_file(out));
}

}  // namespace pdserve::tokenizer::testing
