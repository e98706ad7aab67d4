#include "model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

namespace pdserve::model {

namespace {

using json = nlohmann::json;

// Thrown by the field readers below and turned into an Error at the module boundary, so the
// parser reads as a list of fields instead of a ladder of early returns.
struct ConfigError {
  Error error;
};

[[noreturn]] void fail(ErrorCode code, std::string message) { throw ConfigError{Error(code, std::move(message))}; }

// A short one-line rendering of a JSON value for messages.
std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

const char* type_word(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// Reads fields of one JSON object; `prefix` names nested objects in messages ("rope_scaling.").
class Fields {
 public:
  Fields(const json& obj, const std::string& source, std::string prefix = "")
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  // Present and not null.
  bool has(const char* key) const {
    auto it = obj_.find(key);
    return it != obj_.end() && !it->is_null();
  }
  const json& at(const char* key) const { return *obj_.find(key); }

  [[noreturn]] void bad(const char* key, const std::string& what, ErrorCode code = ErrorCode::kInvalidArgument) const {
    fail(code, source_ + ": field '" + prefix_ + key + "' " + what);
  }
  [[noreturn]] void bad_value(const char* key, const char* expectation) const {
    bad(key, std::string("must be ") + expectation + " (got " + show(at(key)) + ")");
  }

  int64_t integer(const char* key, int64_t min_value, const char* expectation) const {
    const json& v = at(key);
    if (!v.is_number_integer()) bad_value(key, expectation);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) bad_value(key, expectation);
    int64_t x = v.get<int64_t>();
    if (x < min_value) bad_value(key, expectation);
    return x;
  }
  int64_t required_positive(const char* key) const {
    if (!has(key)) bad(key, obj_.contains(key) ? "must be a positive integer (got null)" : "is missing (must be a positive integer)");
    return integer(key, 1, "a positive integer");
  }
  int64_t optional_positive(const char* key, int64_t fallback) const {
    return has(key) ? integer(key, 1, "a positive integer") : fallback;
  }
  int64_t optional_non_negative(const char* key, int64_t fallback) const {
    return has(key) ? integer(key, 0, "a non-negative integer") : fallback;
  }
  double number(const char* key, double fallback, bool positive = false) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    const char* expectation = positive ? "a positive number" : "a number";
    if (!v.is_number()) bad_value(key, expectation);
    double x = v.get<double>();
    if (!std::isfinite(x) || (positive && !(x > 0))) bad_value(key, expectation);
    return x;
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_boolean()) bad_value(key, "true or false");
    return at(key).get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_string()) bad_value(key, "a string");
    return at(key).get<std::string>();
  }
  // A string field that must take one of the supported values; anything else is kUnsupported.
  std::string one_of(const char* key, const std::string& fallback, std::initializer_list<const char*> allowed) const {
    std::string s = string(key, fallback);
    std::string list;
    for (const char* a : allowed) {
      if (s == a) return s;
      list += std::string(list.empty() ? "" : ", ") + "'" + a + "'";
    }
    bad(key, "value '" + s + "' is not supported (supported: " + list + ")", ErrorCode::kUnsupported);
  }

 private:
  const json& obj_;
  const std::string& source_;
  std::string prefix_;
};

void parse_rope(const json& root, const Fields& f, const std::string& source, ModelConfig& c) {
  ops::RopeParams& r = c.rope;
  r.rotary_dim = c.qk_rope_head_dim;
  // transformers 5 writes rope_parameters; the Hub file has rope_scaling + top-level rope_theta.
  const char* dict_key = f.has("rope_parameters") ? "rope_parameters" : f.has("rope_scaling") ? "rope_scaling" : nullptr;
  const json* dict = dict_key ? &root.at(dict_key) : nullptr;
  if (dict && !dict->is_object()) f.bad_value(dict_key, "an object");
  static const json kEmpty = json::object();
  Fields d(dict ? *dict : kEmpty, source, dict_key ? std::string(dict_key) + "." : "");

  r.theta = d.has("rope_theta") ? d.number("rope_theta", 10000.0, true) : f.number("rope_theta", 10000.0, true);
  const char* type_key = d.has("rope_type") ? "rope_type" : "type";
  r.type = d.string(type_key, "default");
  if (r.type == "default") return;
  if (r.type != "yarn")
    d.bad(type_key, "value '" + r.type + "' is not supported (supported: 'default', 'yarn')", ErrorCode::kUnsupported);

  if (!d.has("factor")) d.bad("factor", "is missing (YaRN needs a scaling factor)");
  r.factor = d.number("factor", 1.0, true);
  // HF falls back to max_position_embeddings when the original length is not given.
  r.original_max_position_embeddings =
      d.number("original_max_position_embeddings", static_cast<double>(c.max_position_embeddings), true);
  r.beta_fast = d.number("beta_fast", 32.0);
  r.beta_slow = d.number("beta_slow", 1.0);
  r.mscale = d.number("mscale", 0.0);
  r.mscale_all_dim = d.number("mscale_all_dim", 0.0);
  r.attention_factor = d.number("attention_factor", 0.0);
  r.truncate = d.boolean("truncate", true);
}

void parse_quantization(const Fields& f, const std::string& source, const json& root, ModelConfig& c) {
  if (!f.has("quantization_config")) return;
  const json& q = root.at("quantization_config");
  if (!q.is_object()) f.bad_value("quantization_config", "an object");
  Fields qf(q, source, "quantization_config.");
  if (!qf.has("quant_method")) qf.bad("quant_method", "is missing");
  qf.one_of("quant_method", "", {"fp8"});
  FP8QuantConfig fp8;
  qf.one_of("fmt", "e4m3", {"e4m3"});
  fp8.activation_scheme = qf.one_of("activation_scheme", "dynamic", {"dynamic"});
  fp8.scale_fmt = qf.one_of("scale_fmt", "float", {"float", "ue8m0"});
  if (q.contains("weight_block_size")) {
    const json& b = q.at("weight_block_size");
    bool pair = b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer();
    if (!pair) qf.bad_value("weight_block_size", "a [rows, cols] pair of integers");
    fp8.block_rows = b[0].get<int64_t>();
    fp8.block_cols = b[1].get<int64_t>();
    if (fp8.block_rows != 128 || fp8.block_cols != 128)
      qf.bad("weight_block_size", "[" + std::to_string(fp8.block_rows) + ", " + std::to_string(fp8.block_cols) +
                                      "] is not supported (only [128, 128] blocks)",
             ErrorCode::kUnsupported);
  }
  c.quantization = fp8;
}

void check_model_type(const Fields& f, const json& root, const std::string& source) {
  std::string model_type = f.string("model_type", "");
  if (model_type == "deepseek_v3") return;
  if (f.has("architectures")) {
    const json& a = root.at("architectures");
    if (!a.is_array()) f.bad_value("architectures", "an array of strings");
    for (const json& e : a)
      if (e.is_string() && e.get<std::string>() == "DeepseekV3ForCausalLM") return;
  }
  fail(ErrorCode::kUnsupported,
       source + ": field 'model_type' " + (model_type.empty() ? "is missing" : "value '" + model_type + "' is not supported") +
           " (expected 'deepseek_v3' or architectures containing 'DeepseekV3ForCausalLM')");
}

void parse_moe(const Fields& f, ModelConfig& c) {
  c.first_k_dense_replace = f.optional_non_negative("first_k_dense_replace", 0);
  if (c.first_k_dense_replace > c.num_hidden_layers)
    f.bad_value("first_k_dense_replace", "at most num_hidden_layers");
  bool has_dense = c.first_k_dense_replace > 0;
  bool has_moe = c.first_k_dense_replace < c.num_hidden_layers;
  c.intermediate_size = has_dense ? f.required_positive("intermediate_size") : f.optional_non_negative("intermediate_size", 0);
  if (!has_moe) {
    c.n_routed_experts = 0;
    return;
  }
  c.moe_intermediate_size = f.required_positive("moe_intermediate_size");
  c.n_routed_experts = f.required_positive("n_routed_experts");
  c.num_experts_per_tok = f.required_positive("num_experts_per_tok");
  c.n_shared_experts = f.optional_non_negative("n_shared_experts", 0);
  c.n_group = f.optional_positive("n_group", 1);
  c.topk_group = f.optional_positive("topk_group", 1);
  c.topk_method = f.one_of("topk_method", "noaux_tc", {"noaux_tc"});
  c.scoring_func = f.one_of("scoring_func", "sigmoid", {"sigmoid"});
  c.routed_scaling_factor = f.number("routed_scaling_factor", 1.0, true);
  c.norm_topk_prob = f.boolean("norm_topk_prob", true);

  auto need = [&](bool ok, const char* key, const std::string& what) {
    if (!ok) f.bad(key, what + " (got n_routed_experts " + std::to_string(c.n_routed_experts) + ", n_group " +
                           std::to_string(c.n_group) + ", topk_group " + std::to_string(c.topk_group) +
                           ", num_experts_per_tok " + std::to_string(c.num_experts_per_tok) + ")");
  };
  need(c.n_routed_experts % c.n_group == 0, "n_routed_experts", "must be divisible by n_group");
  int64_t per_group = c.n_routed_experts / c.n_group;
  // The group score is the sum of the two best experts of the group.
  need(per_group >= 2, "n_group", "must leave at least 2 experts per group");
  need(c.topk_group <= c.n_group, "topk_group", "must be at most n_group");
  need(c.num_experts_per_tok <= c.topk_group * per_group, "num_experts_per_tok",
       "must be at most topk_group * experts per group");
}

ModelConfig parse_fields(const json& root, const std::string& source) {
  if (!root.is_object())
    fail(ErrorCode::kCorrupt, source + ": top level must be a JSON object (got " + type_word(root) + ")");
  Fields f(root, source);
  check_model_type(f, root, source);

  ModelConfig c;
  c.vocab_size = f.required_positive("vocab_size");
  c.hidden_size = f.required_positive("hidden_size");
  c.num_hidden_layers = f.required_positive("num_hidden_layers");
  c.num_attention_heads = f.required_positive("num_attention_heads");
  c.kv_lora_rank = f.required_positive("kv_lora_rank");
  c.qk_nope_head_dim = f.required_positive("qk_nope_head_dim");
  c.qk_rope_head_dim = f.required_positive("qk_rope_head_dim");
  if (c.qk_rope_head_dim % 2 != 0) f.bad_value("qk_rope_head_dim", "even (rotary pairs)");
  c.v_head_dim = f.required_positive("v_head_dim");
  if (f.has("q_lora_rank")) c.q_lora_rank = f.integer("q_lora_rank", 1, "a positive integer or null");
  // transformers 5 writes these derived values; they must agree with the dimensions above.
  if (f.has("qk_head_dim") && f.integer("qk_head_dim", 1, "a positive integer") != c.qk_head_dim())
    f.bad_value("qk_head_dim", "qk_nope_head_dim + qk_rope_head_dim");
  if (f.has("head_dim") && f.integer("head_dim", 1, "a positive integer") != c.qk_rope_head_dim)
    f.bad_value("head_dim", "equal to qk_rope_head_dim");

  parse_moe(f, c);

  c.max_position_embeddings = f.optional_positive("max_position_embeddings", 4096);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6, true);
  c.hidden_act = f.one_of("hidden_act", "silu", {"silu"});
  c.attention_bias = f.boolean("attention_bias", false);
  // Bias tensors would be silently ignored by the forward pass.
  if (c.attention_bias) f.bad("attention_bias", "true is not supported", ErrorCode::kUnsupported);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.rope_interleave = f.boolean("rope_interleave", true);
  if (!c.rope_interleave)
    f.bad("rope_interleave", "false is not supported (DeepSeek-V3 weights use interleaved rotary pairs)",
          ErrorCode::kUnsupported);
  c.bos_token_id = f.optional_non_negative("bos_token_id", 0);
  if (f.has("eos_token_id") && root.at("eos_token_id").is_array()) {
    const json& list = root.at("eos_token_id");
    if (list.empty() || !list[0].is_number_integer() || list[0].get<int64_t>() < 0)
      f.bad_value("eos_token_id", "a non-negative integer or a non-empty list of them");
    c.eos_token_id = list[0].get<int64_t>();
  } else {
    c.eos_token_id = f.optional_non_negative("eos_token_id", 1);
  }
  c.num_nextn_predict_layers = f.optional_non_negative("num_nextn_predict_layers", 0);
  c.torch_dtype = f.has("dtype") ? f.string("dtype", "bfloat16") : f.string("torch_dtype", "bfloat16");

  parse_rope(root, f, source, c);
  parse_quantization(f, source, root, c);
  return c;
}

// nlohmann's what() on one line, without its "[json.exception.parse_error.101] " tag.
std::string one_line(std::string s) {
  if (s.rfind("[json.exception.", 0) == 0 && s.find("] ") != std::string::npos) s = s.substr(s.find("] ") + 2);
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

}  // namespace

ops::MlaDims ModelConfig::mla_dims() const {
  ops::MlaDims d;
  d.num_heads = num_attention_heads;
  d.qk_nope_head_dim = qk_nope_head_dim;
  d.qk_rope_head_dim = qk_rope_head_dim;
  d.v_head_dim = v_head_dim;
  d.kv_lora_rank = kv_lora_rank;
  return d;
}

ops::MoeGateParams ModelConfig::gate_params() const {
  ops::MoeGateParams p;
  p.n_routed_experts = n_routed_experts;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.top_k = num_experts_per_tok;
  p.norm_topk_prob = norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(routed_scaling_factor);
  return p;
}

float ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (rope.type == "yarn" && rope.mscale_all_dim != 0.0 && rope.factor > 1.0) {
    double m = 0.1 * rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number beyond double (1e999)
    return make_error(ErrorCode::kCorrupt, "{}: invalid JSON: {}", source, one_line(e.what()));
  }
  try {
    return parse_fields(root, source);
  } catch (const ConfigError& e) {
    return Error(e.error.code(), one_line(e.error.message()));
  } catch (const json::exception& e) {  // a reader above missed a type check: still one clean line
    return make_error(ErrorCode::kInvalidArgument, "{}: {}", source, one_line(e.what()));
  }
}

Result<ModelConfig> load_model_config(const std::filesystem::path& path, const std::string& json_override) {
  std::error_code ec;
  std::filesystem::path file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  if (!std::filesystem::exists(file, ec))
    return make_error(ErrorCode::kNotFound, "{}: no such file", file.string());
  std::ifstream in(file, std::ios::binary);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot open for reading", file.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return make_error(ErrorCode::kIo, "{}: read failed", file.string());
  if (json_override.empty()) return parse_model_config(text.str(), file.string());
  json patch;
  try {
    patch = json::parse(json_override);
  } catch (const json::exception& e) {
    return make_error(ErrorCode::kInvalidArgument, "--json-model-override-args: invalid JSON: {}", one_line(e.what()));
  }
  if (!patch.is_object())
    return make_error(ErrorCode::kInvalidArgument, "--json-model-override-args must be a JSON object, got {}",
                      one_line(patch.dump()));
  if (patch.empty()) return parse_model_config(text.str(), file.string());
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::exception& e) {
    return make_error(ErrorCode::kCorrupt, "{}: invalid JSON: {}", file.string(), one_line(e.what()));
  }
  if (!root.is_object()) return parse_model_config(text.str(), file.string());  // its error names the file
  root.update(patch);  // top-level keys replaced whole, as SGLang's dict update does
  return parse_model_config(root.dump(), file.string() + " with --json-model-override-args");
}

}  // namespace pdserve::model
