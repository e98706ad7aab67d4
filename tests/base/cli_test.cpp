#include "base/cli.h"

#include <sstream>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

struct Args {
  explicit Args(std::vector<std::string> a) : storage(std::move(a)) {
    for (auto& s : storage) ptrs.push_back(s.c_str());
  }
  int argc() const { return static_cast<int>(ptrs.size()); }
  const char* const* argv() const { return ptrs.data(); }
  std::vector<std::string> storage;
  std::vector<const char*> ptrs;
};

// An app shaped like pdserve's: subcommands with SGLang-style flags.
struct TestApp {
  TestApp() {
    serve = app.add_subcommand("serve", "model server");
    serve->add_option("--tp-size,--tp", tp, "tensor parallel size");
    add_log_level_flag(*serve, log_level);
    serve->callback([this] { ran_serve = true; });
    bench = app.add_subcommand("bench", "benchmark");
    bench->callback([] { throw CLI::RuntimeError(3); });
    app.require_subcommand(1);
  }
  int run(std::vector<std::string> a) {
    Args args(std::move(a));
    return run_cli(app, args.argc(), args.argv(), out, err);
  }
  CLI::App app{"pdserve", "pdserve"};
  CLI::App* serve;
  CLI::App* bench;
  int tp = 1;
  std::string log_level;
  bool ran_serve = false;
  std::ostringstream out, err;
};

TEST(Cli, ParsesFlagsAndRunsCallback) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "serve", "--tp", "8", "--log-level", "debug"}), 0);
  EXPECT_TRUE(t.ran_serve);
  EXPECT_EQ(t.tp, 8);
  EXPECT_EQ(t.log_level, "debug");
  EXPECT_EQ(t.err.str(), "");
}

TEST(Cli, LogLevelDefaultsToInfo) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "serve"}), 0);
  EXPECT_EQ(t.log_level, "info");
}

TEST(Cli, UnknownFlagIsAUsageError) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "serve", "--tp-szie", "8"}), kExitUsage);
  EXPECT_FALSE(t.ran_serve);
  const std::string e = t.err.str();
  EXPECT_EQ(e.rfind("error: ", 0), 0u) << e;
  EXPECT_NE(e.find("--tp-szie"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), e.size() - 1) << "one line: " << e;
}

TEST(Cli, UnknownFlagIsAnErrorEvenIfExtrasWereAllowed) {
  TestApp t;
  t.app.allow_extras(true);
  t.serve->allow_extras(true);
  EXPECT_EQ(t.run({"pdserve", "serve", "--bogus"}), kExitUsage);
  EXPECT_NE(t.err.str().find("--bogus"), std::string::npos) << t.err.str();
}

TEST(Cli, BadValueIsAUsageError) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "serve", "--log-level", "verbose"}), kExitUsage);
  EXPECT_NE(t.err.str().find("verbose"), std::string::npos) << t.err.str();
  TestApp u;
  EXPECT_EQ(u.run({"pdserve", "serve", "--tp", "eight"}), kExitUsage);
  TestApp v;
  EXPECT_EQ(v.run({"pdserve"}), kExitUsage);  // a subcommand is required
  TestApp w;
  EXPECT_EQ(w.run({"pdserve", "serve", "stray"}), kExitUsage);
}

TEST(Cli, HelpExitsZeroOnStdout) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "serve", "--help"}), 0);
  EXPECT_FALSE(t.ran_serve);
  EXPECT_NE(t.out.str().find("--tp-size"), std::string::npos) << t.out.str();
  EXPECT_NE(t.out.str().find("--log-level"), std::string::npos);
  EXPECT_EQ(t.err.str(), "");
}

TEST(Cli, ParseCliTellsWhetherToGoOn) {
  TestApp t;
  Args ok({"pdserve", "serve"});
  EXPECT_EQ(parse_cli(t.app, ok.argc(), ok.argv(), t.out, t.err), std::nullopt);
  TestApp u;
  Args help({"pdserve", "--help"});
  EXPECT_EQ(parse_cli(u.app, help.argc(), help.argv(), u.out, u.err), 0);
}

TEST(Cli, CallbackExitCodeIsPassedThroughSilently) {
  TestApp t;
  EXPECT_EQ(t.run({"pdserve", "bench"}), 3);
  EXPECT_EQ(t.err.str(), "");
}

}  // namespace
}  // namespace pdserve
