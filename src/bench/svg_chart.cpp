#include "bench/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace pdserve::bench {

namespace {

constexpr double kW = 520, kH = 320;                        // one panel
constexpr double kLeft = 70, kRight = 20, kTop = 36, kBottom = 48;  // plot-area margins
const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string num(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e6 || a < 1e-3) return fmt::format("{:.2e}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  if (a >= 1) return fmt::format("{:.3g}", v);
  return fmt::format("{:.3f}", v);
}

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

void SvgFigure::add_line_chart(std::string title, std::string xlabel, std::string ylabel, std::vector<Series> series) {
  panels_.push_back(Panel{std::move(title), std::move(xlabel), std::move(ylabel), std::move(series), {}, false});
}

void SvgFigure::add_histogram(std::string title, std::string xlabel, const std::vector<double>& values, int bins) {
  Panel p{std::move(title), std::move(xlabel), "count", {}, {}, true};
  Series s;
  if (!values.empty()) {
    const auto [lo_it, hi_it] = std::minmax_element(values.begin(), values.end());
    const double lo = *lo_it, hi = *hi_it > *lo_it ? *hi_it : *lo_it + 1;
    const double w = (hi - lo) / bins;
    s.y.assign(static_cast<size_t>(bins), 0);
    for (double v : values) s.y[std::min<size_t>(static_cast<size_t>((v - lo) / w), static_cast<size_t>(bins - 1))] += 1;
    for (int i = 0; i < bins; ++i) s.x.push_back(lo + w * (i + 0.5));
  }
  p.series.push_back(std::move(s));
  panels_.push_back(std::move(p));
}

void SvgFigure::add_bar_chart(std::string title, std::string ylabel, std::vector<std::string> labels,
                              std::vector<double> values) {
  Series s;
  for (size_t i = 0; i < values.size(); ++i) s.x.push_back(static_cast<double>(i));
  s.y = std::move(values);
  panels_.push_back(Panel{std::move(title), "", std::move(ylabel), {std::move(s)}, std::move(labels), true});
}

std::string SvgFigure::render_panel(const Panel& p, double x0, double y0) const {
  std::string o = fmt::format("<svg x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\">\n", x0, y0, kW, kH);
  o += fmt::format("<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
                   kW / 2, xml_escape(p.title));
  double xmin = std::numeric_limits<double>::max(), xmax = -xmin, ymax = 0, ymin = 0;
  size_t points = 0;
  for (const auto& s : p.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymax = std::max(ymax, s.y[i]);
      ymin = std::min(ymin, s.y[i]);
      ++points;
    }
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  o += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n", kLeft, kTop, pw, ph);
  if (points == 0) {
    o += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#999\">no data</text>\n</svg>\n", kW / 2, kH / 2);
    return o;
  }
  if (p.bars) {  // bars are centred on their x; leave half a bar of room at each end
    const double half = p.series[0].x.size() > 1 ? (xmax - xmin) / static_cast<double>(p.series[0].x.size() - 1) / 2 : 0.5;
    xmin -= half;
    xmax += half;
  }
  if (xmax <= xmin) xmax = xmin + 1;
  if (ymax <= ymin) ymax = ymin + 1;
  ymax *= 1.05;
  auto X = [&](double v) { return kLeft + (v - xmin) / (xmax - xmin) * pw; };
  auto Y = [&](double v) { return kTop + ph - (v - ymin) / (ymax - ymin) * ph; };
  for (int i = 0; i <= 4; ++i) {  // ticks
    const double yv = ymin + (ymax - ymin) * i / 4, xv = xmin + (xmax - xmin) * i / 4;
    o += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#eee\"/>\n", kLeft, Y(yv), kLeft + pw, Y(yv));
    o += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\" font-size=\"10\">{}</text>\n", kLeft - 4, Y(yv) + 3, num(yv));
    if (p.bar_labels.empty())
      o += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n", X(xv),
                       kTop + ph + 14, num(xv));
  }
  o += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n", kLeft + pw / 2, kH - 8,
                   xml_escape(p.xlabel));
  o += fmt::format("<text x=\"14\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" transform=\"rotate(-90 14 {})\">{}</text>\n",
                   kTop + ph / 2, kTop + ph / 2, xml_escape(p.ylabel));
  for (size_t si = 0; si < p.series.size(); ++si) {
    const auto& s = p.series[si];
    const char* color = kColors[si % 10];
    if (p.bars) {
      const double bw = s.x.size() > 1 ? (X(s.x[1]) - X(s.x[0])) * 0.8 : pw * 0.5;
      for (size_t i = 0; i < s.x.size(); ++i) {
        o += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"/>\n", X(s.x[i]) - bw / 2,
                         Y(s.y[i]), bw, Y(ymin) - Y(s.y[i]), color);
        if (i < p.bar_labels.size())
          o += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n", X(s.x[i]),
                           kTop + ph + 14, xml_escape(p.bar_labels[i]));
      }
      continue;
    }
    std::string pts;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) pts += fmt::format("{:.1f},{:.1f} ", X(s.x[i]), Y(s.y[i]));
    o += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", color, pts);
    if (!s.name.empty() && p.series.size() > 1)
      o += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"{}\">{}</text>\n", kLeft + 6 + 70 * (si % 6),
                       kTop + 12 + 12 * (si / 6), color, xml_escape(s.name));
  }
  o += "</svg>\n";
  return o;
}

std::string SvgFigure::render(int cols) const {
  cols = std::max(1, cols);
  const int rows = static_cast<int>((panels_.size() + cols - 1) / cols);
  const int used_cols = std::min<int>(cols, std::max<int>(1, static_cast<int>(panels_.size())));
  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      kW * used_cols, kH * std::max(rows, 1));
  for (size_t i = 0; i < panels_.size(); ++i)
    o += render_panel(panels_[i], kW * static_cast<double>(i % cols), kH * static_cast<double>(i / cols));
  o += "</svg>\n";
  return o;
}

}  // namespace pdserve::bench
