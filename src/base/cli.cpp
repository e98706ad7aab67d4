#include "base/cli.h"

#include <algorithm>

namespace pdserve {

void forbid_extras(CLI::App& app) {
  app.allow_extras(false);
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) forbid_extras(*sub);
}

std::optional<int> parse_cli(CLI::App& app, int argc, const char* const* argv, std::ostream& out,
                             std::ostream& err) {
  forbid_extras(app);
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(e, out, err);  // --help, --help-all, --version
    }
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    err << "error: " << msg << std::endl;
    return kExitUsage;
  }
}

int run_cli(CLI::App& app, int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  return parse_cli(app, argc, argv, out, err).value_or(0);
}

CLI::Option* add_log_level_flag(CLI::App& app, std::string& level) {
  if (level.empty()) level = "info";
  return app.add_option("--log-level", level, "Logging level")
      ->check(CLI::IsMember({"debug", "info", "warning", "error", "critical"}))
      ->capture_default_str();
}

}  // namespace pdserve
