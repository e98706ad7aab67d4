// `pdserve serve`'s flags parsed into ServerArgs as the command does (for the flag tests).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "server/server_args.h"

namespace pdserve::server {

inline ServerArgs parsed(std::vector<std::string> flags) {
  CLI::App app;
  ServerArgs a;
  add_server_flags(app, a);
  flags.insert(flags.begin(), {"--model-path", "m"});
  std::reverse(flags.begin(), flags.end());  // CLI11 parses a vector in reverse order
  app.parse(flags);
  return a;
}

}  // namespace pdserve::server
