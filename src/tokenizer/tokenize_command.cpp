#include "tokenizer/tokenize_command.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/json.h"
#include "base/logging.h"
#include "base/thread_pool.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

struct TokenizeCli {
  std::filesystem::path tokenizer_path, model_path, input_file, output_json;
  bool add_special_tokens = false, decode = false, skip_special_tokens = false;
  std::string log_level = "warning";
};

// Reads the file as bytes and parses it; nlohmann rejects invalid UTF-8 inside strings, so bad
// text is reported here with the byte position.
Result<nlohmann::json> read_input(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "{}: cannot open the input file", file.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    std::string message;  // the parser quotes what it read, which may be the invalid bytes themselves
    append_utf8_lossy(e.what(), message);
    return make_error(ErrorCode::kInvalidArgument, "{}: {}", file.string(), message);
  }
}

Result<nlohmann::json> run(const TokenizeCli& cli) {
  const auto dir = resolve_tokenizer_dir(cli.model_path, cli.tokenizer_path);
  PDSERVE_ASSIGN_OR_RETURN(auto tok, Tokenizer::load(dir));
  PDSERVE_ASSIGN_OR_RETURN(auto input, read_input(cli.input_file));
  const std::string src = cli.input_file.string();
  if (!input.is_array())
    return make_error(ErrorCode::kInvalidArgument, "{}: expected a JSON list of {}", src,
                      cli.decode ? "id lists" : "strings");
  if (cli.decode) {
    nlohmann::json texts = nlohmann::json::array();
    for (size_t i = 0; i < input.size(); ++i) {
      if (!input[i].is_array()) return make_error(ErrorCode::kInvalidArgument, "{}: item {} is not a list of ids", src, i);
      std::vector<int32_t> ids;
      for (size_t k = 0; k < input[i].size(); ++k) {
        const auto& v = input[i][k];
        if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
          return make_error(ErrorCode::kInvalidArgument, "{}: item {} position {} is not a 32-bit integer", src, i, k);
        ids.push_back(v.get<int32_t>());
      }
      auto text = tok->decode(ids, cli.skip_special_tokens);
      if (!text) return text.error().with_context(fmt::format("{}: item {}", src, i));
      texts.push_back(std::move(*text));
    }
    return nlohmann::json{{"texts", std::move(texts)}};
  }
  std::vector<std::string> texts;
  for (size_t i = 0; i < input.size(); ++i) {
    if (!input[i].is_string()) return make_error(ErrorCode::kInvalidArgument, "{}: item {} is not a string", src, i);
    texts.push_back(input[i].get<std::string>());
  }
  ThreadPool pool(std::max<size_t>(1, ThreadPool::default_size() - 1));  // the calling thread works too
  auto ids = tok->batch_encode(std::span<const std::string>(texts), cli.add_special_tokens, pool);
  if (!ids) return ids.error().with_context(src);
  return nlohmann::json{{"ids", std::move(*ids)}};
}

int run_tokenize_cli(const TokenizeCli& cli) {
  log::init(cli.log_level);
  if (cli.tokenizer_path.empty() && cli.model_path.empty()) {
    std::fprintf(stderr, "error: one of --tokenizer-path or --model-path is required\n");
    return 2;
  }
  auto out = run(cli);
  if (!out) {
    std::fprintf(stderr, "error: %s\n", out.error().message().c_str());
    return 1;
  }
  if (auto s = write_json_file(cli.output_json, *out, -1); !s) {
    std::fprintf(stderr, "error: %s\n", s.error().message().c_str());
    return 1;
  }
  return 0;
}

}  // namespace

std::function<int()> add_tokenize_command(CLI::App& root) {
  auto cli = std::make_shared<TokenizeCli>();
  CLI::App* app = root.add_subcommand("tokenize", "Encode a JSON list of strings to ids (or decode id lists)");
  app->add_option("--tokenizer-path", cli->tokenizer_path, "Folder with tokenizer.json and tokenizer_config.json");
  app->add_option("--model-path", cli->model_path, "Model folder (the tokenizer is read from it unless --tokenizer-path)");
  app->add_option("--input-file", cli->input_file, "JSON list of strings (with --decode: list of id lists)")->required();
  app->add_option("--output-json", cli->output_json, "Write {\"ids\": [[...]]} (with --decode: {\"texts\": [...]})")
      ->required();
  app->add_flag("--add-special-tokens", cli->add_special_tokens, "Add BOS/EOS as tokenizer_config.json says");
  app->add_flag("--decode", cli->decode, "Decode id lists instead of encoding strings");
  app->add_flag("--skip-special-tokens", cli->skip_special_tokens, "With --decode: leave special tokens out");
  app->add_option("--log-level", cli->log_level)->capture_default_str();
  return [cli] { return run_tokenize_cli(*cli); };
}

}  // namespace pdserve::tokenizer
