// Layer and op spans for the profiler's Chrome trace (docs/analyze.md): the model code marks a
// region with a ScopedSpan; the scheduler's StepProfiler installs a SpanBuffer on its thread for the
// forwards it records and turns the records into trace events at the end of the batch.
//
// Why a thread-local buffer: the forward runs on the scheduler's loop thread, and several DP ranks
// may run in one process, each recording its own trace. When no profile is recording on the calling
// thread a span costs one thread-local load and one predictable branch (no clock read, no store),
// so the hooks can stay in the hot forward code.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace pdserve::trace {

struct SpanRecord {
  const char* name;  // a string literal: the record keeps only the pointer
  int32_t index;     // the layer number for per-layer spans, -1 otherwise
  int32_t depth;     // nesting depth when opened (0 = directly inside the forward)
  int64_t start_ns;  // steady_clock
  int64_t end_ns;    // steady_clock; 0 while the span is open
};

// One recording thread's spans, in opening order (a parent precedes its children).
struct SpanBuffer {
  std::vector<SpanRecord> records;
  int32_t depth = 0;
  void clear() {
    records.clear();
    depth = 0;
  }
};

// The buffer of the profile recording on this thread; nullptr when none (the common case).
inline thread_local SpanBuffer* tls_span_buffer = nullptr;

inline int64_t span_clock_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Records [construction, destruction) when a profile is recording on this thread. The buffer is
// looked up once, at construction, so a recording that starts or stops mid-span cannot unbalance
// the depth count.
class ScopedSpan {
 public:
  explicit ScopedSpan(const char* name, int32_t index = -1) {
    if (tls_span_buffer == nullptr) [[likely]]
      return;
    open(tls_span_buffer, name, index);
  }
  ~ScopedSpan() {
    if (buf_ != nullptr) [[unlikely]]
      close();
  }
  ScopedSpan(const ScopedSpan&) = delete;
  ScopedSpan& operator=(const ScopedSpan&) = delete;

 private:
  void open(SpanBuffer* buf, const char* name, int32_t index) {
    buf_ = buf;
    slot_ = buf->records.size();
    buf->records.push_back({name, index, buf->depth++, span_clock_ns(), 0});
  }
  void close() {
    buf_->records[slot_].end_ns = span_clock_ns();
    --buf_->depth;
  }

  SpanBuffer* buf_ = nullptr;
  size_t slot_ = 0;
};

// Installs `buf` as this thread's span buffer for a scope (the profiler around one forward).
class SpanRecordingScope {
 public:
  explicit SpanRecordingScope(SpanBuffer* buf) : previous_(tls_span_buffer) { tls_span_buffer = buf; }
  ~SpanRecordingScope() { tls_span_buffer = previous_; }
  SpanRecordingScope(const SpanRecordingScope&) = delete;
  SpanRecordingScope& operator=(const SpanRecordingScope&) = delete;

 private:
  SpanBuffer* previous_;
};

}  // namespace pdserve::trace
