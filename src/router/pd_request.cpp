#include "router/pd_request.h"

#include <limits>


#include "router/policy.h"

namespace pdserve::router {

using json = nlohmann::json;

std::string generated_rid(uint64_t room) {
  // "router-" and 16 hex digits, written directly: once per request, fmt cost more than the rest.
  std::string rid = "router-0000000000000000";
  for (std::size_t i = rid.size(); room != 0; room >>= 4) rid[--i] = "0123456789abcdef"[room & 15];
  return rid;
}

std::size_t batch_size(const json& body, RouteKind route) {
  if (route != RouteKind::kGenerate || !body.is_object()) return 0;
  if (auto t = body.find("text"); t != body.end() && t->is_array()) return t->size();
  if (auto ids = body.find("input_ids"); ids != body.end() && ids->is_array() && !ids->empty() && (*ids)[0].is_array())
    return ids->size();
  return 0;
}

std::vector<uint64_t> make_rooms(std::size_t batch) {
  std::vector<uint64_t> rooms(std::max<std::size_t>(batch, 1));
  for (auto& r : rooms) r = random_u64() & static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  return rooms;
}

void inject_bootstrap(json& body, const std::string& host, std::optional<int> port, const std::vector<uint64_t>& rooms,
                      std::size_t batch) {
  const json port_value = port ? json(*port) : json(nullptr);
  if (batch == 0) {
    body["bootstrap_host"] = host;
    body["bootstrap_port"] = port_value;
    body["bootstrap_room"] = rooms.at(0);
    return;
  }
  json hosts = json::array(), ports = json::array(), r = json::array();
  for (std::size_t i = 0; i < batch; ++i) {
    hosts.push_back(host);
    ports.push_back(port_value);
    r.push_back(rooms.at(i));
  }
  body["bootstrap_host"] = std::move(hosts);
  body["bootstrap_port"] = std::move(ports);
  body["bootstrap_room"] = std::move(r);
}

std::vector<std::string> ensure_rid(json& body, std::size_t batch, const std::vector<uint64_t>& rooms) {
  std::vector<std::string> rids;
  auto it = body.find("rid");
  if (it != body.end() && !it->is_null()) {
    if (it->is_string()) rids.push_back(it->get<std::string>());
    if (it->is_array())
      for (const auto& r : *it)
        if (r.is_string()) rids.push_back(r.get<std::string>());
    return rids;
  }
  for (std::size_t i = 0; i < std::max<std::size_t>(batch, 1); ++i)
    rids.push_back(generated_rid(rooms.at(i)));
  if (batch == 0) {
    body["rid"] = rids[0];
  } else {
    body["rid"] = rids;
  }
  return rids;
}

std::string request_text(const json& body, RouteKind route) {
  if (!body.is_object()) return {};
  auto first_string = [](const json& v) -> std::string {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_array() && !v.empty() && v[0].is_string()) return v[0].get<std::string>();
    return {};
  };
  if (route == RouteKind::kChat) {
    std::string out;
    if (auto m = body.find("messages"); m != body.end() && m->is_array()) {
      for (const auto& msg : *m) {
        if (!msg.is_object()) continue;
        if (auto c = msg.find("content"); c != msg.end()) out += c->is_string() ? c->get<std::string>() : c->dump();
        out += '\n';
      }
    }
    return out;
  }
  if (auto t = body.find(route == RouteKind::kCompletions ? "prompt" : "text"); t != body.end()) {
    std::string s = first_string(*t);
    if (!s.empty()) return s;
    if (t->is_array()) return t->dump();  // token ids as a prompt
  }
  if (auto ids = body.find("input_ids"); ids != body.end() && ids->is_array()) {
    // Ids as text still share prefixes exactly when the id lists do.
    const json& first = (!ids->empty() && (*ids)[0].is_array()) ? (*ids)[0] : *ids;
    return first.dump();
  }
  return {};
}

bool wants_logprob(const json& body) {
  auto it = body.find("return_logprob");
  if (it == body.end()) return false;
  if (it->is_boolean()) return it->get<bool>();
  if (it->is_array()) return !it->empty() && (*it)[0] == true;
  return false;
}

namespace {

json input_logprobs_of(const json& item) {
  if (!item.is_object()) return json::array();
  auto m = item.find("meta_info");
  if (m == item.end() || !m->is_object()) return json::array();
  auto l = m->find("input_token_logprobs");
  if (l == m->end() || !l->is_array()) return json::array();
  return *l;
}

int64_t index_of(const json& event) {
  auto it = event.find("index");
  return it != event.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

void prepend(json& decode_item, const json& prefill_logprobs) {
  if (!decode_item.is_object()) return;
  json& meta = decode_item["meta_info"];
  if (!meta.is_object()) meta = json::object();
  json merged = prefill_logprobs.is_array() ? prefill_logprobs : json::array();
  if (auto d = meta.find("input_token_logprobs"); d != meta.end() && d->is_array())
    for (const auto& x : *d) merged.push_back(x);
  meta["input_token_logprobs"] = std::move(merged);
}

}  // namespace

Result<std::string> merge_logprobs(std::string_view prefill_body, std::string_view decode_body) {
  json p = json::parse(prefill_body, nullptr, false);
  json d = json::parse(decode_body, nullptr, false);
  if (p.is_discarded() || d.is_discarded())
    return make_error(ErrorCode::kInvalidArgument, "a worker answered with invalid JSON");
  if (d.is_array()) {
    for (std::size_t i = 0; i < d.size(); ++i)
      prepend(d[i], p.is_array() && i < p.size() ? input_logprobs_of(p[i]) : json::array());
  } else {
    prepend(d, input_logprobs_of(p.is_array() && !p.empty() ? p[0] : p));
  }
  return d.dump();
}

void PrefillLogprobs::add_event(std::string_view data) {
  json e = json::parse(data, nullptr, false);
  if (!e.is_object()) return;
  first_.try_emplace(index_of(e), input_logprobs_of(e));
}

std::string PrefillLogprobs::apply(std::string_view decode_data) const {
  json e = json::parse(decode_data, nullptr, false);
  if (!e.is_object()) return std::string(decode_data);
  auto it = first_.find(index_of(e));
  prepend(e, it == first_.end() ? json::array() : it->second);
  return e.dump();
}

}  // namespace pdserve::router
