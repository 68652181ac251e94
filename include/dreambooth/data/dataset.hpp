// The DreamBooth dataset: the instance images of one or more subjects (concepts) and, with prior preservation, each
// subject's class images, paired per example as diffusers pairs them. With one concept (train_dreambooth.py): example
// i = instance i mod n_instance and class i mod n_class, the length the larger count. With several
// (train_multi_subject_dreambooth.py's --concepts_list): example i holds an instance image and a class image of every
// concept (i mod that concept's counts), and the length is the sum over the concepts of the larger count. Examples are
// shuffled per epoch and batched as [concept 0's instances..., concept 1's instances..., ..., concept 0's class images,
// ...]: a micro-batch of B examples holds K * B instance images (K concepts).
// With aspect-ratio buckets (kohya's): every image goes to its bucket (buckets.hpp); the instance images of all concepts
// form one pool and the class images another, as kohya pools its subsets; each epoch shuffles each bucket's images,
// cuts each bucket into batches of B (the last may be smaller) and shuffles the batches. Micro-batch i holds the instance
// pool's batch i and the class pool's batch i (counted in the class pool's own epochs), two parts whose picture sizes
// may differ.
// Batches are prepared ahead by `num_workers` threads; the order, the buckets' batches, the random crops and the random
// flips depend only on the seed, never on the number of workers.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "dreambooth/core/rng.hpp"
#include "dreambooth/data/buckets.hpp"
#include "dreambooth/data/image.hpp"

namespace dreambooth::data {

// The JPEG / PNG files of a folder (by extension, case-insensitive), sorted by name; a missing folder is an error, or
// none with `missing_ok`.
inline std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir, const std::string& what, bool missing_ok = false) {
  namespace fs = std::filesystem;
  if (missing_ok && !fs::exists(dir)) return {};
  if (!fs::is_directory(dir)) fail(what, " ", dir.string(), " is not a directory");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    auto ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (ext == ".jpg" || ext == ".jpeg" || ext == ".png") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

struct DatasetConfig {
  std::int64_t resolution = 512;
  bool center_crop = true;
  std::uint64_t seed = 0;
  std::int64_t max_image_pixels = kDefaultMaxImagePixels;  // larger images are refused from their header
  bool random_flip = false;  // torchvision's RandomHorizontalFlip(0.5) after the crop (diffusers' --random_flip, kohya's --flip_aug)
  BucketConfig buckets{};    // kohya's aspect-ratio buckets (buckets.hpp); off: every picture resolution x resolution
};

// One subject: its instance images and prompt and, with prior preservation, its class images and prompt.
struct ConceptImages {
  std::vector<std::filesystem::path> instance, classes;
  std::string instance_prompt, class_prompt;
  std::size_t examples() const { return std::max(instance.size(), classes.size()); }
};

class DreamBoothDataset {
 public:
  DreamBoothDataset(std::vector<ConceptImages> concepts, DatasetConfig config) : concepts_(std::move(concepts)), config_(config) {
    DB_CHECK(!concepts_.empty(), "dataset: no concepts");
    for (const auto& c : concepts_) {
      DB_CHECK(!c.instance.empty(), "dataset: a concept without instance images");
      DB_CHECK(c.classes.empty() == concepts_.front().classes.empty(), "dataset: class images for some concepts only");
    }
    DB_CHECK(config_.resolution > 0 && config_.resolution % 8 == 0, "dataset: resolution ", config_.resolution, " must be a positive multiple of 8");
    if (config_.buckets.enabled) {
      const BucketAssigner assigner(config_.buckets, config_.resolution);
      for (const auto& c : concepts_) {
        for (const auto& path : c.instance) pools_[0].add(path, c.instance_prompt, assigner, config_.max_image_pixels);
        for (const auto& path : c.classes) pools_[1].add(path, c.class_prompt, assigner, config_.max_image_pixels);
      }
      for (const auto& p : pools_) choices_.insert(p.choices.begin(), p.choices.end());
    }
  }
  // One concept (train_dreambooth.py's dataset); the prompts are left empty.
  DreamBoothDataset(std::vector<std::filesystem::path> instance_images, std::vector<std::filesystem::path> class_images, DatasetConfig config)
      : DreamBoothDataset(std::vector<ConceptImages>{{std::move(instance_images), std::move(class_images), {}, {}}}, config) {}

  std::size_t size() const {
    if (concepts_.size() == 1) return concepts_.front().examples();
    std::size_t n = 0;  // diffusers' multi-subject length: the concepts' lengths added
    for (const auto& c : concepts_) n += c.examples();
    return n;
  }
  bool with_class_images() const { return !concepts_.front().classes.empty(); }
  const std::vector<ConceptImages>& concepts() const { return concepts_; }
  // The first concept's images.
  const std::vector<std::filesystem::path>& instance_images() const { return concepts_.front().instance; }
  const std::vector<std::filesystem::path>& class_images() const { return concepts_.front().classes; }
  // Images per example: one instance image of every concept, and one class image of every concept with prior preservation.
  std::size_t images_per_example() const { return concepts_.size() * (with_class_images() ? 2 : 1); }
  bool bucketed() const { return config_.buckets.enabled; }
  // With buckets: each image's bucket and resized size (instance and class images alike).
  const std::map<std::filesystem::path, BucketChoice>& bucket_choices() const { return choices_; }
  // With buckets: the images in each bucket, instance pool (0) or class pool (1).
  std::map<Size2, std::size_t> bucket_counts(int pool) const {
    std::map<Size2, std::size_t> counts;
    for (const auto& [size, members] : pools_[pool].by_bucket) counts[size] = members.size();
    return counts;
  }

  static constexpr std::uint64_t kFlipStream = 1ull << 40;  // apart from the crop's stream 1 and the epochs' 2 + epoch

  // One preprocessed image [3, R, R] (with buckets [3, bucket h, bucket w]); `draw` numbers the random crop and flip.
  std::vector<float> load(const std::filesystem::path& path, std::uint64_t draw) const {
    const auto image = load_image(path, config_.max_image_pixels);
    const float crop_draw = rng::uniform(config_.seed, 1, draw);
    Size2 size{config_.resolution, config_.resolution};
    std::vector<float> pixels;
    if (bucketed()) {
      const auto& choice = choices_.at(path);
      size = choice.bucket;
      pixels = preprocess_to_bucket(image, choice, config_.center_crop, crop_draw);
    } else {
      pixels = preprocess(image, config_.resolution, config_.center_crop, crop_draw);
    }
    if (flipped(draw)) flip_horizontally(pixels, size.height, size.width);
    return pixels;
  }
  // Whether image draw number `draw` is mirrored (random_flip).
  bool flipped(std::uint64_t draw) const { return config_.random_flip && rng::uniform(config_.seed, kFlipStream, draw) < 0.5f; }

  // pixels [3, H, W] (or [3, R, R]) mirrored left to right.
  static void flip_horizontally(std::vector<float>& pixels, std::int64_t height, std::int64_t width) {
    for (std::int64_t row = 0; row < 3 * height; ++row) std::reverse(pixels.begin() + row * width, pixels.begin() + (row + 1) * width);
  }
  static void flip_horizontally(std::vector<float>& pixels, std::int64_t R) { flip_horizontally(pixels, R, R); }

  // The example order of an epoch: a permutation from the seed (Fisher-Yates on counter-based draws).
  std::vector<std::size_t> epoch_order(std::uint64_t epoch) const {
    std::vector<std::size_t> order(size());
    std::iota(order.begin(), order.end(), 0);
    for (std::size_t i = order.size(); i > 1; --i) {
      const auto j = static_cast<std::size_t>(rng::uniform(config_.seed, 2 + epoch, i) * static_cast<float>(i)) % i;
      std::swap(order[i - 1], order[j]);
    }
    return order;
  }

  // Batch `index` of micro_batch examples: pixels [instances..., classes...] each [3, R, R], concept by concept (with
  // buckets: the instance part [instances, 3, H, W], then the class part [n - instances, 3, H', W']).
  struct Batch {
    std::vector<float> pixels;  // [images_per_example() * micro_batch, 3, R, R] without buckets
    std::vector<std::filesystem::path> sources;
    std::vector<std::string> prompts;  // each image's concept prompt (instance or class)
    std::vector<bool> flipped;         // each image mirrored left to right (random_flip)
    std::size_t instances = 0;         // the first `instances` images are instance images, the rest class images
    Size2 instance_size, class_size;   // the two parts' picture sizes (width, height)
  };
  Batch batch(std::uint64_t index, std::size_t micro_batch) const {
    if (bucketed()) return bucket_batch(index, micro_batch);
    const std::size_t per_epoch = std::max<std::size_t>(1, size() / micro_batch);
    const auto epoch = index / per_epoch;
    const auto order = epoch_order(epoch);
    Batch b;
    std::vector<std::size_t> examples;
    for (std::size_t k = 0; k < micro_batch; ++k) examples.push_back(order[((index % per_epoch) * micro_batch + k) % order.size()]);
    // the crop and flip draws number the images of all batches: 2 * K * micro_batch per batch (K = 1: as before concepts)
    const auto first_draw = index * 2 * concepts_.size() * micro_batch;
    const auto add = [&](const std::filesystem::path& path, const std::string& prompt) {
      const auto px = load(path, first_draw + b.sources.size());
      b.flipped.push_back(flipped(first_draw + b.sources.size()));
      b.pixels.insert(b.pixels.end(), px.begin(), px.end());
      b.sources.push_back(path);
      b.prompts.push_back(prompt);
    };
    for (const auto& c : concepts_)
      for (std::size_t k = 0; k < micro_batch; ++k) add(c.instance[examples[k] % c.instance.size()], c.instance_prompt);
    b.instances = b.sources.size();
    if (with_class_images())
      for (const auto& c : concepts_)
        for (std::size_t k = 0; k < micro_batch; ++k) add(c.classes[examples[k] % c.classes.size()], c.class_prompt);
    b.instance_size = b.class_size = {config_.resolution, config_.resolution};
    return b;
  }

  // With buckets: the batches of a pool's epoch, each a list of the pool's image numbers from one bucket.
  std::vector<std::vector<std::size_t>> bucket_epoch(int pool, std::uint64_t epoch, std::size_t micro_batch) const {
    const auto& p = pools_[pool];
    const std::uint64_t stream = kBucketStream + (static_cast<std::uint64_t>(pool) << 36) + 2 * epoch;
    std::vector<std::vector<std::size_t>> batches;
    std::uint64_t bucket_number = 0;
    for (const auto& [size, members] : p.by_bucket) {  // each bucket's images shuffled, then cut into batches
      auto order = members;
      for (std::size_t i = order.size(); i > 1; --i) {
        const auto j = static_cast<std::size_t>(rng::uniform(config_.seed, stream, (bucket_number << 32) + i) * static_cast<float>(i)) % i;
        std::swap(order[i - 1], order[j]);
      }
      for (std::size_t first = 0; first < order.size(); first += micro_batch)
        batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(first),
                             order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), first + micro_batch)));
      ++bucket_number;
    }
    for (std::size_t i = batches.size(); i > 1; --i) {  // then the batches shuffled
      const auto j = static_cast<std::size_t>(rng::uniform(config_.seed, stream + 1, i) * static_cast<float>(i)) % i;
      std::swap(batches[i - 1], batches[j]);
    }
    return batches;
  }

  static constexpr std::uint64_t kBucketStream = 1ull << 41;  // the buckets' shuffles: 2 streams per epoch and pool

 private:
  // With buckets: one pool of images (the instance images of every concept, or the class images) and their buckets.
  struct Pool {
    std::vector<std::filesystem::path> images;
    std::vector<std::string> prompts;
    std::map<Size2, std::vector<std::size_t>> by_bucket;  // sorted by bucket size, as kohya sorts its buckets
    void add(const std::filesystem::path& path, const std::string& prompt, const BucketAssigner& assigner, std::int64_t max_pixels) {
      const auto image = load_image(path, max_pixels);
      const auto choice = assigner.select(image.width, image.height);
      by_bucket[choice.bucket].push_back(images.size());
      images.push_back(path);
      prompts.push_back(prompt);
      choices.emplace(path, choice);
    }
    std::map<std::filesystem::path, BucketChoice> choices;
    std::size_t batches(std::size_t micro_batch) const {
      std::size_t n = 0;
      for (const auto& [size, members] : by_bucket) n += (members.size() + micro_batch - 1) / micro_batch;
      return n;
    }
  };

  Batch bucket_batch(std::uint64_t index, std::size_t micro_batch) const {
    Batch b;
    const auto first_draw = index * 2 * micro_batch;  // at most 2 * micro_batch images per batch
    const auto add_part = [&](int pool, Size2& size) {
      const auto& p = pools_[pool];
      if (p.images.empty()) return;
      const auto per_epoch = p.batches(micro_batch);
      const auto batches = bucket_epoch(pool, index / per_epoch, micro_batch);
      for (const auto i : batches[index % per_epoch]) {
        const auto px = load(p.images[i], first_draw + b.sources.size());
        b.flipped.push_back(flipped(first_draw + b.sources.size()));
        b.pixels.insert(b.pixels.end(), px.begin(), px.end());
        b.sources.push_back(p.images[i]);
        b.prompts.push_back(p.prompts[i]);
        size = p.choices.at(p.images[i]).bucket;
      }
    };
    add_part(0, b.instance_size);
    b.instances = b.sources.size();
    add_part(1, b.class_size);
    if (b.sources.size() == b.instances) b.class_size = b.instance_size;
    return b;
  }

  std::vector<ConceptImages> concepts_;
  DatasetConfig config_;
  Pool pools_[2];                                          // with buckets: the instance pool, the class pool
  std::map<std::filesystem::path, BucketChoice> choices_;  // with buckets: every image's bucket
};

// Which micro-batches of the run one process of a data-parallel run trains on: each optimizer step has `global`
// micro-batches (numbered step * global + k), of which the process takes the `local` ones from k = offset on (process r
// of P with `local` micro-batches per step: offset r * local, global P * local). The default is the whole run.
struct MicroBatchShare {
  std::uint64_t local = 1, global = 1, offset = 0;
  // the run's number of the process's n-th micro-batch
  std::uint64_t index(std::uint64_t n) const { return n / local * global + offset + n % local; }
};

// Prepares the share's batches n = first, first + 1, ... (batch share.index(n) of the dataset) ahead on `workers`
// threads (0: on the caller's thread); next() returns them in order. Errors in a worker (a corrupt image) surface from
// next() with the file's name.
class BatchLoader {
 public:
  BatchLoader(const DreamBoothDataset& dataset, std::size_t micro_batch, std::uint64_t first, std::size_t workers, std::size_t ahead = 4,
              MicroBatchShare share = {})
      : dataset_(dataset), micro_batch_(micro_batch), share_(share), next_(first), produce_(first), ahead_(std::max<std::size_t>(ahead, workers)) {
    for (std::size_t w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
  }
  ~BatchLoader() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    for (auto& t : threads_) t.join();
  }
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  DreamBoothDataset::Batch next() {
    if (threads_.empty()) return dataset_.batch(share_.index(next_++), micro_batch_);
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return ready_.count(next_) || errors_.count(next_); });
    if (auto e = errors_.find(next_); e != errors_.end()) fail(e->second);
    auto batch = std::move(ready_.at(next_));
    ready_.erase(next_++);
    changed_.notify_all();
    return batch;
  }

 private:
  void work() {
    for (;;) {
      std::uint64_t index;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return stop_ || produce_ < next_ + ahead_; });
        if (stop_) return;
        index = produce_++;
      }
      try {
        auto batch = dataset_.batch(share_.index(index), micro_batch_);
        std::lock_guard lock(mutex_);
        ready_.emplace(index, std::move(batch));
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex_);
        errors_.emplace(index, e.what());
      }
      changed_.notify_all();
    }
  }

  const DreamBoothDataset& dataset_;
  std::size_t micro_batch_;
  MicroBatchShare share_;
  std::uint64_t next_, produce_;
  std::size_t ahead_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::uint64_t, DreamBoothDataset::Batch> ready_;
  std::map<std::uint64_t, std::string> errors_;
  bool stop_ = false;
};

}  // namespace dreambooth::data
