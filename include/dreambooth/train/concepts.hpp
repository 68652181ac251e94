// Several subjects in one run: model.data.concepts (a list in the config) or model.data.concepts_list (a JSON or YAML
// file holding that list, diffusers' --concepts_list file as train_multi_subject_dreambooth.py reads it). Each concept
// names its instance folder and prompt and, with prior preservation, its class folder, prompt and image count; a run
// without a list has the one concept that model.data's own keys describe. diffusers' names are accepted beside ours:
//   instance_dir (instance_data_dir), instance_prompt, regularization_dir (class_data_dir), regularization_prompt
//   (class_prompt), num_reg_images (num_class_images; default model.data.num_reg_images), cached_instance_dir,
//   cached_reg_dir, validation_prompt (added to model.validation.prompts).
// diffusers' per-concept validation_negative_prompt, validation_number_images, validation_inference_steps and
// validation_guidance_scale have no effect here (model.validation.* applies to every validation prompt).
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "dreambooth/core/error.hpp"

namespace dreambooth::train {

struct ConceptConfig {
  std::string instance_dir, instance_prompt;
  std::string regularization_dir, regularization_prompt;
  long num_reg_images = 0;  // 0: model.data.num_reg_images
  std::string cached_instance_dir, cached_reg_dir;
  std::string validation_prompt;     // diffusers' per-concept validation prompt ("": none)
  std::string where = "model.data";  // how messages name its keys: model.data.X, model.data.concepts[i].X, FILE[i].X

  std::string key(const std::string& name) const { return where + "." + name; }
};

// The concepts of a YAML / JSON list; `where` names the list in messages ("model.data.concepts" or the file). Keys with
// no effect here are added to `ignored` with the reason.
inline std::vector<ConceptConfig> parse_concepts(const YAML::Node& list, const std::string& where,
                                                 std::vector<std::pair<std::string, std::string>>& ignored) {
  if (!list.IsSequence() || list.size() == 0)
    fail(where, ": needs a non-empty list of concepts (maps with instance_dir, instance_prompt, regularization_dir, regularization_prompt)");
  // our name, diffusers' name, and the member each sets
  static const std::vector<std::pair<std::vector<std::string>, std::string ConceptConfig::*>> text_keys = {
      {{"instance_dir", "instance_data_dir"}, &ConceptConfig::instance_dir},
      {{"instance_prompt"}, &ConceptConfig::instance_prompt},
      {{"regularization_dir", "class_data_dir"}, &ConceptConfig::regularization_dir},
      {{"regularization_prompt", "class_prompt"}, &ConceptConfig::regularization_prompt},
      {{"cached_instance_dir"}, &ConceptConfig::cached_instance_dir},
      {{"cached_reg_dir"}, &ConceptConfig::cached_reg_dir},
      {{"validation_prompt"}, &ConceptConfig::validation_prompt},
  };
  static const std::vector<std::string> no_effect = {"validation_negative_prompt", "validation_number_images", "validation_inference_steps",
                                                     "validation_guidance_scale"};
  std::vector<ConceptConfig> concepts;
  for (std::size_t i = 0; i < list.size(); ++i) {
    ConceptConfig subject;
    subject.where = where + "[" + std::to_string(i) + "]";
    const auto& item = list[i];
    if (!item.IsMap()) fail(subject.where, ": a concept is a map (instance_dir, instance_prompt, ...), not ", YAML::Dump(item));
    std::vector<std::pair<std::string ConceptConfig::*, std::string>> seen;  // member, the name that set it
    for (const auto& entry : item) {
      const auto name = entry.first.as<std::string>();
      const auto& value = entry.second;
      try {
        if (name == "num_reg_images" || name == "num_class_images") {
          const auto n = value.as<double>();
          if (n != static_cast<double>(static_cast<long>(n)) || n < 1) fail(subject.key(name), " = ", n, " must be a positive integer");
          subject.num_reg_images = static_cast<long>(n);
          continue;
        }
        if (std::find(no_effect.begin(), no_effect.end(), name) != no_effect.end()) {
          ignored.emplace_back(subject.key(name), "model.validation.* applies to every validation prompt");
          continue;
        }
        const auto known = std::find_if(text_keys.begin(), text_keys.end(),
                                        [&](const auto& k) { return std::find(k.first.begin(), k.first.end(), name) != k.first.end(); });
        if (known == text_keys.end()) {
          std::string names;
          for (const auto& k : text_keys) names += k.first.front() + ", ";
          fail(subject.key(name), ": unknown concept key (", names, "num_reg_images; or diffusers' instance_data_dir, class_data_dir, ",
               "class_prompt, num_class_images)");
        }
        if (const auto it = std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == known->second; }); it != seen.end())
          fail(subject.key(name), ": the concept sets it twice (", it->second, " and ", name, ")");
        seen.emplace_back(known->second, name);
        subject.*(known->second) = value.IsNull() ? std::string() : value.as<std::string>();
      } catch (const YAML::Exception&) {
        fail(subject.key(name), " needs ", name.rfind("num_", 0) == 0 ? "an integer" : "a string", ", not ", YAML::Dump(value));
      }
    }
    concepts.push_back(std::move(subject));
  }
  return concepts;
}

}  // namespace dreambooth::train
