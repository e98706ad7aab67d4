// DeepSeek-V3's chat template, rendered in C++ (no Jinja engine at run time).
//
// The renderer reproduces the Jinja template shipped in DeepSeek-V3's tokenizer_config.json
// statement for statement, quirks included (the tests compare it with @huggingface/jinja rendering
// the template text itself):
//   - all system messages, wherever they are, are joined with "\n\n" and placed right after BOS;
//   - the template's `ns.is_first` flag is never reset, so only the very first tool call of the
//     conversation opens with "<｜Assistant｜><｜tool▁calls▁begin｜>", and every later tool call
//     closes the block with "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
//   - an assistant message with content (even "") ignores its tool_calls;
//   - consecutive tool results share one "<｜tool▁outputs▁begin｜>…<｜tool▁outputs▁end｜>" block.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::tokenizer {

Result<std::string> render_deepseek_v3_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                            std::string_view bos_token);

// True if `jinja` is the DeepSeek-V3 template this renderer implements (compared by content hash).
bool is_deepseek_v3_template(std::string_view jinja);

}  // namespace pdserve::tokenizer
