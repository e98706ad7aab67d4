#include "http/signals.h"

#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include "base/logging.h"

namespace pdserve::http {

struct SignalWatcher::Impl {
  boost::asio::io_context io_context{1};
  boost::asio::signal_set signals{io_context};
  std::function<void(int)> on_signal;
  std::thread thread;

  void arm() {
    signals.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (ec) return;  // cancelled: the watcher is being destroyed
      try {
        on_signal(signo);
      } catch (const std::exception& e) {
        log::error("signal callback threw: {}", e.what());
      }
      arm();
    });
  }
};

SignalWatcher::SignalWatcher(std::function<void(int)> on_signal, std::vector<int> signals)
    : impl_(std::make_unique<Impl>()) {
  impl_->on_signal = std::move(on_signal);
  for (int s : signals) impl_->signals.add(s);
  impl_->arm();
  impl_->thread = std::thread([impl = impl_.get()] { impl->io_context.run(); });
}

SignalWatcher::~SignalWatcher() {
  // signal_set is not thread-safe: cancel on its own thread; with nothing left to wait for, the
  // loop then ends by itself.
  boost::asio::post(impl_->io_context, [impl = impl_.get()] {
    boost::system::error_code ec;
    impl->signals.cancel(ec);
    impl->signals.clear(ec);  // restores the default dispositions
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace pdserve::http
