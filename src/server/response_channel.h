// Where a request's answer goes: one full JSON response, or a stream of server-sent events. The
// HTTP routes implement it over the connection; tests implement it in memory. Implementations are
// thread-safe: the tokenizer manager calls them from scheduler threads.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace pdserve::server {

class ResponseChannel {
 public:
  virtual ~ResponseChannel() = default;
  virtual void send_json(int status, const nlohmann::json& body) = 0;
  virtual void start_events() = 0;                   // 200 with text/event-stream
  virtual void send_event(const std::string& data) = 0;  // one "data: <data>\n\n" event
  virtual void end_events() = 0;                     // sends "data: [DONE]" and closes the stream
  virtual bool is_open() const = 0;
};

// The error body SGLang's OpenAI-compatible layer returns (also used for native routes):
// {"object": "error", "message": ..., "type": "BadRequestError", "param": null, "code": 400}.
nlohmann::json error_body(int status, const std::string& message);

}  // namespace pdserve::server
