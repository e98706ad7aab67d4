// Real `pdserve` processes for the router's end-to-end tests: any subcommand with any flags (the
// server harness in tests/server starts only `serve` on a port of its own choosing, while these
// tests restart a worker on the port the router knows).
#pragma once

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "server/server_process.h"

namespace pdserve::test {

class Process {
 public:
  Process(std::vector<std::string> args, const std::string& name) {
    log_ = std::filesystem::temp_directory_path() / ("pdserve_router_e2e_" + name + "_" + std::to_string(::getpid()) + ".log");
    args.insert(args.begin(), PDSERVE_BINARY);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      die_with_parent(parent);  // server/server_process.h says why
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Process() { kill(SIGKILL); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Polls GET url until 200 (false if the process died or time ran out).
  bool wait_http_ok(const std::string& url, std::chrono::seconds limit = std::chrono::seconds(180)) {
    http::Client c;
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (!alive()) return false;
      auto r = c.get(url, std::chrono::milliseconds(2000));
      if (r && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  bool alive() {
    if (pid_ <= 0 || reaped_) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      reaped_ = true;
      status_ = st;
      return false;
    }
    return true;
  }
  // Sends `sig` and waits for the exit; returns the exit code (128 + signal if killed).
  int kill(int sig, std::chrono::seconds limit = std::chrono::seconds(30)) {
    if (pid_ <= 0) return -1;
    if (!reaped_) ::kill(pid_, sig);
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!reaped_ && std::chrono::steady_clock::now() < until) {
      if (!alive()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!reaped_) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  std::string log() const { return read_file(log_); }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::filesystem::path log_;
};

// `pdserve serve` on the tiny model with dummy weights (the same seed everywhere, so every worker
// computes the same tokens).
inline std::vector<std::string> serve_args(int port, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"serve", "--model-path", std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3",
                                "--load-format", "dummy", "--host", "127.0.0.1", "--port", std::to_string(port)};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

inline std::string local(int port, const std::string& path = "") { return "http://127.0.0.1:" + std::to_string(port) + path; }

}  // namespace pdserve::test
