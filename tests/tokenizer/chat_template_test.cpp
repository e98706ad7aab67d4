// The C++ chat template against the template text itself, rendered by a real Jinja engine
// (@huggingface/jinja under Node) on a set of conversations.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace pdserve::tokenizer {
namespace {

using testing::deepseek;

ChatMessage msg(std::string role, std::optional<std::string> content, std::vector<ToolCall> calls = {}) {
  return ChatMessage{std::move(role), std::move(content), std::move(calls)};
}
ToolCall call(std::string name, std::string args) { return ToolCall{"call_" + name, "function", name, args}; }

struct Conversation {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt;
};

std::vector<Conversation> conversations() {
  const auto weather = call("get_weather", R"({"city": "Paris", "unit": "celsius"})");
  const auto time = call("get_time", R"({"tz": "Europe/Paris"})");
  return {
      {{msg("user", "Hi")}, true},
      {{msg("user", "Hi")}, false},
      {{msg("system", "SYS"), msg("user", "Hi")}, true},
      {{msg("system", "You are helpful."), msg("user", "2+2?"), msg("assistant", "4"), msg("user", "and 3+3?")}, true},
      {{msg("system", "A"), msg("user", "x"), msg("system", "B"), msg("assistant", "y"), msg("system", "C")}, false},
      {{}, true},
      {{}, false},
      {{msg("user", "")}, true},
      {{msg("user", "多语言 テキスト 😀\nline2\r\n\tend"), msg("assistant", "好的 <think> not special")}, true},
      {{msg("user", "Weather?"), msg("assistant", std::nullopt, {weather}), msg("tool", "18 degrees"),
        msg("assistant", "It is 18 degrees.")},
       true},
      {{msg("user", "Weather and time?"), msg("assistant", std::nullopt, {weather, time}), msg("tool", "18"),
        msg("tool", "10:00"), msg("assistant", "18 degrees at 10:00.")},
       true},
      {{msg("user", "Weather?"), msg("assistant", std::nullopt, {weather}), msg("tool", "18")}, true},
      {{msg("user", "Weather?"), msg("assistant", std::nullopt, {weather}), msg("tool", "18")}, false},
      // Two tool-call turns: the template's never-reset flag changes how the second one renders.
      {{msg("user", "a"), msg("assistant", std::nullopt, {weather}), msg("tool", "1"), msg("assistant", "ok"),
        msg("user", "b"), msg("assistant", std::nullopt, {time}), msg("tool", "2"), msg("user", "thanks")},
       true},
      {{msg("user", "q"), msg("assistant", "", {weather}), msg("user", "r")}, true},  // content wins over calls
      {{msg("user", "q"), msg("assistant", std::nullopt, {}), msg("user", "r")}, true},
      {{msg("developer", "ignored role"), msg("user", "q")}, true},
      {{msg("tool", "orphan result"), msg("user", "q")}, true},
  };
}

nlohmann::json to_json(const Conversation& c) {
  nlohmann::json messages = nlohmann::json::array();
  for (const auto& m : c.messages) {
    nlohmann::json j{{"role", m.role}, {"content", m.content ? nlohmann::json(*m.content) : nlohmann::json(nullptr)}};
    if (m.role == "assistant") {
      nlohmann::json calls = nlohmann::json::array();
      for (const auto& t : m.tool_calls)
        calls.push_back({{"id", t.id}, {"type", t.type}, {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
      j["tool_calls"] = calls;
    }
    messages.push_back(j);
  }
  return {{"messages", messages}, {"add_generation_prompt", c.add_generation_prompt}};
}

TEST(ChatTemplate, RendersTheSpecExample) {
  ASSERT_TRUE(deepseek());
  auto r = deepseek()->apply_chat_template({msg("system", "SYS"), msg("user", "Hi")}, true);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, "<｜begin▁of▁sentence｜>SYS<｜User｜>Hi<｜Assistant｜>");
  auto ids = *deepseek()->encode(*r, false);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 128804);
  EXPECT_TRUE(is_deepseek_v3_template(deepseek()->chat_template()));
}

TEST(ChatTemplate, MatchesJinjaRenderingOfTheTemplate) {
  ASSERT_TRUE(deepseek());
  const auto convs = conversations();
  nlohmann::json input = nlohmann::json::array();
  for (const auto& c : convs) input.push_back(to_json(c));
  const nlohmann::json peer = testing::run_peer("chat", input);
  ASSERT_FALSE(peer.is_null());
  ASSERT_EQ(peer["rendered"].size(), convs.size());
  for (size_t i = 0; i < convs.size(); ++i) {
    auto ours = deepseek()->apply_chat_template(convs[i].messages, convs[i].add_generation_prompt);
    ASSERT_TRUE(ours.has_value()) << ours.error().message();
    EXPECT_EQ(*ours, peer["rendered"][i].get<std::string>()) << "conversation " << i << ": " << input[i].dump();
  }
}

TEST(ChatTemplate, NullContentWhereTheTemplateConcatenatesIsAnError) {
  ASSERT_TRUE(deepseek());
  for (const char* role : {"user", "system", "tool"}) {
    auto r = deepseek()->apply_chat_template({msg(role, std::nullopt)}, true);
    ASSERT_FALSE(r.has_value()) << role;
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("null content"), std::string::npos);
  }
}

}  // namespace
}  // namespace pdserve::tokenizer
