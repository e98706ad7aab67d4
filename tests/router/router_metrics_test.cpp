#include "router/router_metrics.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace pdserve::router {
namespace {

// Runs `promtool check metrics` on `text`; returns its exit code and output.
std::pair<int, std::string> promtool(const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("router_metrics_" + std::to_string(::getpid()) + ".txt");
  std::ofstream(path) << text;
  std::string cmd = "promtool check metrics < " + path.string() + " 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (f && std::fgets(buf, sizeof buf, f)) out += buf;
  int rc = f ? ::pclose(f) : -1;
  std::filesystem::remove(path);
  return {rc, out};
}

TEST(RouterMetrics, CountersHistogramsAndScrapedGauges) {
  RouterMetrics m;
  m.inc("sgl_router_requests_total", {{"route", "/generate"}});
  m.inc("sgl_router_requests_total", {{"route", "/generate"}});
  m.observe("sgl_router_request_duration_seconds", {{"route", "/generate"}}, 0.003);
  m.observe("sgl_router_request_duration_seconds", {{"route", "/generate"}}, 2.0);
  EXPECT_EQ(m.counter("sgl_router_requests_total", {{"route", "/generate"}}), 2);
  std::string text = m.render({{"sgl_router_worker_health", {{"worker", "http://a:1"}}, 1},
                               {"sgl_router_active_workers", {}, 1}});
  EXPECT_NE(text.find("sgl_router_requests_total{route=\"/generate\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sgl_router_request_duration_seconds_bucket{route=\"/generate\",le=\"0.001\"} 0\n"),
            std::string::npos);
  EXPECT_NE(text.find("sgl_router_request_duration_seconds_bucket{route=\"/generate\",le=\"0.005\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("sgl_router_request_duration_seconds_bucket{route=\"/generate\",le=\"+Inf\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("sgl_router_request_duration_seconds_count{route=\"/generate\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("sgl_router_worker_health{worker=\"http://a:1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE sgl_router_cb_state gauge"), std::string::npos);
}

TEST(RouterMetrics, EscapesLabelValues) {
  EXPECT_EQ(format_labels({{"a", "x\"y\\z\n"}}), "a=\"x\\\"y\\\\z\\n\"");
}

TEST(RouterMetrics, PassesPromtool) {
  RouterMetrics m;
  m.inc("sgl_router_requests_total", {{"route", "/generate"}});
  m.inc("sgl_router_cb_state_transitions_total", {{"worker", "http://a:1"}, {"from", "closed"}, {"to", "open"}});
  m.observe("sgl_router_retry_backoff_duration_seconds", {{"attempt", "1"}}, 0.05);
  auto [rc, out] = promtool(m.render({{"sgl_router_worker_load", {{"worker", "http://a:1"}}, 3},
                                      {"sgl_router_cache_hits_total", {}, 5}}));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "") << out;  // no lint warnings either
}

// Label values are escaped as the exposition format wants (backslash, quote, newline), and an
// update's series is the one format_labels() names.
TEST(RouterMetrics, LabelValuesAreEscaped) {
  EXPECT_EQ(format_labels({{"a", "x\\y\"z\nw"}, {"b", ""}}), R"(a="x\\y\"z\nw",b="")");
  RouterMetrics m;
  m.inc("sgl_router_requests_total", {{"route", "a\"b"}}, 2);
  EXPECT_EQ(m.counter("sgl_router_requests_total", {{"route", "a\"b"}}), 2);
  EXPECT_NE(m.render({}).find(R"(sgl_router_requests_total{route="a\"b"} 2)"), std::string::npos);
}

}  // namespace
}  // namespace pdserve::router
