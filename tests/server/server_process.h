// A real `pdserve serve` process on loopback for end-to-end tests: started with a free port,
// ready once /health answers 200, stopped with SIGTERM (its exit code is checked).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http/client.h"

namespace pdserve::test {

// A loopback port for a test server, from below the kernel's ephemeral range: a port handed out by
// bind(0) lies inside it, where any process's outgoing connection or bind(0) (ctest runs several
// e2e suites at once, each with servers opening dozens of connections) may take it before the
// server listens ("bind failed: Address already in use"). Below the range only explicit binds
// compete, and those of other test processes are kept off by a lock file per port, held until this
// process exits. Falls back to bind(0) when the range leaves no room below it.
inline int free_port() {
  static std::mutex mu;
  static std::vector<int> held;  // lock descriptors, open for the life of the process
  static std::mt19937 rng(static_cast<uint32_t>(::getpid()) * 2654435761u ^
                          static_cast<uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  auto can_bind = [](int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    socklen_t len = sizeof(a);
    const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    const int got = ok ? ntohs(a.sin_port) : 0;
    if (fd >= 0) ::close(fd);
    return got;
  };
  int ephemeral_low = 32768;
  if (std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range"); range) range >> ephemeral_low;
  const int lo = 15000, hi = ephemeral_low - 1;
  if (hi - lo < 2000) return can_bind(0);
  const auto dir = std::filesystem::temp_directory_path() / "pdserve-test-ports";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::filesystem::permissions(dir, std::filesystem::perms::all, ec);  // shared by every user's tests
  std::lock_guard lock(mu);
  for (int attempt = 0; attempt < 500; ++attempt) {
    const int port = std::uniform_int_distribution<int>(lo, hi)(rng);
    const int fd = ::open((dir / (std::to_string(port) + ".lock")).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);  // another test process owns this port
      continue;
    }
    if (can_bind(port) != port) {
      if (fd >= 0) ::close(fd);
      continue;
    }
    if (fd >= 0) held.push_back(fd);
    return port;
  }
  return can_bind(0);
}

// In a forked child before exec: die with the test (SIGKILL when the forking thread ends), so a
// test binary killed by ctest's timeout leaves no server behind holding ports and CPU for the
// tests after it. The parent may have ended before prctl; then exit at once. (The signal follows
// the forking *thread*: start servers from threads that outlive them, as the suites do.)
inline void die_with_parent(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Runs `promtool check metrics` on a /metrics body; false (with the reason in *skip) when promtool
// is not installed. promtool parses the exposition (a syntax error is "error while linting", exit
// 1) and then lints names; SGLang's metric names contain ':' (dashboards depend on them), which the
// linter flags: every other finding fails the calling test.
inline bool expect_promtool_clean(const std::string& body, std::string* skip) {
  if (std::system("command -v promtool > /dev/null") != 0) {
    *skip = "promtool not installed (scripts/setup.sh installs it)";
    return false;
  }
  const auto file = std::filesystem::temp_directory_path() / ("pdserve_metrics_" + std::to_string(::getpid()) + ".txt");
  std::ofstream(file) << body;
  const std::string cmd = "promtool check metrics < " + file.string() + " > " + file.string() + ".out 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string report = read_file(file.string() + ".out");
  EXPECT_TRUE(rc == 0 || WEXITSTATUS(rc) == 3) << report;
  std::istringstream lines(report);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) {
      EXPECT_NE(line.find("metric names should not contain ':'"), std::string::npos) << line;
    }
  std::filesystem::remove(file);
  std::filesystem::remove(file.string() + ".out");
  return true;
}

class ServerProcess {
 public:
  // Starts `pdserve serve` on models/tiny-deepseek-v3 with dummy weights plus `extra` flags.
  // `pass_host` false leaves --host out, so the server binds its default address.
  explicit ServerProcess(std::vector<std::string> extra, const std::string& name, bool pass_host = true) {
    port_ = free_port();
    log_path_ = std::filesystem::temp_directory_path() / ("pdserve_" + name + "_" + std::to_string(::getpid()) + ".log");
    std::vector<std::string> args = {PDSERVE_BINARY, "serve", "--model-path",
                                     std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3", "--load-format", "dummy",
                                     "--port", std::to_string(port_)};
    if (pass_host) args.insert(args.end(), {"--host", "127.0.0.1"});
    args.insert(args.end(), extra.begin(), extra.end());
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      die_with_parent(parent);
      const int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Waits until /health is 200 (the server logged "fired up" after its warmup).
  bool wait_ready(std::chrono::seconds limit = std::chrono::seconds(180)) {
    http::Client c;
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return false;
      }
      auto r = c.get(url("/health"), std::chrono::milliseconds(2000));
      if (r && r->status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // SIGTERM, then the exit code (or 128 + signal; -1 if it did not exit in time).
  int terminate(std::chrono::seconds limit = std::chrono::seconds(30)) {
    ::kill(pid_, SIGTERM);
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  // Waits for the process to exit on its own: the exit code (or 128 + signal), -1 if still running.
  int wait_exit(std::chrono::seconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!exited_ && std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return exited_ ? exit_code_ : -1;
  }
  // Waits until the log contains `needle` (false if the limit passed first).
  bool wait_log(const std::string& needle, std::chrono::seconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (log().find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::string log() const { return read_file(log_path_); }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
  std::filesystem::path log_path_;
};

inline http::Headers json_headers(const std::string& api_key = "") {
  http::Headers h{{"Content-Type", "application/json"}};
  if (!api_key.empty()) h.add("Authorization", "Bearer " + api_key);
  return h;
}

}  // namespace pdserve::test
