#include "launch/extra_args.h"

#include <map>

namespace pdserve::launch {

Result<std::vector<std::string>> split_command_line(const std::string& text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quote == '\'') {
      if (c == '\'') quote = 0;
      else word += c;
    } else if (quote == '"') {
      if (c == '"') {
        quote = 0;
      } else if (c == '\\' && i + 1 < text.size() && (text[i + 1] == '"' || text[i + 1] == '\\')) {
        word += text[++i];
      } else {
        word += c;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == ' ' || c == '\t' || c == '\n') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
    } else {
      word += c;
      in_word = true;
    }
  }
  if (quote) return make_error(ErrorCode::kInvalidArgument, "unterminated {} quote in '{}'", quote, text);
  if (in_word) words.push_back(std::move(word));
  return words;
}

Status check_extra_server_args(const std::vector<std::string>& words, const std::string& option) {
  // What repro passes to both servers, and where the user sets it instead.
  static const std::map<std::string, std::string> kOwned = {
      {"--model-path", "--model-path"},
      {"--load-format", "--load-format"},
      {"--device", "--device"},
      {"--json-model-override-args", "--json-model-override-args"},
      {"--host", "(repro serves on 127.0.0.1)"},
      {"--port", "(repro picks free ports)"},
      {"--disaggregation-mode", "(repro runs one prefill and one decode server)"},
      {"--disaggregation-bootstrap-port", "(repro picks a free port)"},
      {"--dp-size", "--prefill-dp-size / --decode-dp-size"},
      {"--dp", "--prefill-dp-size / --decode-dp-size"},
      {"--decode-log-interval", "(repro needs one Decode line per step)"}};
  for (const auto& w : words) {
    const std::string flag = w.substr(0, w.find('='));
    if (auto it = kOwned.find(flag); it != kOwned.end())
      return make_error(ErrorCode::kInvalidArgument, "{}: {} is set by repro itself; use {}", option, flag, it->second);
  }
  return ok_status();
}

}  // namespace pdserve::launch
