#include "tokenizer/chat_template.h"

#include <cstdint>

namespace pdserve::tokenizer {
namespace {

constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kSep = "<｜tool▁sep｜>";
constexpr std::string_view kOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kOutputEnd = "<｜tool▁output▁end｜>";

// FNV-1a 64 of the template text in DeepSeek-V3's tokenizer_config.json.
constexpr uint64_t kDeepseekV3TemplateHash = 0xebe3604156dc466aull;

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

void append_call(std::string& out, const ToolCall& call) {
  out += call.type;
  out += kSep;
  out += call.name;
  out += "\n```json\n";
  out += call.arguments;
  out += "\n```";
  out += kCallEnd;
}

}  // namespace

bool is_deepseek_v3_template(std::string_view jinja) { return fnv1a(jinja) == kDeepseekV3TemplateHash; }

Result<std::string> render_deepseek_v3_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                            std::string_view bos_token) {
  auto need_content = [&](size_t i) -> Status {
    if (!messages[i].content)
      return make_error(ErrorCode::kInvalidArgument, "messages[{}] ({}) has null content", i, messages[i].role);
    return ok_status();
  };
  std::string system_prompt;
  bool first_system = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "system") continue;
    PDSERVE_RETURN_IF_ERROR(need_content(i));
    if (!first_system) system_prompt += "\n\n";
    system_prompt += *messages[i].content;
    first_system = false;
  }
  std::string out(bos_token);
  out += system_prompt;
  bool is_first = false, is_tool = false, is_output_first = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      PDSERVE_RETURN_IF_ERROR(need_content(i));
      is_tool = false;
      out += kUser;
      out += *m.content;
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& call : m.tool_calls) {
        if (!is_first) {
          out += kAssistant;
          out += kCallsBegin;
          out += kCallBegin;
          append_call(out, call);
          is_first = true;
        } else {
          out += "\n";
          out += kCallBegin;
          append_call(out, call);
          out += kCallsEnd;
          out += kEos;
        }
      }
    } else if (m.role == "assistant") {
      out += is_tool ? kOutputsEnd : kAssistant;
      out += *m.content;
      out += kEos;
      is_tool = false;
    } else if (m.role == "tool") {
      PDSERVE_RETURN_IF_ERROR(need_content(i));
      is_tool = true;
      if (is_output_first) {
        out += kOutputsBegin;
        is_output_first = false;
      } else {
        out += "\n";
      }
      out += kOutputBegin;
      out += *m.content;
      out += kOutputEnd;
    }
  }
  if (is_tool) out += kOutputsEnd;
  if (add_generation_prompt && !is_tool) out += kAssistant;
  return out;
}

}  // namespace pdserve::tokenizer
