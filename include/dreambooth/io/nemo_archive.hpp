// NeMo's .nemo archives, as SaveRestoreConnector writes them: a tar (uncompressed since NeMo 1.7, gzip before) of
// ./model_config.yaml (the model: section, interpolations resolved) and ./model_weights.ckpt (torch.save of the model's
// state dict), plus artifacts (files the config names as "nemo:<member>"). An extracted archive (a folder holding the
// same files, NeMo's pack_nemo_file=False) reads the same way. Model-parallel archives (mp_rank_NN/, tp_rank_NN_pp_rank_NNN/)
// and distributed checkpoints (a model_weights/ folder) are refused with what they are: Stable Diffusion and
// DreamBooth models are saved with neither.
//
// write_nemo_archive() writes one: the weights as a torch zip checkpoint, the config, and extra members, with NeMo's
// "./" member names, atomically.
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/mapped_file.hpp"
#include "dreambooth/io/tar.hpp"
#include "dreambooth/io/torch_checkpoint.hpp"
#include "dreambooth/io/torch_checkpoint_writer.hpp"

namespace dreambooth::io {

class NemoArchive {
 public:
  static constexpr const char* kConfig = "model_config.yaml";
  static constexpr const char* kWeights = "model_weights.ckpt";

  explicit NemoArchive(const std::filesystem::path& path) : path_(path.string()) {
    namespace fs = std::filesystem;
    if (!fs::exists(path)) fail(".nemo archive ", path_, " does not exist");
    if (fs::is_directory(path)) {
      folder_ = path;
      for (const auto& e : fs::recursive_directory_iterator(path))
        if (e.is_regular_file()) members_[fs::relative(e.path(), path).generic_string()] = {0, static_cast<std::uint64_t>(e.file_size())};
    } else {
      file_ = open_tar_file(path, ".nemo archive");
      for (const auto& m : read_tar(file_->bytes(), ".nemo archive " + path_)) members_[m.name] = {m.offset, m.size};
    }
    if (!members_.count(kConfig))
      fail(".nemo archive ", path_, ": no model_config.yaml", members_.empty() ? " (the archive is empty)" : " (not a NeMo model archive)");
    try {
      config_ = YAML::Load(text(kConfig));
    } catch (const YAML::Exception& e) {
      fail(".nemo archive ", path_, ": model_config.yaml is not valid YAML: ", e.what());
    }
    if (!config_.IsMap()) fail(".nemo archive ", path_, ": model_config.yaml is not a mapping");
    if (config_["model"] && config_["model"].IsMap()) config_ = config_["model"];  // NeMo accepts a top-level model: too
    if (!members_.count(kWeights)) {
      for (const auto& [name, m] : members_) {
        if (name.rfind("mp_rank_", 0) == 0 || name.rfind("tp_rank_", 0) == 0)
          fail(".nemo archive ", path_, ": holds model-parallel shards (", name.substr(0, name.find('/')),
               "/...); merge them into one model_weights.ckpt with NeMo first");
        if (name.rfind("model_weights/", 0) == 0)
          fail(".nemo archive ", path_, ": holds a distributed checkpoint (model_weights/); save the model with NeMo's dist_ckpt off");
      }
      fail(".nemo archive ", path_, ": no model_weights.ckpt");
    }
  }

  const std::string& path() const { return path_; }
  const YAML::Node& config() const { return config_; }
  // The model class NeMo saved ("...dreambooth.MegatronDreamBooth", "...ddpm.MegatronLatentDiffusion"); "" when unset.
  std::string target() const { return config_["target"] && config_["target"].IsScalar() ? config_["target"].as<std::string>() : ""; }

  bool has(const std::string& member) const { return members_.count(strip(member)) != 0; }
  std::vector<std::string> members() const {
    std::vector<std::string> names;
    for (const auto& [name, m] : members_) names.push_back(name);
    return names;
  }

  std::string text(const std::string& member) const {
    const auto name = strip(member);
    const auto it = members_.find(name);
    if (it == members_.end()) fail(".nemo archive ", path_, ": no member ", name);
    if (folder_) {
      std::ifstream in(*folder_ / name, std::ios::binary);
      std::ostringstream s;
      s << in.rdbuf();
      return s.str();
    }
    const auto bytes = file_->bytes().subspan(static_cast<std::size_t>(it->second.offset), static_cast<std::size_t>(it->second.size));
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  // A member named by a config value: "nemo:<member>" (NeMo's artifact reference) or a plain member name.
  std::optional<std::string> artifact(const std::string& reference) const {
    const auto name = reference.rfind("nemo:", 0) == 0 ? reference.substr(5) : reference;
    if (has(name)) return strip(name);
    return std::nullopt;
  }

  // The state dict in model_weights.ckpt, read in place (no extraction).
  std::unique_ptr<TensorSource> weights() const {
    if (folder_) return std::make_unique<TorchCheckpoint>(*folder_ / kWeights);
    const auto& m = members_.at(kWeights);
    return std::make_unique<TorchCheckpoint>(file_, static_cast<std::size_t>(m.offset), static_cast<std::size_t>(m.size), path_ + ":" + kWeights);
  }

  // Copies a member to a file (small artifacts: a tokenizer's vocabulary).
  void extract(const std::string& member, const std::filesystem::path& to) const { write_file_atomically(to, text(member), ".nemo extract"); }

 private:
  struct Member {
    std::uint64_t offset = 0, size = 0;
  };
  static std::string strip(std::string name) {
    while (name.rfind("./", 0) == 0) name.erase(0, 2);
    return name;
  }

  std::string path_;
  std::optional<std::filesystem::path> folder_;
  std::shared_ptr<const MappedFile> file_;
  std::map<std::string, Member> members_;
  YAML::Node config_;
};

// Writes a .nemo archive: ./model_config.yaml, ./model_weights.ckpt (the writer's tensors as a torch zip checkpoint)
// and `extra` members (name -> contents), as one uncompressed tar renamed into place.
inline void write_nemo_archive(const std::filesystem::path& path, const YAML::Node& config, const TorchCheckpointWriter& weights,
                               const std::map<std::string, std::string>& extra = {}) {
  const auto tmp_weights = std::filesystem::path(path.string() + ".weights.tmp-" + std::to_string(::getpid()));
  weights.write(tmp_weights);
  struct Cleanup {
    std::filesystem::path p;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove(p, ec);
    }
  } cleanup{tmp_weights};
  const MappedFile weights_file(tmp_weights, "checkpoint");
  YAML::Emitter yaml;
  yaml << config;
  AtomicFileWriter out(path, ".nemo writer");
  TarWriter tar(out);
  tar.add("./model_config.yaml", std::string(yaml.c_str()) + "\n");
  tar.add("./model_weights.ckpt", weights_file.bytes());
  for (const auto& [name, contents] : extra) tar.add("./" + name, contents);
  tar.finish();
  out.commit();
}

}  // namespace dreambooth::io
