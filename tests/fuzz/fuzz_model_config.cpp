// Fuzz target: the bytes of a model folder's JSON config, read as each of the four (scheduler/scheduler_config.json,
// unet/config.json, vae/config.json, text_encoder/config.json) through the loader's parse + validate code
// (io::parse_json, which io::read_json calls, then <Config>::from_json). A config that loads must write back a config
// that loads the same, and a scheduler config that loads must sample: any other exception than dreambooth::Error, or a
// broken invariant, is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dreambooth/io/json.hpp"
#include "dreambooth/models/clip_text.hpp"
#include "dreambooth/models/unet_config.hpp"
#include "dreambooth/models/vae.hpp"
#include "dreambooth/schedulers/schedulers.hpp"

namespace {
using namespace dreambooth;

// A config that loaded writes back one that loads to the same JSON.
template <class Config>
void round_trip(const Config& c) {
  const auto written = c.to_json();
  if (Config::from_json(written, "written").to_json() != written) std::abort();
}

// Every scheduler, configured by `c`, takes a few steps on a tiny sample (errors allowed, nothing else).
void sample(const schedulers::SchedulerConfig& c) {
  for (const char* name : {"ddim", "pndm", "euler", "euler_a", "dpm++2m"}) {
    try {
      auto s = schedulers::make_scheduler(name, c, 0.5);
      for (const int steps : {1, 3, 50}) {
        s->set_timesteps(steps);
        std::vector<float> x(4, 0.5f);
        const std::vector<float> out(4, 0.25f);
        for (std::size_t i = 0; i < s->timesteps().size(); ++i) {
          s->scale_model_input(x, i);
          x = s->step(out, i, x, schedulers::philox_noise(1));
        }
      }
    } catch (const Error&) {
    }
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j;
  try {
    j = io::parse_json(text, "config", "fuzz.json");
  } catch (const Error&) {
    return 0;
  }
  try {
    const auto c = schedulers::SchedulerConfig::from_json(j, "scheduler/scheduler_config.json");
    round_trip(c);
    sample(c);
  } catch (const Error&) {
  }
  try {
    round_trip(models::UNetConfig::from_json(j, "unet/config.json"));
  } catch (const Error&) {
  }
  try {
    round_trip(models::VAEConfig::from_json(j, "vae/config.json"));
  } catch (const Error&) {
  }
  try {
    round_trip(models::CLIPTextConfig::from_json(j, "text_encoder/config.json"));
  } catch (const Error&) {
  }
  return 0;
}
