// CheckpointStore: the trainer's checkpoints, output_dir/checkpoints/step-XXXXXXXX/ holding
//   the trained weights: unet.safetensors and text_encoder.safetensors (when the text encoder is trained), or, in LoRA
//   training, lora.safetensors (the adapters, kohya's names); optimizer.safetensors (AdamW's moments, its step count
//   and, for fp16, the loss scaler's state); with model.ema, ema.safetensors (the average of the trained weights, in the
//   optimizer's parameter order, and its update count); and state.json (RunState: the step and what the run was
//   trained with).
// A checkpoint is written into a temporary sibling folder, every file synced, and renamed to its final name: it is
// complete or absent. The last K are kept. The newest checkpoint that reads back whole is the one resumed; a damaged one
// (bad JSON, a missing or truncated file) is named and skipped, falling back to the previous one. A resume refuses a
// checkpoint trained with another seed, text-encoder setting, precision, LoRA or EMA setting or model, naming the key.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/fault.hpp"
#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/checkpoint.hpp"
#include "dreambooth/io/json.hpp"
#include "dreambooth/io/safetensors.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/lora_network.hpp"
#include "dreambooth/models/unet.hpp"
#include "dreambooth/nn/parameters.hpp"
#include "dreambooth/train/config.hpp"
#include "dreambooth/train/ema.hpp"
#include "dreambooth/train/loss_scaler.hpp"
#include "dreambooth/train/optimizer.hpp"

namespace dreambooth::train {

// What a checkpoint records besides its tensors (state.json). A resume must match every field but the step.
struct RunState {
  long step = 0;
  long seed = 0;
  bool train_text_encoder = false;
  std::string precision;  // the compute precision's canonical name (fp32, bf16, fp16, tf32)
  std::string model;      // the fine-tuned weights' path, absolute ("" in checkpoints older than this field)
  std::string lora;       // the LoRA settings (TrainingConfig::lora_description()); "": the whole model is trained
  std::string ema;        // the EMA settings (TrainingConfig::ema_description()); "": no EMA

  static RunState of(const TrainingConfig& c, long step) {
    RunState s;
    s.step = step;
    s.seed = c.seed;
    s.train_text_encoder = c.train_text_encoder;
    s.precision = c.compute_precision();
    s.model = trained_model_path(c);
    s.lora = c.lora_description();
    s.ema = c.ema_description();
    return s;
  }
  // The path of the weights fine-tuned: model.base_model_path, else model.restore_from_path, else the UNet's.
  static std::string trained_model_path(const TrainingConfig& c) {
    const std::string& p = !c.base_model_path.empty()     ? c.base_model_path
                           : !c.restore_from_path.empty() ? c.restore_from_path
                                                          : c.unet_from_pretrained;
    if (p.empty()) return {};
    std::error_code ec;
    const auto canonical = std::filesystem::weakly_canonical(std::filesystem::absolute(p), ec);
    return ec ? p : canonical.string();
  }

  nlohmann::json to_json() const {
    nlohmann::json j = {{"step", step}, {"seed", seed}, {"train_text_encoder", train_text_encoder}, {"precision", precision}, {"model", model}};
    if (!lora.empty()) j["lora"] = lora;
    if (!ema.empty()) j["ema"] = ema;
    return j;
  }
  static RunState from_json(const nlohmann::json& j, const std::filesystem::path& file) {
    if (!j.is_object()) fail("checkpoint state ", file.string(), ": not a JSON object");
    RunState s;
    const auto get = [&](const char* key, auto& into, bool required) {
      if (!j.contains(key)) {
        if (required) fail("checkpoint state ", file.string(), ": no \"", key, "\"");
        return;
      }
      try {
        j.at(key).get_to(into);
      } catch (const nlohmann::json::exception&) {
        fail("checkpoint state ", file.string(), ": \"", key, "\" has the wrong type (", j.at(key).dump(), ")");
      }
    };
    get("step", s.step, true);
    get("seed", s.seed, true);
    get("train_text_encoder", s.train_text_encoder, true);
    get("precision", s.precision, true);
    get("model", s.model, false);
    get("lora", s.lora, false);
    get("ema", s.ema, false);
    if (s.step < 1) fail("checkpoint state ", file.string(), ": step ", s.step, " is not a positive step");
    return s;
  }
};

// One file of trained weights in a checkpoint: its name and the parameters it holds (a model-like visit()).
template <class B>
struct TrainedWeights {
  std::string file;  // unet.safetensors, text_encoder.safetensors, lora.safetensors
  std::string what;  // for messages
  std::function<void(const nn::ParamVisitor<B>&)> walk;
  void visit(const nn::ParamVisitor<B>& f) { walk(f); }
};

// What a run trains: the LoRA adapters when there are some, else the UNet and (when trained) the text encoder.
template <class B>
std::vector<TrainedWeights<B>> trained_weights(models::UNet2DConditionModel<B>& unet, models::CLIPTextModel<B>* trained_text_encoder,
                                               models::LoraNetwork<B>* lora) {
  if (lora) return {{"lora.safetensors", "the LoRA adapters", [lora](const nn::ParamVisitor<B>& f) { lora->visit(f); }}};
  std::vector<TrainedWeights<B>> w = {{"unet.safetensors", "the UNet", [&unet](const nn::ParamVisitor<B>& f) { unet.visit(f); }}};
  if (trained_text_encoder)
    w.push_back(
        {"text_encoder.safetensors", "the text encoder", [trained_text_encoder](const nn::ParamVisitor<B>& f) { trained_text_encoder->visit(f); }});
  return w;
}

template <class B>
class CheckpointStore {
 public:
  using Note = std::function<void(const std::string&)>;

  // The store in output_dir/checkpoints, keeping the last `keep_last` (-1: all).
  CheckpointStore(const std::filesystem::path& output_dir, long keep_last) : folder_(output_dir / "checkpoints"), keep_last_(keep_last) {}

  const std::filesystem::path& folder() const { return folder_; }

  static std::string folder_name(long step) {
    char name[32];
    std::snprintf(name, sizeof name, "step-%08ld", step);
    return name;
  }

  // The published checkpoints, oldest first (temporary folders of a killed run are removed on the way).
  std::vector<std::filesystem::path> list() const {
    namespace fs = std::filesystem;
    std::vector<fs::path> all;
    if (!fs::is_directory(folder_)) return all;
    std::vector<fs::path> leftovers;
    for (const auto& e : fs::directory_iterator(folder_)) {
      const auto name = e.path().filename().string();
      if (name.find(".tmp-") != std::string::npos)
        leftovers.push_back(e.path());
      else if (e.is_directory() && name.rfind("step-", 0) == 0)
        all.push_back(e.path());
    }
    for (const auto& p : leftovers) fs::remove_all(p);
    std::sort(all.begin(), all.end());
    return all;
  }

  // Why the checkpoint in `dir` cannot be resumed ("" when it reads back whole): state.json parses and names the
  // folder's step, and every tensor file it needs opens with its header and data intact.
  static std::string damage(const std::filesystem::path& dir) {
    try {
      const auto state = RunState::from_json(io::read_json(dir / "state.json", "checkpoint state"), dir / "state.json");
      if (dir.filename().string() != folder_name(state.step))
        return "state.json says step " + std::to_string(state.step) + ", the folder's name another";
      if (!state.lora.empty()) {
        io::SafetensorsFile lora(dir / "lora.safetensors");
      } else {
        io::SafetensorsFile unet(dir / "unet.safetensors");
        if (state.train_text_encoder) io::SafetensorsFile text(dir / "text_encoder.safetensors");
      }
      io::SafetensorsFile moments(dir / "optimizer.safetensors");
      if (!moments.metadata().count("optimizer_steps")) return "optimizer.safetensors records no optimizer_steps";
      if (!state.ema.empty()) {
        io::SafetensorsFile average(dir / "ema.safetensors");
        if (!average.metadata().count("ema_updates")) return "ema.safetensors records no ema_updates";
      }
      return {};
    } catch (const std::exception& e) {
      return e.what();
    }
  }

  // The newest checkpoint that reads back whole; each damaged one newer than it is named through `note` and skipped.
  std::optional<std::filesystem::path> latest_good(const Note& note) const {
    auto all = list();
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      const auto why = damage(*it);
      if (why.empty()) return *it;
      note("checkpoint " + it->string() + " is damaged and skipped: " + why);
    }
    return std::nullopt;
  }

  // Writes step `state.step`'s checkpoint and drops the oldest beyond the last K. The weights are checked finite first:
  // a checkpoint of non-finite weights is never published.
  void save(const RunState& state, std::vector<TrainedWeights<B>> weights, AdamW<B>& optimizer, const DynamicLossScaler& scaler,
            const ExponentialMovingAverage<B>* ema = nullptr) {
    namespace fs = std::filesystem;
    const std::string at = "checkpoint at step " + std::to_string(state.step);
    for (auto& w : weights) nn::require_finite_parameters(w, at + ": " + w.what);
    const auto name = folder_name(state.step);
    const auto tmp = folder_ / (name + ".tmp-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    try {
      for (auto& w : weights) {
        io::save_parameters(w, tmp / w.file);
        fault::point("checkpoint-file");
      }
      io::SafetensorsWriter moments;
      for (std::size_t i = 0; i < optimizer.first_moments().size(); ++i) {
        moments.add("m." + std::to_string(i), optimizer.first_moments()[i]);
        moments.add("v." + std::to_string(i), optimizer.second_moments()[i]);
      }
      moments.set_metadata("optimizer_steps", std::to_string(optimizer.steps()));
      if (scaler.enabled()) {  // exact resume of an fp16 run
        std::ostringstream scale;
        scale << std::setprecision(17) << scaler.scale();
        moments.set_metadata("loss_scale", scale.str());
        moments.set_metadata("loss_scale_growth_tracker", std::to_string(scaler.growth_tracker()));
      }
      moments.write(tmp / "optimizer.safetensors");
      fault::point("checkpoint-file");
      if (ema) {
        io::SafetensorsWriter average;
        for (std::size_t i = 0; i < ema->shadows().size(); ++i) average.add("ema." + std::to_string(i), ema->shadows()[i]);
        average.set_metadata("ema_updates", std::to_string(ema->updates()));
        average.write(tmp / "ema.safetensors");
        fault::point("checkpoint-file");
      }
      io::write_file_atomically(tmp / "state.json", state.to_json().dump(2) + "\n", "checkpoint writer");
      fault::point("checkpoint-file");
      fault::point("checkpoint-rename");
      io::publish(tmp, folder_ / name, "checkpoint writer");
    } catch (...) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
      throw;
    }
    auto all = list();
    while (keep_last_ > 0 && all.size() > static_cast<std::size_t>(keep_last_)) {
      fs::remove_all(all.front());
      all.erase(all.begin());
    }
  }

  // Refuses to resume `dir` (recorded as `stored`) into a run configured as `now`, naming the first key that differs.
  static void require_compatible(const std::filesystem::path& dir, const RunState& stored, const RunState& now) {
    const auto refuse = [&](const std::string& key, const std::string& then, const std::string& here) {
      fail("checkpoint ", dir.string(), " was trained with ", key, " = ", then, ", and this run has ", here, ": resuming would mix two runs. Set ",
           key, " back, or start a fresh run with trainer.resume=never ", "(which removes this output directory's checkpoints and metrics)");
    };
    if (stored.seed != now.seed) refuse("model.seed", std::to_string(stored.seed), std::to_string(now.seed));
    if (stored.train_text_encoder != now.train_text_encoder)
      refuse("model.train_text_encoder", stored.train_text_encoder ? "true" : "false", now.train_text_encoder ? "true" : "false");
    if (stored.precision != now.precision) refuse("trainer.precision", stored.precision, now.precision);
    if (stored.lora != now.lora) refuse("model.peft (LoRA)", stored.lora.empty() ? "none" : stored.lora, now.lora.empty() ? "none" : now.lora);
    if (stored.ema != now.ema) refuse("model.ema (EMA)", stored.ema.empty() ? "none" : stored.ema, now.ema.empty() ? "none" : now.ema);
    if (!stored.model.empty() && stored.model != now.model)
      refuse("the model (model.restore_from_path / model.base_model_path)", stored.model, now.model);
  }

  // Loads a checkpoint into the model, the optimizer and the loss scaler; returns its state.
  static RunState restore(const std::filesystem::path& dir, const RunState& now, std::vector<TrainedWeights<B>> weights, AdamW<B>& optimizer,
                          DynamicLossScaler& scaler, const Note& note, ExponentialMovingAverage<B>* ema = nullptr) {
    const auto state = RunState::from_json(io::read_json(dir / "state.json", "checkpoint state"), dir / "state.json");
    require_compatible(dir, state, now);
    for (auto& w : weights) io::load_parameters(w, io::SafetensorsFile(dir / w.file));
    const io::SafetensorsFile moments(dir / "optimizer.safetensors");
    const auto expected = optimizer.first_moments().size();
    for (std::size_t i = 0; i < expected; ++i) {
      optimizer.first_moments()[i].copy_from_host(moments.read_f32("m." + std::to_string(i)));
      optimizer.second_moments()[i].copy_from_host(moments.read_f32("v." + std::to_string(i)));
    }
    const auto& meta = moments.metadata();
    try {
      optimizer.set_steps(std::stol(meta.at("optimizer_steps")));
    } catch (const std::exception&) {
      fail("checkpoint ", (dir / "optimizer.safetensors").string(), ": optimizer_steps is missing or not a number");
    }
    if (scaler.enabled()) {
      if (meta.count("loss_scale") && meta.count("loss_scale_growth_tracker"))
        scaler.load({std::stod(meta.at("loss_scale")), std::stol(meta.at("loss_scale_growth_tracker"))});
      else
        note("the checkpoint holds no loss scale (it was not written by an fp16 run): starting from " + std::to_string(scaler.scale()));
    }
    if (ema) {
      const io::SafetensorsFile average(dir / "ema.safetensors");
      for (std::size_t i = 0; i < ema->shadows().size(); ++i) {
        const auto name = "ema." + std::to_string(i);
        if (!average.contains(name) || average.info(name).shape != ema->shadows()[i].shape())
          fail("checkpoint ", (dir / "ema.safetensors").string(), ": ", name, " is missing or has the wrong shape for this run's weights");
        ema->shadows()[i].copy_from_host(average.read_f32(name));
      }
      try {
        ema->set_updates(std::stol(average.metadata().at("ema_updates")));
      } catch (const std::exception&) {
        fail("checkpoint ", (dir / "ema.safetensors").string(), ": ema_updates is missing or not a number");
      }
    }
    return state;
  }

  // trainer.resume=never: the checkpoints of an earlier run in this folder are removed.
  void remove_all() const {
    for (const auto& p : list()) std::filesystem::remove_all(p);
  }

 private:
  std::filesystem::path folder_;
  long keep_last_;
};

}  // namespace dreambooth::train
