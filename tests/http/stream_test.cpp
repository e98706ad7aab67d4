// Responses produced later and from other threads: delayed answers, SSE streams, disconnects,
// abandoned responders, backpressure, graceful stop.
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http/client.h"
#include "http/server.h"
#include "http/sse.h"
#include "http/test_util.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::RawSocket;

// Stands in for the scheduler: work runs on threads that are not I/O threads.
class Workers {
 public:
  ~Workers() { join(); }
  void run(std::function<void()> f) {
    std::lock_guard lock(mu_);
    threads_.emplace_back(std::move(f));
  }
  void join() {
    std::vector<std::thread> ts;
    {
      std::lock_guard lock(mu_);
      ts.swap(threads_);
    }
    for (auto& t : ts) t.join();
  }

 private:
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

class StreamTest : public ::testing::Test {
 protected:
  void start(ServerOptions o = {}) {
    server_ = std::make_unique<Server>(o);
    server_->route("GET", "/delayed", [this](Request, std::shared_ptr<Responder> r) {
      workers_.run([r] {
        std::this_thread::sleep_for(50ms);
        r->respond(200, R"({"late":true})");
      });
    });
    // Streams `n` events, one every `gap_ms`, from a worker thread.
    server_->route("GET", "/stream", [this](Request req, std::shared_ptr<Responder> r) {
      int n = std::stoi(std::string(req.query_param("n").value_or("100")));
      int gap = std::stoi(std::string(req.query_param("gap_ms").value_or("0")));
      r->on_close([this] { ++closes_; });
      r->start_stream(200);
      workers_.run([r, n, gap, this] {
        for (int i = 0; i < n; ++i) {
          if (!r->send_chunk(sse_event(nlohmann::json{{"i", i}}.dump()))) {
            ++send_failures_;
            return;
          }
          if (gap > 0) std::this_thread::sleep_for(std::chrono::milliseconds(gap));
        }
        r->send_chunk(sse_event("[DONE]"));
        r->end_stream();
      });
    });
    // A whole stream in one call (a relay holding an upstream's complete stream); `bytes` of data.
    server_->route("GET", "/whole", [this](Request req, std::shared_ptr<Responder> r) {
      const int bytes = std::stoi(std::string(req.query_param("bytes").value_or("10")));
      r->on_close([this] { ++closes_; });
      whole_ok_ = r->respond_stream(200, "text/event-stream", std::string(static_cast<size_t>(bytes), 'x'));
      whole_again_ = r->send_chunk("late");  // the stream has ended: refused
    });
    // Never answers; keeps the Responder where the test can see it.
    server_->route("GET", "/hang", [this](Request, std::shared_ptr<Responder> r) {
      r->on_close([this] { ++closes_; });
      std::lock_guard lock(mu_);
      held_ = r;
    });
    ASSERT_TRUE(server_->start().has_value());
  }
  std::string url(std::string_view path) const { return fmt::format("http://127.0.0.1:{}{}", server_->port(), path); }
  std::string raw_get(std::string_view path) const { return fmt::format("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path); }

  Workers workers_;  // declared before server_: joined after the server is gone
  std::unique_ptr<Server> server_;
  std::atomic<int> closes_{0};
  std::atomic<int> send_failures_{0};
  std::atomic<bool> whole_ok_{false}, whole_again_{true};
  std::mutex mu_;
  std::shared_ptr<Responder> held_;
};

TEST_F(StreamTest, DelayedResponseFromAnotherThread) {
  start();
  Client client;
  auto r = client.get(url("/delayed"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"late":true})");
}

TEST_F(StreamTest, HundredSseEventsArriveInOrder) {
  start();
  Client client;
  std::vector<std::string> data;
  int raw_pieces = 0;
  Response head;
  auto r = client.stream(ClientRequest{"GET", url("/stream?n=100&gap_ms=0"), {}, {}, 10s},
                         StreamCallbacks{[&](const Response& h) { head = h; return true; },
                                         [&](std::string_view) { ++raw_pieces; return true; },
                                         [&](const SseEvent& e) { data.push_back(e.data); return true; }});
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers.get_or("content-type", ""), "text/event-stream");
  EXPECT_EQ(head.headers.get_or("transfer-encoding", ""), "chunked");
  EXPECT_GT(raw_pieces, 0);
  ASSERT_EQ(data.size(), 101u);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(nlohmann::json::parse(data[i])["i"], i);
  EXPECT_EQ(data[100], "[DONE]");
  EXPECT_EQ(closes_.load(), 0);  // a completed response never fires on_close

  // The connection is reusable after a complete stream.
  auto again = client.get(url("/delayed"));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->status, 200);
}

// Each event reaches the client's callback when it is sent, not when the stream ends (the
// benchmark measures inter-token latency from these callbacks).
TEST_F(StreamTest, EventsArriveAsTheyAreSent) {
  start();
  Client client;
  std::vector<std::chrono::steady_clock::time_point> at;
  auto r = client.stream(ClientRequest("GET", url("/stream?n=8&gap_ms=30")),
                         StreamCallbacks(nullptr, nullptr, [&](const SseEvent&) {
                           at.push_back(std::chrono::steady_clock::now());
                           return true;
                         }));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_EQ(at.size(), 9u);
  EXPECT_GE(at[7] - at[0], 150ms);  // 7 gaps of 30 ms between the first and the last data event
}

// respond_stream: head, one chunk and the end in one go; the client sees an ordinary chunked
// stream, whose bytes all come as the last data (the response is complete when they arrive), and
// the connection is reused. Past the queue limit it is refused and the connection dropped.
TEST_F(StreamTest, WholeStreamInOneCallIsAChunkedStreamEndingWithItsData) {
  ServerOptions o;
  o.max_queued_bytes = 1000;
  start(o);
  Client client;
  std::string data, last;
  Response head;
  StreamCallbacks cb([&](const Response& h) { head = h; return true; },
                     [&](std::string_view d) { data += d; return true; }, nullptr);
  cb.on_last_data = [&](std::string_view d) { last += d; return true; };
  auto r = client.stream(ClientRequest("GET", url("/whole?bytes=300")), cb);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers.get_or("transfer-encoding", ""), "chunked");
  EXPECT_EQ(data + last, std::string(300, 'x'));
  EXPECT_EQ(last.size(), 300u) << "one write: every byte is in the complete response's last piece";
  EXPECT_TRUE(whole_ok_.load());
  EXPECT_FALSE(whole_again_.load());
  auto again = client.get(url("/delayed"));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(closes_.load(), 0);

  // Larger than the queue bound: refused, the client sees the connection end.
  auto big = Client().stream(ClientRequest("GET", url("/whole?bytes=5000")), StreamCallbacks());
  EXPECT_FALSE(big.has_value() && big->status == 200 && big->body.size() == 5000);
  // The handler's store may come after the client saw the close (another I/O thread closed it).
  EXPECT_TRUE(eventually([&] { return !whole_ok_.load(); }));
  EXPECT_TRUE(eventually([&] { return closes_.load() == 1; }));
}

// Without on_last_data, the last bytes go to on_data as before (a stream of many writes: the
// earlier events arrive before the response is complete).
TEST_F(StreamTest, LastDataFallsBackToOnData) {
  start();
  Client client;
  std::string data, last;
  StreamCallbacks cb(nullptr, [&](std::string_view d) { data += d; return true; }, nullptr);
  auto r = client.stream(ClientRequest("GET", url("/whole?bytes=64")), cb);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(data, std::string(64, 'x'));
  data.clear();
  cb.on_last_data = [&](std::string_view d) { last += d; return true; };
  auto s = client.stream(ClientRequest("GET", url("/stream?n=3&gap_ms=20")), cb);
  ASSERT_TRUE(s.has_value()) << s.error().message();
  EXPECT_NE(data.find("\"i\":0"), std::string::npos) << "events sent apart arrive before the end";
  EXPECT_NE((data + last).find("[DONE]"), std::string::npos);
}

TEST_F(StreamTest, ClientDisconnectMidStreamFiresOnCloseOnce) {
  start();
  for (bool reset : {false, true}) {
    closes_ = 0;
    send_failures_ = 0;
    {
      RawSocket raw(server_->port());
      raw.send(raw_get("/stream?n=100000&gap_ms=2"));
      std::string got = raw.read_until("\"i\":3", 3s);
      ASSERT_NE(got.find("\"i\":3"), std::string::npos);
      if (reset) raw.reset();
    }  // closed mid-stream
    ASSERT_TRUE(eventually([&] { return closes_.load() == 1; })) << "reset=" << reset;
    ASSERT_TRUE(eventually([&] { return send_failures_.load() == 1; }));  // the producer learns too
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(closes_.load(), 1);
    EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }));
  }
}

TEST_F(StreamTest, NeverAnsweredRequestLeaksNothingWhenClientLeaves) {
  start();
  {
    RawSocket raw(server_->port());
    raw.send(raw_get("/hang"));
    ASSERT_TRUE(eventually([&] { std::lock_guard l(mu_); return held_ != nullptr; }));
  }
  ASSERT_TRUE(eventually([&] { return closes_.load() == 1; }));
  EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }));
  std::weak_ptr<Responder> weak;
  {
    std::lock_guard l(mu_);
    EXPECT_FALSE(held_->is_open());
    EXPECT_FALSE(held_->respond(200, "too late"));
    // Registering after the fact runs the callback at once.
    bool late = false;
    held_->on_close([&] { late = true; });
    EXPECT_TRUE(late);
    weak = held_;
    held_.reset();
  }
  EXPECT_TRUE(weak.expired());  // the server kept no reference
  EXPECT_EQ(closes_.load(), 1);
}

TEST_F(StreamTest, BackpressureBoundsTheQueue) {
  ServerOptions o;
  o.max_queued_bytes = 256 << 10;
  start(o);
  std::atomic<std::size_t> max_queued{0};
  std::atomic<bool> refused{false};
  RawSocket raw(server_->port());  // never reads
  std::shared_ptr<Responder> r;
  raw.send(raw_get("/hang"));
  ASSERT_TRUE(eventually([&] { std::lock_guard l(mu_); return held_ != nullptr; }));
  {
    std::lock_guard l(mu_);
    r = held_;
  }
  ASSERT_TRUE(r->start_stream(200));
  std::string chunk(64 << 10, 'x');
  // The kernel buffers absorb a few MB (we pause whenever our queue is non-empty, so the writer
  // can drain it into them); once they are full the queue grows to the limit and the connection
  // is dropped, although the write in progress can never finish.
  for (int i = 0; i < 4000 && !refused; ++i) {
    if (!r->send_chunk(chunk)) refused = true;
    max_queued = std::max<std::size_t>(max_queued, r->queued_bytes());
    if (r->queued_bytes() > 0) std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(refused.load());
  EXPECT_GT(max_queued.load(), 0u);
  EXPECT_LE(max_queued.load(), o.max_queued_bytes);
  ASSERT_TRUE(eventually([&] { return closes_.load() == 1; }));
  EXPECT_FALSE(r->is_open());
}

TEST_F(StreamTest, WriteTimeoutClosesAStalledReaderBeforeTheQueueLimit) {
  ServerOptions o;
  o.write_timeout = 300ms;
  o.max_queued_bytes = std::size_t{1} << 30;  // out of reach: only the write timeout can end it
  start(o);
  RawSocket raw(server_->port());  // never reads
  raw.send(raw_get("/hang"));
  ASSERT_TRUE(eventually([&] { std::lock_guard l(mu_); return held_ != nullptr; }));
  std::shared_ptr<Responder> r;
  {
    std::lock_guard l(mu_);
    r = held_;
  }
  ASSERT_TRUE(r->start_stream(200));
  const std::string chunk(64 << 10, 'x');
  // Fill the kernel buffers, then keep about 1 MB queued: a write is stuck from then on.
  const auto start_time = std::chrono::steady_clock::now();
  while (closes_.load() == 0 && std::chrono::steady_clock::now() - start_time < 10s) {
    if (r->queued_bytes() < (1u << 20)) {
      if (!r->send_chunk(chunk)) break;
    } else {
      std::this_thread::sleep_for(5ms);
    }
  }
  ASSERT_TRUE(eventually([&] { return closes_.load() == 1; }));
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, 10s);
  EXPECT_FALSE(r->is_open());
  EXPECT_FALSE(r->send_chunk("late"));
}

TEST_F(StreamTest, StopLetsInFlightStreamFinish) {
  start();
  Client client;
  std::vector<std::string> data;
  std::thread stopper;
  auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration stop_took{};
  auto r = client.stream(
      ClientRequest{"GET", url("/stream?n=20&gap_ms=10"), {}, {}, 10s},
      StreamCallbacks{nullptr, nullptr, [&](const SseEvent& e) {
                        data.push_back(e.data);
                        if (data.size() == 1) {
                          stopper = std::thread([&] {
                            auto s0 = std::chrono::steady_clock::now();
                            server_->stop(5s);
                            stop_took = std::chrono::steady_clock::now() - s0;
                          });
                        }
                        return true;
                      }});
  stopper.join();
  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_EQ(data.size(), 21u);
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_EQ(closes_.load(), 0);
  EXPECT_LT(stop_took, 2s);  // returned when the stream ended, not at the end of the grace
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  // Nothing listens any more.
  auto after = client.get(url("/delayed"), 1s);
  EXPECT_FALSE(after.has_value());
}

TEST_F(StreamTest, StopClosesStreamsThatOutliveTheGrace) {
  start();
  RawSocket raw(server_->port());
  raw.send(raw_get("/stream?n=100000&gap_ms=5"));
  ASSERT_NE(raw.read_until("\"i\":1", 3s).find("\"i\":1"), std::string::npos);
  auto t0 = std::chrono::steady_clock::now();
  server_->stop(200ms);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 2s);
  EXPECT_EQ(closes_.load(), 1);
  bool closed = false;
  raw.read_until_close(2s, &closed);
  EXPECT_TRUE(closed);
  server_->wait();  // already stopped: returns at once
}

TEST_F(StreamTest, StopClosesIdleConnectionsAtOnceAndWorksFromAHandler) {
  start();
  Client client;
  ASSERT_EQ(client.get(url("/delayed"))->status, 200);  // leaves an idle keep-alive connection
  auto t0 = std::chrono::steady_clock::now();
  server_->stop(5s);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

  // stop() from a handler (an I/O thread) must not deadlock; wait() returns once it is done.
  Server s2({});
  s2.route("POST", "/quit", [&](Request, std::shared_ptr<Responder> r) {
    r->respond(200, "bye", "text/plain");
    s2.stop(1s);
  });
  ASSERT_TRUE(s2.start().has_value());
  auto r = client.request("POST", fmt::format("http://127.0.0.1:{}/quit", s2.port()));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->body, "bye");
  s2.wait();
  EXPECT_TRUE(s2.stopping());
}

}  // namespace
}  // namespace pdserve::http
