// Noise schedulers, host-side math on latents as float vectors, with diffusers' semantics:
//   DDPM (training: add_noise, epsilon and v-prediction targets), DDIM (eta), PNDM / PLMS with skip_prk_steps (SD 1.5's
//   default), Euler, Euler ancestral, DPM-Solver++ 2M. Timestep spacing ("leading", "trailing", "linspace") as diffusers
//   does it, each scheduler's own default when scheduler_config.json does not say.
// Noise that a sampler injects (DDIM with eta > 0, Euler ancestral) comes from the counter-based RNG:
// rng::normal(seed, kNoiseOffset + step, i), so a run is reproducible on every backend.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/rng.hpp"
#include "dreambooth/io/json.hpp"

namespace dreambooth::schedulers {

struct SchedulerConfig {
  std::string class_name = "PNDMScheduler";
  int num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";
  std::string prediction_type = "epsilon";
  bool set_alpha_to_one = false;
  int steps_offset = 1;
  bool skip_prk_steps = true;
  std::string timestep_spacing;     // empty: the scheduler's own default
  std::optional<bool> clip_sample;  // unset: the scheduler's own default (DDIM: true)
  double clip_sample_range = 1.0;
  // DPM-Solver++
  int solver_order = 2;
  std::string algorithm_type = "dpmsolver++";
  bool lower_order_final = true;
  std::string final_sigmas_type = "zero";
  // The keys of the scheduler_config.json this came from that the fields above do not hold (DDPM's variance_type, ...),
  // written back by to_json() so that an exported pipeline keeps its scheduler as it was.
  nlohmann::json other_keys = nlohmann::json::object();

  static SchedulerConfig from_json(const nlohmann::json& j, const std::string& origin) {
    const io::ConfigFields f(j, "scheduler config", origin);
    SchedulerConfig c;
    f.get("_class_name", c.class_name);
    f.get("num_train_timesteps", c.num_train_timesteps);
    f.get("beta_start", c.beta_start);
    f.get("beta_end", c.beta_end);
    f.get("beta_schedule", c.beta_schedule);
    f.get("prediction_type", c.prediction_type);
    f.get("set_alpha_to_one", c.set_alpha_to_one);
    f.get("steps_offset", c.steps_offset);
    f.get("skip_prk_steps", c.skip_prk_steps);
    f.get("timestep_spacing", c.timestep_spacing);
    f.get("clip_sample", c.clip_sample);
    f.get("clip_sample_range", c.clip_sample_range);
    f.get("solver_order", c.solver_order);
    f.get("algorithm_type", c.algorithm_type);
    f.get("lower_order_final", c.lower_order_final);
    f.get("final_sigmas_type", c.final_sigmas_type);
    static const char* kModelled[] = {"_class_name",       "num_train_timesteps", "beta_start",        "beta_end",       "beta_schedule",
                                      "prediction_type",   "set_alpha_to_one",    "steps_offset",      "skip_prk_steps", "timestep_spacing",
                                      "clip_sample",       "clip_sample_range",   "solver_order",      "algorithm_type", "lower_order_final",
                                      "final_sigmas_type", "trained_betas",       "_diffusers_version"};
    for (const auto& item : j.items()) {
      const std::string& key = item.key();
      if (std::find_if(std::begin(kModelled), std::end(kModelled), [&](const char* k) { return key == k; }) == std::end(kModelled))
        c.other_keys[key] = item.value();
    }
    if (f.has("trained_betas")) {  // diffusers: betas given outright, one per training timestep
      const auto betas = f.convert<std::vector<double>>("trained_betas", f.at("trained_betas"));
      if (betas.size() != static_cast<std::size_t>(std::max(c.num_train_timesteps, 0)))
        f.bad_key("trained_betas", "holds ", betas.size(), " values but num_train_timesteps is ", c.num_train_timesteps);
      f.bad_key("trained_betas", "(explicit betas) is not supported; give beta_schedule, beta_start and beta_end");
    }
    // Options that change the schedule or the sampler in ways not implemented here: refused rather than ignored.
    for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr", "thresholding"}) {
      bool on = false;
      f.get(key, on);
      if (on) f.bad_key(key, "= true is not supported");
    }
    using Allowed = std::pair<const char*, const char*>;
    for (const auto& [key, allowed] : {Allowed{"interpolation_type", "linear"}, Allowed{"timestep_type", "discrete"}}) {
      std::string value = allowed;
      f.get(key, value);
      if (value != allowed) f.bad_key(key, "\"", value, "\" is not supported (", allowed, ")");
    }
    c.validate(origin);
    return c;
  }

  // The ranges and values diffusers' schedulers accept (of those implemented here); errors name `origin` and the key.
  void validate(const std::string& origin) const {
    const auto bad = [&](const char* key, auto&&... parts) { fail("scheduler config ", origin, ": key \"", key, "\" ", parts...); };
    if (num_train_timesteps < 1 || num_train_timesteps > kMaxTrainTimesteps)
      bad("num_train_timesteps", "= ", num_train_timesteps, " is not between 1 and ", kMaxTrainTimesteps);
    if (!(beta_start > 0 && beta_start < 1)) bad("beta_start", "= ", beta_start, " is not between 0 and 1 (exclusive)");
    if (!(beta_end > 0 && beta_end < 1)) bad("beta_end", "= ", beta_end, " is not between 0 and 1 (exclusive)");
    if (beta_start > beta_end) bad("beta_start", "= ", beta_start, " is larger than beta_end ", beta_end);
    if (beta_schedule != "scaled_linear" && beta_schedule != "linear")
      bad("beta_schedule", "\"", beta_schedule, "\" is not supported (scaled_linear or linear)");
    if (prediction_type != "epsilon" && prediction_type != "v_prediction")
      bad("prediction_type", "\"", prediction_type, "\" is not supported (epsilon or v_prediction)");
    if (!timestep_spacing.empty() && timestep_spacing != "leading" && timestep_spacing != "trailing" && timestep_spacing != "linspace")
      bad("timestep_spacing", "\"", timestep_spacing, "\" is not leading, trailing or linspace");
    if (steps_offset < 0 || steps_offset >= num_train_timesteps)
      bad("steps_offset", "= ", steps_offset, " is not between 0 and num_train_timesteps - 1 (", num_train_timesteps - 1, ")");
    if (!(clip_sample_range > 0) || !std::isfinite(clip_sample_range)) bad("clip_sample_range", "= ", clip_sample_range, " is not positive");
    if (solver_order < 1 || solver_order > 3) bad("solver_order", "= ", solver_order, " is not 1, 2 or 3");
    if (algorithm_type != "dpmsolver++" && algorithm_type != "sde-dpmsolver++" && algorithm_type != "dpmsolver" && algorithm_type != "sde-dpmsolver")
      bad("algorithm_type", "\"", algorithm_type, "\" is not dpmsolver++, sde-dpmsolver++, dpmsolver or sde-dpmsolver");
    if (final_sigmas_type != "zero" && final_sigmas_type != "sigma_min")
      bad("final_sigmas_type", "\"", final_sigmas_type, "\" is not zero or sigma_min");
  }
  static constexpr int kMaxTrainTimesteps = 100'000;
  static SchedulerConfig from_file(const std::filesystem::path& path) { return from_json(io::read_json(path, "scheduler config"), path.string()); }

  // diffusers' scheduler_config.json.
  nlohmann::json to_json() const {
    nlohmann::json j = {{"_class_name", class_name},          {"_diffusers_version", "0.31.0"}, {"num_train_timesteps", num_train_timesteps},
                        {"beta_start", beta_start},           {"beta_end", beta_end},           {"beta_schedule", beta_schedule},
                        {"prediction_type", prediction_type}, {"steps_offset", steps_offset},   {"trained_betas", nullptr}};
    if (class_name == "PNDMScheduler" || class_name == "DDIMScheduler") j["set_alpha_to_one"] = set_alpha_to_one;
    if (class_name == "PNDMScheduler") j["skip_prk_steps"] = skip_prk_steps;
    if (!timestep_spacing.empty()) j["timestep_spacing"] = timestep_spacing;
    if (clip_sample) j["clip_sample"] = *clip_sample;
    if (clip_sample_range != 1.0) j["clip_sample_range"] = clip_sample_range;
    if (class_name == "DPMSolverMultistepScheduler")
      j.update({{"solver_order", solver_order},
                {"algorithm_type", algorithm_type},
                {"lower_order_final", lower_order_final},
                {"final_sigmas_type", final_sigmas_type}});
    for (const auto& [key, value] : other_keys.items()) j[key] = value;
    return j;
  }
};

// alphas_cumprod[t] of the training schedule (float32 as diffusers computes it, then held in double).
inline std::vector<double> alphas_cumprod(const SchedulerConfig& c) {
  c.validate("in use");  // a configuration made in code, or from NeMo's keys
  const int N = c.num_train_timesteps;
  std::vector<double> out(static_cast<std::size_t>(N));
  float product = 1.0f;
  for (int i = 0; i < N; ++i) {
    const double frac = N > 1 ? static_cast<double>(i) / (N - 1) : 0.0;
    float beta;
    if (c.beta_schedule == "scaled_linear") {
      const float s = static_cast<float>(std::sqrt(c.beta_start) + (std::sqrt(c.beta_end) - std::sqrt(c.beta_start)) * frac);
      beta = s * s;
    } else {
      beta = static_cast<float>(c.beta_start + (c.beta_end - c.beta_start) * frac);
    }
    product *= 1.0f - beta;
    out[static_cast<std::size_t>(i)] = product;
  }
  return out;
}

// DDPM training: x_t = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) eps; targets eps (epsilon) or v = sqrt(acp) eps - sqrt(1-acp) x0.
struct NoiseSchedule {
  SchedulerConfig config;
  std::vector<double> acp;
  explicit NoiseSchedule(SchedulerConfig c) : config(std::move(c)), acp(alphas_cumprod(config)) {}
  float signal(int t) const { return static_cast<float>(std::sqrt(acp.at(static_cast<std::size_t>(t)))); }
  float noise(int t) const { return static_cast<float>(std::sqrt(1.0 - acp.at(static_cast<std::size_t>(t)))); }
};

// Noise for a sampler step: `count` N(0, 1) values for step `step`.
using NoiseSource = std::function<std::vector<float>(std::size_t count, std::size_t step)>;
constexpr std::uint64_t kNoiseOffset = 1u << 20;
inline NoiseSource philox_noise(std::uint64_t seed) {
  return [seed](std::size_t count, std::size_t step) {
    std::vector<float> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = rng::normal(seed, kNoiseOffset + step, i);
    return v;
  };
}

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig c) : config_(std::move(c)), acp_(alphas_cumprod(config_)) {}
  virtual ~Scheduler() = default;
  virtual std::string name() const = 0;
  virtual void set_timesteps(int steps) = 0;
  // The timesteps the model is called with, in order (PLMS repeats one: 50 steps are 51 calls).
  const std::vector<double>& timesteps() const { return timesteps_; }
  virtual double init_noise_sigma() const { return 1.0; }
  virtual void scale_model_input(std::vector<float>& /*x*/, std::size_t /*step*/) const {}
  // One update: the sample after model call number `step` (0-based) returned `model_output`.
  virtual std::vector<float> step(const std::vector<float>& model_output, std::size_t step, const std::vector<float>& sample,
                                  const NoiseSource& noise) = 0;
  const SchedulerConfig& config() const { return config_; }

 protected:
  std::string spacing(const char* default_spacing) const { return config_.timestep_spacing.empty() ? default_spacing : config_.timestep_spacing; }
  // Integer timesteps, descending, for the discrete schedulers (DDIM, PNDM): "leading", "trailing" or "linspace".
  std::vector<long> discrete_timesteps(int steps, const char* default_spacing) const {
    const int N = config_.num_train_timesteps;
    DB_CHECK(steps > 0, name(), ": the number of inference steps must be positive, not ", steps);
    DB_CHECK(steps <= N, name(), ": ", steps, " inference steps exceed the ", N, " training timesteps");
    std::vector<long> t(static_cast<std::size_t>(steps));
    const auto s = spacing(default_spacing);
    if (s == "leading") {
      const int ratio = N / steps;
      for (int i = 0; i < steps; ++i) t[static_cast<std::size_t>(i)] = static_cast<long>(steps - 1 - i) * ratio + config_.steps_offset;
    } else if (s == "trailing") {
      const double ratio = static_cast<double>(N) / steps;
      for (int i = 0; i < steps; ++i)
        t[static_cast<std::size_t>(i)] = std::lrint(N - i * ratio) - 1;  // round(arange(N, 0, -ratio)) - 1, half to even as numpy
    } else if (s == "linspace") {
      for (int i = 0; i < steps; ++i)
        t[static_cast<std::size_t>(i)] = std::lrint(steps > 1 ? (N - 1) * static_cast<double>(steps - 1 - i) / (steps - 1) : 0.0);
    } else {
      fail(name(), ": timestep_spacing \"", s, "\" is not supported");
    }
    check_timesteps(t, steps);
    return t;
  }
  // Timesteps past the training schedule (a large steps_offset) are an error, not an index out of range.
  void check_timesteps(const std::vector<long>& t, int steps) const {
    for (const long v : t)
      if (v < 0 || v >= config_.num_train_timesteps)
        fail(name(), ": ", steps, " inference steps with steps_offset ", config_.steps_offset, " reach timestep ", v, ", outside the ",
             config_.num_train_timesteps, " training timesteps");
  }
  double acp(long t) const { return acp_.at(static_cast<std::size_t>(t)); }
  double final_alpha() const { return config_.set_alpha_to_one ? 1.0 : acp_[0]; }
  // The epsilon a model output stands for (v-prediction converted).
  double to_epsilon(double out, double x, double alpha) const {
    return config_.prediction_type == "epsilon" ? out : std::sqrt(alpha) * out + std::sqrt(1 - alpha) * x;
  }
  double to_x0(double out, double x, double alpha) const {
    return config_.prediction_type == "epsilon" ? (x - std::sqrt(1 - alpha) * out) / std::sqrt(alpha)
                                                : std::sqrt(alpha) * x - std::sqrt(1 - alpha) * out;
  }

  SchedulerConfig config_;
  std::vector<double> acp_;
  std::vector<double> timesteps_;
  int steps_ = 0;
};

class DDIMScheduler : public Scheduler {
 public:
  DDIMScheduler(SchedulerConfig c, double eta = 0.0) : Scheduler(std::move(c)), eta_(eta) {}
  std::string name() const override { return "DDIMScheduler"; }
  void set_timesteps(int steps) override {
    steps_ = steps;
    const auto t = discrete_timesteps(steps, "leading");
    timesteps_.assign(t.begin(), t.end());
  }
  std::vector<float> step(const std::vector<float>& out, std::size_t step, const std::vector<float>& x, const NoiseSource& noise) override {
    const long t = static_cast<long>(timesteps_.at(step));
    const long prev = t - config_.num_train_timesteps / steps_;
    const double a = acp(t), a_prev = prev >= 0 ? acp(prev) : final_alpha();
    const double variance = (1 - a_prev) / (1 - a) * (1 - a / a_prev);
    const double sigma = eta_ * std::sqrt(variance);
    std::vector<float> z = eta_ > 0 ? noise(x.size(), step) : std::vector<float>();
    std::vector<float> r(x.size());
    const bool clip = config_.clip_sample.value_or(true);  // DDIM's default; SD's PNDM config does not set it
    const double range = config_.clip_sample_range;
    for (std::size_t i = 0; i < x.size(); ++i) {
      double x0 = to_x0(out[i], x[i], a);
      const double eps = to_epsilon(out[i], x[i], a);  // the model's, not recomputed from the clipped x0 (diffusers' default)
      if (clip) x0 = std::clamp(x0, -range, range);
      double v = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev - sigma * sigma) * eps;
      if (eta_ > 0) v += sigma * z[i];
      r[i] = static_cast<float>(v);
    }
    return r;
  }

 private:
  double eta_;
};

// PNDM with skip_prk_steps: the linear multistep (PLMS) part only, as SD 1.5 and NeMo's regularization images use it.
class PNDMScheduler : public Scheduler {
 public:
  explicit PNDMScheduler(SchedulerConfig c) : Scheduler(std::move(c)) {
    DB_CHECK(config_.skip_prk_steps, "PNDMScheduler: only skip_prk_steps = true (PLMS) is supported");
  }
  std::string name() const override { return "PNDMScheduler"; }
  void set_timesteps(int steps) override {
    steps_ = steps;
    auto t = discrete_timesteps(steps, "leading");  // descending
    std::reverse(t.begin(), t.end());               // ascending, as diffusers' _timesteps
    std::vector<long> plms(t.begin(), t.end() - 1);
    if (t.size() >= 2) plms.push_back(t[t.size() - 2]);
    plms.push_back(t.back());
    timesteps_.assign(plms.rbegin(), plms.rend());
    ets_.clear();
    counter_ = 0;
  }
  std::vector<float> step(const std::vector<float>& out, std::size_t step, const std::vector<float>& x, const NoiseSource&) override {
    long t = static_cast<long>(timesteps_.at(step));
    const long ratio = config_.num_train_timesteps / steps_;
    long prev = t - ratio;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(out);
    } else {
      prev = t;
      t = t + ratio;
    }
    std::vector<double> e(x.size());
    std::vector<float> sample = x;
    const std::size_t n = ets_.size();
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (n == 1 && counter_ == 0)
        e[i] = out[i];
      else if (n == 1 && counter_ == 1)
        e[i] = (double(out[i]) + ets_.back()[i]) / 2;
      else if (n == 2)
        e[i] = (3.0 * ets_[n - 1][i] - ets_[n - 2][i]) / 2;
      else if (n == 3)
        e[i] = (23.0 * ets_[n - 1][i] - 16.0 * ets_[n - 2][i] + 5.0 * ets_[n - 3][i]) / 12;
      else
        e[i] = (55.0 * ets_[n - 1][i] - 59.0 * ets_[n - 2][i] + 37.0 * ets_[n - 3][i] - 9.0 * ets_[n - 4][i]) / 24;
    }
    if (n == 1 && counter_ == 0) cur_sample_ = x;
    if (n == 1 && counter_ == 1) sample = cur_sample_;
    const double a = acp(t), a_prev = prev >= 0 ? acp(prev) : final_alpha();
    const double sample_coeff = std::sqrt(a_prev / a);
    const double denom = a * std::sqrt(1 - a_prev) + std::sqrt(a * (1 - a) * a_prev);
    std::vector<float> r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double model = config_.prediction_type == "v_prediction" ? std::sqrt(a) * e[i] + std::sqrt(1 - a) * sample[i] : e[i];
      r[i] = static_cast<float>(sample_coeff * sample[i] - (a_prev - a) * model / denom);
    }
    ++counter_;
    return r;
  }

 private:
  std::vector<std::vector<float>> ets_;
  std::vector<float> cur_sample_;
  int counter_ = 0;
};

// Euler and Euler ancestral: sigma = sqrt((1 - acp) / acp), timesteps interpolated ("linspace" by default).
class EulerScheduler : public Scheduler {
 public:
  EulerScheduler(SchedulerConfig c, bool ancestral) : Scheduler(std::move(c)), ancestral_(ancestral) {}
  std::string name() const override { return ancestral_ ? "EulerAncestralDiscreteScheduler" : "EulerDiscreteScheduler"; }
  void set_timesteps(int steps) override {
    const int N = config_.num_train_timesteps;
    DB_CHECK(steps > 0 && steps <= N, name(), ": ", steps, " inference steps (1 to ", N, ")");
    steps_ = steps;
    const auto s = spacing("linspace");
    timesteps_.assign(static_cast<std::size_t>(steps), 0.0);
    if (s == "linspace") {
      for (int i = 0; i < steps; ++i)
        timesteps_[static_cast<std::size_t>(i)] = steps > 1 ? (N - 1) * static_cast<double>(steps - 1 - i) / (steps - 1) : 0.0;
    } else {
      const auto t = discrete_timesteps(steps, "linspace");
      timesteps_.assign(t.begin(), t.end());
    }
    sigmas_.clear();
    for (double t : timesteps_) {  // interpolate sigma over the integer training timesteps
      const auto lo = static_cast<std::size_t>(std::floor(t)), hi = std::min(lo + 1, acp_.size() - 1);
      const double w = t - std::floor(t);
      const auto sig = [&](std::size_t k) { return std::sqrt((1 - acp_[k]) / acp_[k]); };
      sigmas_.push_back((1 - w) * sig(lo) + w * sig(hi));
    }
    sigmas_.push_back(0.0);
    // diffusers keeps sigmas in float32
    for (auto& sg : sigmas_) sg = static_cast<float>(sg);
    for (auto& t : timesteps_) t = static_cast<float>(t);
  }
  double init_noise_sigma() const override {
    const double max_sigma = *std::max_element(sigmas_.begin(), sigmas_.end());
    const auto s = spacing("linspace");
    return s == "linspace" || s == "trailing" ? max_sigma : std::sqrt(max_sigma * max_sigma + 1);
  }
  void scale_model_input(std::vector<float>& x, std::size_t step) const override {
    const double sigma = sigmas_.at(step);
    const double scale = 1.0 / std::sqrt(sigma * sigma + 1);
    for (auto& v : x) v = static_cast<float>(v * scale);
  }
  std::vector<float> step(const std::vector<float>& out, std::size_t step, const std::vector<float>& x, const NoiseSource& noise) override {
    const double sigma = sigmas_.at(step), sigma_next = sigmas_.at(step + 1);
    double dt = sigma_next - sigma, sigma_up = 0;
    if (ancestral_) {
      sigma_up = std::sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma));
      const double sigma_down = std::sqrt(sigma_next * sigma_next - sigma_up * sigma_up);
      dt = sigma_down - sigma;
    }
    std::vector<float> z = ancestral_ ? noise(x.size(), step) : std::vector<float>();
    std::vector<float> r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double x0 = config_.prediction_type == "epsilon" ? x[i] - sigma * out[i]
                                                             : out[i] * (-sigma / std::sqrt(sigma * sigma + 1)) + x[i] / (sigma * sigma + 1);
      const double derivative = (x[i] - x0) / sigma;
      double v = x[i] + derivative * dt;
      if (ancestral_) v += z[i] * sigma_up;
      r[i] = static_cast<float>(v);
    }
    return r;
  }

 private:
  bool ancestral_;
  std::vector<double> sigmas_;
};

// DPM-Solver++ (2M): multistep, data prediction, second order with a first-order first and last step.
class DPMSolverMultistepScheduler : public Scheduler {
 public:
  explicit DPMSolverMultistepScheduler(SchedulerConfig c) : Scheduler(std::move(c)) {
    DB_CHECK(config_.algorithm_type == "dpmsolver++", "DPMSolverMultistepScheduler: only algorithm_type dpmsolver++ is supported");
    DB_CHECK(config_.solver_order == 1 || config_.solver_order == 2, "DPMSolverMultistepScheduler: solver_order 1 or 2 is supported");
  }
  std::string name() const override { return "DPMSolverMultistepScheduler"; }
  void set_timesteps(int steps) override {
    const int N = config_.num_train_timesteps;
    DB_CHECK(steps > 0 && steps <= N, name(), ": ", steps, " inference steps (1 to ", N, ")");
    steps_ = steps;
    const auto s = spacing("linspace");
    std::vector<long> t;
    if (s == "linspace") {
      for (int i = 0; i < steps; ++i)
        t.push_back(std::lrint((N - 1) * static_cast<double>(steps - i) / steps));  // linspace(0, N-1, n+1) reversed, last dropped
    } else if (s == "leading") {                                                    // DPM-Solver's own "leading": n + 1 points, the last dropped
      const long ratio = N / (steps + 1);
      for (int i = 0; i < steps; ++i) t.push_back(static_cast<long>(steps - i) * ratio + config_.steps_offset);
    } else {
      t = discrete_timesteps(steps, "linspace");
    }
    check_timesteps(t, steps);
    timesteps_.assign(t.begin(), t.end());
    sigmas_.clear();
    for (long k : t) sigmas_.push_back(static_cast<float>(std::sqrt((1 - acp(k)) / acp(k))));
    sigmas_.push_back(config_.final_sigmas_type == "zero" ? 0.0 : static_cast<float>(std::sqrt((1 - acp_[0]) / acp_[0])));
    outputs_.clear();
    lower_order_nums_ = 0;
  }
  std::vector<float> step(const std::vector<float>& out, std::size_t step, const std::vector<float>& x, const NoiseSource&) override {
    const auto alpha_sigma = [](double sigma) {
      const double a = 1 / std::sqrt(sigma * sigma + 1);
      return std::pair<double, double>{a, sigma * a};
    };
    const auto [alpha_s0, sigma_s0] = alpha_sigma(sigmas_.at(step));
    // data prediction x0
    std::vector<double> x0(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      x0[i] = config_.prediction_type == "epsilon" ? (x[i] - sigma_s0 * out[i]) / alpha_s0 : alpha_s0 * x[i] - sigma_s0 * out[i];
    outputs_.push_back(x0);
    if (outputs_.size() > 2) outputs_.erase(outputs_.begin());
    const bool last = step + 1 == timesteps_.size();
    const bool lower_order_final = last && ((config_.lower_order_final && timesteps_.size() < 15) || config_.final_sigmas_type == "zero");
    const bool first_order = config_.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final;
    const auto [alpha_t, sigma_t] = alpha_sigma(sigmas_.at(step + 1));
    const double lambda_t = std::log(alpha_t) - std::log(sigma_t), lambda_s0 = std::log(alpha_s0) - std::log(sigma_s0);
    const double h = lambda_t - lambda_s0;
    std::vector<float> r(x.size());
    if (first_order) {
      for (std::size_t i = 0; i < x.size(); ++i) r[i] = static_cast<float>(sigma_t / sigma_s0 * x[i] - alpha_t * (std::exp(-h) - 1.0) * x0[i]);
    } else {
      const auto [alpha_s1, sigma_s1] = alpha_sigma(sigmas_.at(step - 1));
      const double lambda_s1 = std::log(alpha_s1) - std::log(sigma_s1);
      const double r0 = (lambda_s0 - lambda_s1) / h;
      const auto& m0 = outputs_[1];
      const auto& m1 = outputs_[0];
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double d1 = (m0[i] - m1[i]) / r0;
        r[i] = static_cast<float>(sigma_t / sigma_s0 * x[i] - alpha_t * (std::exp(-h) - 1.0) * m0[i] - 0.5 * alpha_t * (std::exp(-h) - 1.0) * d1);
      }
    }
    lower_order_nums_ = std::min(lower_order_nums_ + 1, config_.solver_order);
    return r;
  }

 private:
  std::vector<double> sigmas_;
  std::vector<std::vector<double>> outputs_;
  int lower_order_nums_ = 0;
};

// The names make_scheduler() accepts: ddim, pndm / plms, euler, euler_a, dpm++2m, or a diffusers class name.
inline bool is_scheduler_name(const std::string& name) {
  for (const char* known : {"ddim", "DDIMScheduler", "pndm", "plms", "PNDMScheduler", "euler", "EulerDiscreteScheduler", "euler_a",
                            "EulerAncestralDiscreteScheduler", "dpm++2m", "DPMSolverMultistepScheduler"})
    if (name == known) return true;
  return false;
}
constexpr const char* kSchedulerNames = "ddim, pndm, euler, euler_a, dpm++2m";

// A scheduler by name (ddim, pndm / plms, euler, euler_a, dpm++2m, or a diffusers class name), configured by `config`.
inline std::unique_ptr<Scheduler> make_scheduler(const std::string& name, SchedulerConfig config, double eta = 0.0) {
  if (name == "ddim" || name == "DDIMScheduler") return std::make_unique<DDIMScheduler>(std::move(config), eta);
  if (name == "pndm" || name == "plms" || name == "PNDMScheduler") return std::make_unique<PNDMScheduler>(std::move(config));
  if (name == "euler" || name == "EulerDiscreteScheduler") return std::make_unique<EulerScheduler>(std::move(config), false);
  if (name == "euler_a" || name == "EulerAncestralDiscreteScheduler") return std::make_unique<EulerScheduler>(std::move(config), true);
  if (name == "dpm++2m" || name == "DPMSolverMultistepScheduler") return std::make_unique<DPMSolverMultistepScheduler>(std::move(config));
  fail("unknown scheduler \"", name, "\" (", kSchedulerNames, ")");
}

}  // namespace dreambooth::schedulers
