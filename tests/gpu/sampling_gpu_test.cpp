// CUDA batch sampler (ops::sample_batch on device tensors).
//
// Checks: greedy rows equal the CPU argmax exactly (first index of the maximum, f32 and bf16
// logits, planted ties); top_k = 1 equals greedy; the empirical distribution of 20000 draws over a
// small vocabulary matches the filtered softmax that sample_token defines (every count within
// 5 sigma + 2 of its expectation, filtered-out tokens never drawn); on the 129280-token vocabulary
// every draw lies in the kept set of top_k / top_p (exact band resolution, and the id-order
// fallback on all-equal logits); the same (seed, offset) gives the same token whatever the
// row's position in the batch.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/sampling.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

struct Row {
  float temperature = 1.0f, top_p = 1.0f;
  int32_t top_k = -1;
  float min_p = 0.0f;
  int64_t seed = 1234, offset = 0;
};

ops::SamplingBatch make_batch(const std::vector<Row>& rows, Device dev) {
  const int64_t b = static_cast<int64_t>(rows.size());
  ops::SamplingBatch s;
  s.temperature = Tensor::empty({b}, DType::kF32);
  s.top_p = Tensor::empty({b}, DType::kF32);
  s.top_k = Tensor::empty({b}, DType::kI32);
  s.min_p = Tensor::empty({b}, DType::kF32);
  s.seed = Tensor::empty({b}, DType::kI64);
  s.offset = Tensor::empty({b}, DType::kI64);
  for (int64_t i = 0; i < b; ++i) {
    s.temperature.data<float>()[i] = rows[i].temperature;
    s.top_p.data<float>()[i] = rows[i].top_p;
    s.top_k.data<int32_t>()[i] = rows[i].top_k;
    s.min_p.data<float>()[i] = rows[i].min_p;
    s.seed.data<int64_t>()[i] = rows[i].seed;
    s.offset.data<int64_t>()[i] = rows[i].offset;
  }
  if (dev == Device::kCuda)
    for (Tensor* t : {&s.temperature, &s.top_p, &s.top_k, &s.min_p, &s.seed, &s.offset}) *t = t->to(Device::kCuda);
  return s;
}

// Device sampling of host logits (f32 values; sent as `dt`), returning host ids.
std::vector<int32_t> sample_on_device(const Tensor& logits, const std::vector<Row>& rows, DType dt = DType::kF32) {
  Tensor dev;
  if (dt == DType::kF32) {
    dev = logits.to(Device::kCuda);
  } else {
    Tensor b = Tensor::empty(logits.shape(), dt);
    convert_from_f32(dt, logits.data<float>(), b.raw_data(), static_cast<size_t>(logits.numel()));
    dev = b.to(Device::kCuda);
  }
  Tensor out = poisoned_device({static_cast<int64_t>(rows.size())}, DType::kI32);
  ops::sample_batch(dev, make_batch(rows, Device::kCuda), out);
  Tensor h = out.to(Device::kCpu);
  return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + rows.size());
}

Tensor replicate(const std::vector<float>& row, int64_t b) {
  const int64_t v = static_cast<int64_t>(row.size());
  Tensor t = Tensor::empty({b, v}, DType::kF32);
  for (int64_t i = 0; i < b; ++i) std::copy(row.begin(), row.end(), t.data<float>() + i * v);
  return t;
}

// sample_token's distribution (double precision), as the reference for the draws.
std::vector<double> expected_probs(const std::vector<float>& logits, const Row& r) {
  const int64_t v = static_cast<int64_t>(logits.size());
  std::vector<double> p(v);
  const float inv_t = 1.0f / r.temperature;
  double mx = -INFINITY, z = 0.0;
  for (int64_t i = 0; i < v; ++i) mx = std::max(mx, static_cast<double>(logits[i] * inv_t));
  for (int64_t i = 0; i < v; ++i) z += p[i] = std::exp(static_cast<double>(logits[i] * inv_t) - mx);
  for (auto& x : p) x /= z;
  std::vector<int64_t> order(v);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  const int64_t k = (r.top_k <= 0 || r.top_k > v) ? v : r.top_k;
  int64_t keep = k;
  double before = 0.0;
  for (int64_t j = 0; j < k && r.top_p < 1.0f; ++j) {
    if (j > 0 && before >= r.top_p) {
      keep = j;
      break;
    }
    before += p[order[j]];
  }
  int64_t j = 1;
  while (j < keep && p[order[j]] >= r.min_p * p[order[0]]) ++j;
  keep = j;
  std::vector<double> q(v, 0.0);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) total += p[order[i]];
  for (int64_t i = 0; i < keep; ++i) q[order[i]] = p[order[i]] / total;
  return q;
}

TEST(SamplingGpu, GreedyEqualsCpuArgmax) {
  uint32_t seed = 1;
  for (int64_t v : {129280, 1001, 7}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const int64_t b = 24;
      Tensor logits = random_host({b, v}, ++seed, 3.0f);
      if (dt == DType::kBF16) {  // compare on the values the device sees
        Tensor t = Tensor::empty({b, v}, DType::kBF16);
        convert_from_f32(DType::kBF16, logits.data<float>(), t.raw_data(), static_cast<size_t>(b * v));
        logits = t.to_f32();
      }
      for (int64_t r = 0; r < b; r += 3) {  // planted ties: two copies of a new maximum
        float* row = logits.data<float>() + r * v;
        const int64_t i = (r * 37 + 11) % v, j = (r * 101 + 3) % v;
        row[i] = row[j] = 1000.0f;
      }
      std::vector<Row> rows(b);
      for (int64_t r = 0; r < b; ++r) {
        rows[r].temperature = r % 2 ? 0.0f : 0.7f;  // greedy by temperature, or by top_k = 1
        rows[r].top_k = r % 2 ? -1 : 1;
      }
      const std::vector<int32_t> got = sample_on_device(logits, rows, dt);
      for (int64_t r = 0; r < b; ++r) {
        std::mt19937_64 rng(1);
        const int32_t want = ops::sample_token(logits.data<float>() + r * v, v, ops::SamplingParams{}, rng);
        EXPECT_EQ(got[r], want) << "V=" << v << " " << dtype_name(dt) << " row " << r;
      }
    }
  }
}

void expect_distribution(const std::vector<float>& logits, const Row& params, DType dt, const std::string& what) {
  const int64_t n = 20000, v = static_cast<int64_t>(logits.size());
  std::vector<Row> rows(n, params);
  for (int64_t i = 0; i < n; ++i) rows[i].offset = i;
  Tensor l = replicate(logits, n);
  const std::vector<int32_t> got = sample_on_device(l, rows, dt);
  std::vector<float> seen = logits;
  if (dt == DType::kBF16)
    for (auto& x : seen) x = bf16_to_f32(f32_to_bf16(x));
  const std::vector<double> q = expected_probs(seen, params);
  std::vector<int64_t> count(v, 0);
  for (int32_t t : got) {
    ASSERT_TRUE(t >= 0 && t < v) << what << ": token " << t;
    ++count[t];
  }
  for (int64_t i = 0; i < v; ++i) {
    const double mean = n * q[i], sigma = std::sqrt(n * q[i] * (1.0 - q[i]));
    if (q[i] == 0.0)
      EXPECT_EQ(count[i], 0) << what << ": filtered token " << i << " drawn";
    else
      EXPECT_LE(std::abs(count[i] - mean), 5.0 * sigma + 2.0) << what << ": token " << i << " p=" << q[i];
  }
}

TEST(SamplingGpu, SmallVocabDistributionMatchesFilteredSoftmax) {
  const std::vector<double> p16 = {0.3, 0.2, 0.15, 0.1, 0.08, 0.05, 0.04, 0.03,
                                   0.02, 0.01, 0.006, 0.004, 0.003, 0.003, 0.002, 0.002};
  std::vector<float> l16, l10;
  for (double x : p16) l16.push_back(static_cast<float>(std::log(x) + 1.5));
  for (int i = 0; i < 10; ++i) l10.push_back(l16[(i * 7) % 16]);  // shuffled, 10 wide (scalar path)
  struct Case {
    const char* name;
    Row row;
  };
  std::vector<Case> cases(6);
  cases[0] = {"plain T=1", Row{}};
  cases[1] = {"T=0.5", Row{}};
  cases[1].row.temperature = 0.5f;
  cases[2] = {"top_k=3", Row{}};
  cases[2].row.top_k = 3;
  cases[3] = {"top_p=0.6", Row{}};
  cases[3].row.top_p = 0.6f;  // keeps 0.3, 0.2, 0.15 (mass before the 4th: 0.65)
  cases[4] = {"min_p=0.3", Row{}};
  cases[4].row.min_p = 0.3f;  // keeps p >= 0.09
  cases[5] = {"T=1.5 top_k=6 top_p=0.9 min_p=0.05", Row{}};
  cases[5].row.temperature = 1.5f, cases[5].row.top_k = 6, cases[5].row.top_p = 0.9f, cases[5].row.min_p = 0.05f;
  for (const Case& c : cases) {
    expect_distribution(l16, c.row, DType::kF32, std::string(c.name) + " V=16");
    expect_distribution(l10, c.row, DType::kF32, std::string(c.name) + " V=10");
  }
  expect_distribution(l16, cases[0].row, DType::kBF16, "plain bf16 V=16");
  expect_distribution(l16, cases[3].row, DType::kBF16, "top_p bf16 V=16");
}

// The kept set of sample_token's order, loosened by `slack` of top_p mass at the boundary (the
// device sums mass in fixed point, so a token within 1e-4 of the cut may go either way).
std::vector<bool> kept_set(const std::vector<float>& logits, const Row& r, double slack) {
  Row loose = r;
  loose.top_p = std::min(1.0f, r.top_p + static_cast<float>(slack));
  const std::vector<double> q = expected_probs(logits, loose);
  std::vector<bool> keep(q.size());
  for (size_t i = 0; i < q.size(); ++i) keep[i] = q[i] > 0.0;
  return keep;
}

TEST(SamplingGpu, LargeVocabDrawsStayInKeptSet) {
  const int64_t v = 129280, n = 256;
  Tensor base = random_host({1, v}, 77, 2.0f);
  const std::vector<float> row(base.data<float>(), base.data<float>() + v);
  std::vector<Row> cases(5);
  cases[0].top_k = 50;
  cases[1].temperature = 0.7f, cases[1].top_p = 0.9f;
  cases[2].top_k = 1000, cases[2].top_p = 0.95f;
  cases[3].temperature = 0.6f, cases[3].top_k = 40, cases[3].top_p = 0.95f, cases[3].min_p = 0.05f;
  cases[4].temperature = 1.3f, cases[4].top_p = 0.5f;
  for (size_t c = 0; c < cases.size(); ++c) {
    std::vector<Row> rows(n, cases[c]);
    for (int64_t i = 0; i < n; ++i) rows[i].offset = 1000 + i;
    const std::vector<int32_t> got = sample_on_device(replicate(row, n), rows);
    const std::vector<bool> keep = kept_set(row, cases[c], 1e-4);
    std::vector<int32_t> distinct(got);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (int32_t t : got) ASSERT_TRUE(t >= 0 && t < v && keep[t]) << "case " << c << ": token " << t << " not kept";
    EXPECT_GE(distinct.size(), 2u) << "case " << c << ": every draw the same token";
  }
}

// All-equal logits put every token in one band (more than the exact path holds): the band is cut
// in id order, which for exact ties is what sample_token does.
TEST(SamplingGpu, AllEqualLogitsCutInIdOrder) {
  const int64_t v = 129280, n = 128;
  const std::vector<float> row(v, 0.5f);
  for (auto [top_k, top_p, limit] : std::vector<std::tuple<int32_t, float, int64_t>>{
           {5000, 1.0f, 5000}, {-1, 0.5f, 64640}, {10, 0.9f, 10}}) {
    std::vector<Row> rows(n);
    for (int64_t i = 0; i < n; ++i) rows[i].top_k = top_k, rows[i].top_p = top_p, rows[i].offset = i;
    const std::vector<int32_t> got = sample_on_device(replicate(row, n), rows);
    int32_t hi = 0;
    for (int32_t t : got) {
      ASSERT_TRUE(t >= 0 && t < limit) << "top_k " << top_k << " top_p " << top_p << ": token " << t;
      hi = std::max(hi, t);
    }
    EXPECT_GT(hi, limit / 2) << "top_k " << top_k << " top_p " << top_p << ": draws not spread";
  }
}

TEST(SamplingGpu, SameSeedSameTokensAnyBatchPosition) {
  const int64_t v = 129280, n = 64;
  Tensor logits = random_host({n, v}, 5, 1.0f);
  std::vector<Row> rows(n);
  for (int64_t i = 0; i < n; ++i) {
    rows[i].seed = 42 + i % 3, rows[i].offset = i;
    rows[i].top_k = i % 2 ? 100 : -1;
    rows[i].top_p = i % 4 < 2 ? 0.95f : 1.0f;
  }
  const std::vector<int32_t> a = sample_on_device(logits, rows), b = sample_on_device(logits, rows);
  EXPECT_EQ(a, b);
  // Reversed batch: each (row logits, params) keeps its token.
  Tensor rev = Tensor::empty({n, v}, DType::kF32);
  std::vector<Row> rrows(rows.rbegin(), rows.rend());
  for (int64_t i = 0; i < n; ++i)
    std::copy(logits.data<float>() + (n - 1 - i) * v, logits.data<float>() + (n - i) * v, rev.data<float>() + i * v);
  const std::vector<int32_t> c = sample_on_device(rev, rrows);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(c[n - 1 - i], a[i]) << i;
  // Other offsets: other tokens (on near-flat logits nearly every row changes).
  for (auto& r : rows) r.offset += 1000;
  const std::vector<int32_t> d = sample_on_device(logits, rows);
  int64_t changed = 0;
  for (int64_t i = 0; i < n; ++i) changed += d[i] != a[i];
  EXPECT_GT(changed, n / 2);
}

TEST(SamplingGpu, HostBatchIsDeterministicAndGreedyExact) {
  const int64_t v = 1000, n = 8;
  Tensor logits = random_host({n, v}, 9, 2.0f);
  std::vector<Row> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i].temperature = i < 2 ? 0.0f : 0.8f, rows[i].offset = i;
  Tensor a = Tensor::empty({n}, DType::kI32), b = Tensor::empty({n}, DType::kI32);
  ops::sample_batch(logits, make_batch(rows, Device::kCpu), a);
  ops::sample_batch(logits, make_batch(rows, Device::kCpu), b);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(a.data<int32_t>()[i], b.data<int32_t>()[i]) << i;
  const std::vector<int32_t> dev = sample_on_device(logits, rows);
  for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(dev[i], a.data<int32_t>()[i]) << "greedy row " << i;
}

}  // namespace
}  // namespace pdserve::gpu_test
