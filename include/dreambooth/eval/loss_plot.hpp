// The loss curves of training runs as a PNG: each run's per-step loss (faint) and its moving average over 20 steps,
// read from the runs' metrics.jsonl, on shared axes with labelled ticks and a legend.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/data/canvas.hpp"

namespace dreambooth::eval {

struct LossCurve {
  std::string label;
  data::Rgb colour;
  std::vector<long> steps;
  std::vector<double> losses;
};

// The "step" and "loss" of every line of a trainer's metrics.jsonl.
inline LossCurve read_loss_curve(const std::filesystem::path& metrics_jsonl, std::string label, data::Rgb colour) {
  std::ifstream in(metrics_jsonl, std::ios::binary);
  if (!in) fail("metrics log ", metrics_jsonl.string(), ": cannot open");
  LossCurve curve{std::move(label), colour, {}, {}};
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("step") || !j.contains("loss") || !j["step"].is_number_integer() || !j["loss"].is_number())
      fail("metrics log ", metrics_jsonl.string(), " line ", number, ": not a {\"step\": N, \"loss\": X, ...} object");
    curve.steps.push_back(j["step"].get<long>());
    curve.losses.push_back(j["loss"].get<double>());
  }
  if (curve.steps.empty()) fail("metrics log ", metrics_jsonl.string(), ": no steps");
  return curve;
}

// The mean of losses[i - window + 1 .. i] (fewer at the start).
inline std::vector<double> moving_average(const std::vector<double>& losses, std::size_t window) {
  std::vector<double> out(losses.size());
  double sum = 0;
  for (std::size_t i = 0; i < losses.size(); ++i) {
    sum += losses[i];
    if (i >= window) sum -= losses[i - window];
    out[i] = sum / static_cast<double>(std::min(i + 1, window));
  }
  return out;
}

inline std::string tick_label(double v) {
  char text[32];
  std::snprintf(text, sizeof text, v != 0 && std::abs(v) < 0.01 ? "%.1e" : "%.3g", v);
  return text;
}

inline void write_loss_plot(const std::filesystem::path& path, const std::vector<LossCurve>& curves, const std::string& title) {
  if (curves.empty()) fail("loss plot ", path.string(), ": no curves");
  constexpr int W = 560, H = 300, left = 56, right = 16, top = 28, bottom = 40;
  data::Canvas canvas(W, H, {255, 255, 255});
  long max_step = 1;
  double max_loss = 0;
  for (const auto& c : curves) {
    max_step = std::max(max_step, c.steps.back());
    for (const double v : c.losses)
      if (std::isfinite(v)) max_loss = std::max(max_loss, v);
  }
  if (max_loss <= 0) max_loss = 1;
  const double px = static_cast<double>(W - left - right) / static_cast<double>(max_step), py = static_cast<double>(H - top - bottom) / max_loss;
  const auto x_of = [&](double step) { return left + step * px; };
  const auto y_of = [&](double loss) { return H - bottom - std::clamp(loss, 0.0, max_loss) * py; };
  const data::Rgb ink{40, 40, 40}, grid{225, 225, 225};
  for (int k = 0; k <= 4; ++k) {  // horizontal grid lines with their loss values
    const double v = max_loss * k / 4;
    canvas.line(left, y_of(v), W - right, y_of(v), grid);
    const auto label = tick_label(v);
    canvas.text(left - 6 - data::Canvas::text_width(label), static_cast<int>(y_of(v)) - 3, label, ink);
  }
  for (int k = 0; k <= 4; ++k) {  // step ticks
    const long s = max_step * k / 4;
    const auto label = std::to_string(s);
    canvas.line(x_of(static_cast<double>(s)), H - bottom, x_of(static_cast<double>(s)), H - bottom + 4, ink);
    canvas.text(static_cast<int>(x_of(static_cast<double>(s))) - data::Canvas::text_width(label) / 2, H - bottom + 8, label, ink);
  }
  canvas.line(left, top, left, H - bottom, ink);
  canvas.line(left, H - bottom, W - right, H - bottom, ink);
  canvas.text(left, 8, title, ink);
  canvas.text(W / 2 - data::Canvas::text_width("STEP") / 2, H - 14, "STEP", ink);
  int legend_x = W - right;
  for (auto it = curves.rbegin(); it != curves.rend(); ++it) {  // the legend, right-aligned on the title's line
    legend_x -= data::Canvas::text_width(it->label) + 22;
    canvas.fill_rect(legend_x, 9, 12, 5, it->colour);
    canvas.text(legend_x + 16, 8, it->label, ink);
  }
  for (const auto& c : curves) {
    const data::Rgb faint{static_cast<std::uint8_t>(255 - (255 - c.colour.r) / 4), static_cast<std::uint8_t>(255 - (255 - c.colour.g) / 4),
                          static_cast<std::uint8_t>(255 - (255 - c.colour.b) / 4)};
    const auto smooth = moving_average(c.losses, 20);
    for (std::size_t i = 1; i < c.steps.size(); ++i)
      canvas.line(x_of(static_cast<double>(c.steps[i - 1])), y_of(c.losses[i - 1]), x_of(static_cast<double>(c.steps[i])), y_of(c.losses[i]), faint);
    for (std::size_t i = 1; i < c.steps.size(); ++i)
      canvas.line(x_of(static_cast<double>(c.steps[i - 1])), y_of(smooth[i - 1]), x_of(static_cast<double>(c.steps[i])), y_of(smooth[i]), c.colour,
                  2);
  }
  canvas.write_png(path, {{"Software", "dreambooth.cpp"}, {"Title", title}});
}

}  // namespace dreambooth::eval
