#include "disagg/control_channel.h"

#include <zmq.hpp>

#include "base/logging.h"

namespace pdserve::disagg {

ControlChannel::ControlChannel() = default;

ControlChannel::~ControlChannel() { stop(); }

Status ControlChannel::start(const std::string& host, MessageHandler on_message, std::function<void()> on_tick) {
  on_message_ = std::move(on_message);
  on_tick_ = std::move(on_tick);
  try {
    ctx_ = std::make_unique<zmq::context_t>(1);
    pull_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::pull);
    pull_->set(zmq::sockopt::linger, 0);
    pull_->set(zmq::sockopt::rcvhwm, 0);  // the sender's deadlines bound what can pile up
    pull_->bind("tcp://" + host + ":*");
    const std::string bound = pull_->get(zmq::sockopt::last_endpoint);  // "tcp://127.0.0.1:PORT"
    port_ = std::stoi(bound.substr(bound.rfind(':') + 1));
    endpoint_ = host + ":" + std::to_string(port_);
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kIo, "cannot bind a ZeroMQ control socket on {}: {}", host, e.what());
  }
  thread_ = std::thread([this] { loop(); });
  return ok_status();
}

void ControlChannel::stop() {
  if (stopping_.exchange(true)) return;
  if (thread_.joinable()) thread_.join();
  push_.clear();
  pull_.reset();
  if (ctx_) ctx_->close();
  ctx_.reset();
}

void ControlChannel::post(const std::string& peer, Frames frames, ErrorHandler on_error) {
  run([this, peer, frames = std::move(frames), on_error = std::move(on_error)]() mutable {
    auto st = send_now(peer, std::move(frames));
    if (!st && on_error) on_error(st.error().message());
  });
}

void ControlChannel::run(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  tasks_.push_back(std::move(task));
}

zmq::socket_t& ControlChannel::push_socket(const std::string& peer) {
  auto& s = push_[peer];
  if (!s) {
    s = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::push);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::immediate, 1);
    s->set(zmq::sockopt::sndtimeo, static_cast<int>(kSendTimeout.count()));
    s->connect("tcp://" + peer);
  }
  return *s;
}

Status ControlChannel::send_now(const std::string& peer, Frames frames) {
  try {
    zmq::socket_t& s = push_socket(peer);
    for (size_t i = 0; i < frames.size(); ++i) {
      const auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      // Large frames (KV chunks, MBs) zero copy: ZeroMQ takes the string's buffer and frees it
      // once sent. Small ones (every control frame) are copied into ZeroMQ's own message: cheaper
      // than a heap string plus a free callback, and nothing of ours is left behind in a message
      // that libzmq 4.3.4 occasionally fails to release at shutdown (scripts/lsan.supp).
      zmq::message_t msg;
      if (frames[i].size() < kZeroCopyBytes) {
        msg.rebuild(frames[i].data(), frames[i].size());
      } else {
        auto* owned = new std::string(std::move(frames[i]));
        msg.rebuild(owned->data(), owned->size(), [](void*, void* hint) { delete static_cast<std::string*>(hint); }, owned);
      }
      if (!s.send(msg, flags)) {
        // Nothing was handed over (ZeroMQ sends multipart messages atomically): the peer is down.
        drop_peer(peer);
        return make_error(ErrorCode::kIo, "cannot reach {} (no live connection after {} ms)", peer, kSendTimeout.count());
      }
    }
  } catch (const std::exception& e) {
    drop_peer(peer);
    return make_error(ErrorCode::kIo, "sending to {} failed: {}", peer, e.what());
  }
  return ok_status();
}

void ControlChannel::drop_peer(const std::string& peer) { push_.erase(peer); }

void ControlChannel::loop() {
  while (!stopping_) {
    zmq::pollitem_t item{static_cast<void*>(*pull_), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(1));
      if (item.revents & ZMQ_POLLIN) {
        // Everything queued now, so a burst does not wait for the next poll.
        for (int n = 0; n < 256; ++n) {
          Frames frames;
          zmq::message_t msg;
          bool got = false;
          while (pull_->recv(msg, zmq::recv_flags::dontwait)) {
            got = true;
            frames.emplace_back(static_cast<const char*>(msg.data()), msg.size());
            if (!msg.more()) break;
          }
          if (!got) break;
          if (on_message_) on_message_(std::move(frames));
        }
      }
    } catch (const std::exception& e) {
      log::error("disaggregation control channel: {}", e.what());
    }
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
    if (on_tick_) on_tick_();
  }
}

}  // namespace pdserve::disagg
