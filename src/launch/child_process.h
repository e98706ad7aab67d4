// A child process of the `pdserve` binary for `pdserve repro`: its stdout and stderr go to a log
// file, it lives in its own process group (so a terminal's Ctrl-C reaches only the supervisor,
// which then stops the children in order), and it dies with the supervisor even when that one is
// SIGKILLed (PR_SET_PDEATHSIG), so no run leaves servers behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace pdserve::launch {

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
Result<int> free_port();

// The running binary (/proc/self/exe), so children are the same build as the supervisor.
std::string self_binary();

class ChildProcess {
 public:
  // Starts `binary args...` with `env` ("K=V") added to the environment.
  static Result<ChildProcess> spawn(std::string name, const std::string& binary, const std::vector<std::string>& args,
                                    const std::filesystem::path& log_path, const std::vector<std::string>& env = {});
  ChildProcess() = default;
  ChildProcess(ChildProcess&& o) noexcept;
  ChildProcess& operator=(ChildProcess&& o) noexcept;
  ~ChildProcess();  // stop() with a short grace: never an orphan

  // The exit code once it ended (128 + signal when killed), nullopt while it runs.
  std::optional<int> poll();
  // SIGTERM to its group, SIGKILL after `grace`; returns the exit code (128 + signal).
  int stop(std::chrono::milliseconds grace);
  // Waits up to `limit` for it to exit by itself.
  std::optional<int> wait_for(std::chrono::milliseconds limit);

  const std::string& name() const { return name_; }
  const std::filesystem::path& log_path() const { return log_path_; }
  pid_t pid() const { return pid_; }
  bool running() { return pid_ > 0 && !poll().has_value(); }

 private:
  std::string name_;
  std::filesystem::path log_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace pdserve::launch
