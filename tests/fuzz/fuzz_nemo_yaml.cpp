// Fuzz target: a training configuration in NeMo's YAML (interpolation, the key tables, NeMo's model-config translation).
#include <cstdint>
#include <string>

#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/train/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto c = train::TrainingConfig::from_text(text, "fuzz.yaml");
    if (c.unet_config && c.unet_config.IsMap()) (void)io::unet_config_from_nemo(c.unet_config, "fuzz");
    if (c.first_stage_config && c.first_stage_config.IsMap()) (void)io::vae_config_from_nemo(c.first_stage_config, 0.18215, "fuzz");
    if (c.noise_scheduler && c.noise_scheduler.IsMap()) (void)io::scheduler_config_from_nemo(c.noise_scheduler, "fuzz");
  } catch (const Error&) {
  }
  return 0;
}
