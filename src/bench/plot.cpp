#include "bench/plot.h"

#include <algorithm>
#include <cmath>

#include "bench/svg_chart.h"

namespace pdserve::bench {

std::string benchmark_plot_svg(const std::vector<RequestResult>& outputs, double duration) {
  std::vector<double> ttft, tpot, itl, e2e;
  for (const auto& o : outputs) {
    if (!o.success) continue;
    ttft.push_back(o.ttft * 1000);
    e2e.push_back(o.latency * 1000);
    if (o.output_len > 1) tpot.push_back((o.latency - o.ttft) / static_cast<double>(o.output_len - 1) * 1000);
    for (double v : o.itl) itl.push_back(v * 1000);
  }
  // About 60 bins over the run, at least 0.1 s each, so short and long runs both read well.
  const double bin = std::max(0.1, duration / 60);
  const auto nbins = static_cast<size_t>(std::ceil(std::max(duration, bin) / bin));
  Series tok{"output tok/s", {}, std::vector<double>(nbins, 0)}, req{"requests/s", {}, std::vector<double>(nbins, 0)};
  for (size_t i = 0; i < nbins; ++i) {
    tok.x.push_back((static_cast<double>(i) + 0.5) * bin);
    req.x.push_back((static_cast<double>(i) + 0.5) * bin);
  }
  for (const auto& o : outputs) {
    for (const auto& [t, n] : o.token_times) tok.y[std::min(nbins - 1, static_cast<size_t>(t / bin))] += static_cast<double>(n) / bin;
    if (o.success) req.y[std::min(nbins - 1, static_cast<size_t>((o.start + o.latency) / bin))] += 1 / bin;
  }
  SvgFigure fig;
  fig.add_histogram("Time to first token", "TTFT (ms)", ttft);
  fig.add_histogram("End-to-end latency", "E2E latency (ms)", e2e);
  fig.add_histogram("Time per output token", "TPOT (ms)", tpot);
  fig.add_histogram("Inter-token latency", "ITL (ms)", itl);
  fig.add_line_chart("Output throughput over time", "time (s)", "tokens/s", {tok});
  fig.add_line_chart("Finished requests over time", "time (s)", "requests/s", {req});
  return fig.render(2);
}

}  // namespace pdserve::bench
