// Small self-contained SVG charts (line charts, histograms, bar charts) laid out in a grid: the
// benchmark's --plot file and the analyzer's HTML page. Hand-written because the output is tiny
// and a plotting library (gnuplot, matplotlib) would be a runtime dependency for one picture.
#pragma once

#include <string>
#include <vector>

namespace pdserve::bench {

struct Series {
  std::string name;
  std::vector<double> x, y;
};

class SvgFigure {
 public:
  void add_line_chart(std::string title, std::string xlabel, std::string ylabel, std::vector<Series> series);
  // Counts of `values` in `bins` equal-width bins between their min and max.
  void add_histogram(std::string title, std::string xlabel, const std::vector<double>& values, int bins = 30);
  void add_bar_chart(std::string title, std::string ylabel, std::vector<std::string> labels, std::vector<double> values);
  bool empty() const { return panels_.empty(); }
  // The whole figure as one <svg> element, `cols` panels per row.
  std::string render(int cols = 2) const;

 private:
  struct Panel {
    std::string title, xlabel, ylabel;
    std::vector<Series> series;
    std::vector<std::string> bar_labels;  // bar chart when non-empty
    bool bars = false;
  };
  std::string render_panel(const Panel& p, double x0, double y0) const;
  std::vector<Panel> panels_;
};

// Escapes &, <, >, " for SVG/HTML text.
std::string xml_escape(const std::string& s);

}  // namespace pdserve::bench
