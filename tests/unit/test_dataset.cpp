// The DreamBooth dataset (pairing, batching, workers), kohya's captions (caption files, dropout, tag shuffling) and the
// latent cache (rebuild rules, equality with online encoding, through to the training loss).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/data/captions.hpp"
#include "dreambooth/data/latent_cache.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/io/vae_loading.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
const fs::path kData = fs::path(DREAMBOOTH_TEST_DATA_DIR);

fs::path folder(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("dreambooth-dataset-" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_image(const fs::path& path, int seed, std::int64_t w = 40, std::int64_t h = 32) {
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(w * h * 3));
  for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>((i * 7 + static_cast<std::size_t>(seed) * 31) % 256);
  io::write_png(path, rgb.data(), w, h);
}
}  // namespace

TEST_CASE("image folders: listing, pairing and batching as diffusers pairs them", "[dataset]") {
  const auto inst = folder("instance"), cls = folder("class");
  for (int i = 0; i < 3; ++i) write_image(inst / ("i" + std::to_string(i) + ".png"), i);
  for (int i = 0; i < 5; ++i) write_image(cls / ("c" + std::to_string(i) + ".PNG"), 10 + i);
  std::ofstream(inst / "notes.txt") << "not an image";
  const auto instances = data::list_images(inst, "instance_dir");
  REQUIRE(instances.size() == 3);
  REQUIRE(instances[0].filename() == "i0.png");
  REQUIRE_THROWS_WITH(data::list_images(inst / "missing", "instance_dir"), Catch::Contains("instance_dir") && Catch::Contains("missing"));

  data::DreamBoothDataset dataset(instances, data::list_images(cls, "regularization_dir"), {16, true, 3});
  REQUIRE(dataset.size() == 5);  // the larger count
  const auto order = dataset.epoch_order(0);
  REQUIRE(std::is_permutation(order.begin(), order.end(), std::vector<std::size_t>{0, 1, 2, 3, 4}.begin()));
  const auto batch = dataset.batch(0, 2);
  REQUIRE(batch.pixels.size() == 4 * 3 * 16 * 16);
  REQUIRE(batch.sources.size() == 4);
  REQUIRE(batch.sources[0] == instances[order[0] % 3]);  // instances first
  REQUIRE(batch.sources[2].parent_path() == cls);        // then the class images
  REQUIRE(batch.sources[2] == dataset.class_images()[order[0] % 5]);

  // The same batches whatever the number of workers.
  std::vector<std::vector<float>> serial;
  {
    data::BatchLoader loader(dataset, 2, 0, 0);
    for (int k = 0; k < 6; ++k) serial.push_back(loader.next().pixels);
  }
  for (std::size_t workers : {1u, 3u}) {
    data::BatchLoader loader(dataset, 2, 0, workers);
    for (int k = 0; k < 6; ++k) REQUIRE(loader.next().pixels == serial[static_cast<std::size_t>(k)]);
  }
  // A corrupt image surfaces from the loader with its name.
  std::ofstream(inst / "i1.png", std::ios::binary) << "\x89PNG broken";
  data::DreamBoothDataset broken(data::list_images(inst, "instance_dir"), {}, {16, true, 3});
  data::BatchLoader loader(broken, 3, 0, 2);
  REQUIRE_THROWS_WITH(loader.next(), Catch::Contains("i1.png"));
}

TEST_CASE("several concepts: every example holds an image of each concept, batched as diffusers' multi-subject script", "[dataset][concepts]") {
  const auto dir = folder("concepts");
  std::vector<data::ConceptImages> concepts(2);
  const std::size_t counts[2][2] = {{2, 3}, {3, 1}};  // concept 0: 2 instance, 3 class images; concept 1: 3 and 1
  int seed = 0;
  for (std::size_t c = 0; c < 2; ++c) {
    for (std::size_t kind = 0; kind < 2; ++kind)
      for (std::size_t i = 0; i < counts[c][kind]; ++i) {
        const auto path = dir / ("c" + std::to_string(c) + (kind ? "-class-" : "-instance-") + std::to_string(i) + ".png");
        write_image(path, ++seed);
        (kind ? concepts[c].classes : concepts[c].instance).push_back(path);
      }
    concepts[c].instance_prompt = "instance prompt " + std::to_string(c);
    concepts[c].class_prompt = "class prompt " + std::to_string(c);
  }
  const data::DreamBoothDataset dataset(concepts, {16, true, 3});
  REQUIRE(dataset.size() == 3 + 3);  // the concepts' lengths (the larger of their two counts) added
  REQUIRE(dataset.images_per_example() == 4);
  for (std::uint64_t index = 0; index < 4; ++index) {
    const std::size_t B = 2, per_epoch = dataset.size() / B;
    const auto order = dataset.epoch_order(index / per_epoch);
    const auto batch = dataset.batch(index, B);
    REQUIRE(batch.sources.size() == 8);
    REQUIRE(batch.prompts.size() == 8);
    REQUIRE(batch.pixels.size() == 8 * 3 * 16 * 16);
    // [concept 0's instances, concept 1's instances, concept 0's class images, concept 1's class images], B each
    for (std::size_t part = 0; part < 4; ++part) {
      const auto& k = concepts[part % 2];
      const auto& images = part < 2 ? k.instance : k.classes;
      for (std::size_t j = 0; j < B; ++j) {
        const auto example = order[((index % per_epoch) * B + j) % order.size()];
        CHECK(batch.sources[part * B + j] == images[example % images.size()]);
        CHECK(batch.prompts[part * B + j] == (part < 2 ? k.instance_prompt : k.class_prompt));
      }
    }
  }
  // one concept numbers its crops and flips as before concepts existed: the same pixels as the two-folder constructor
  data::DatasetConfig flipping{16, false, 5};
  flipping.random_flip = true;
  const data::DreamBoothDataset one({concepts[0]}, flipping), folders(concepts[0].instance, concepts[0].classes, flipping);
  for (std::uint64_t index = 0; index < 3; ++index) REQUIRE(one.batch(index, 2).pixels == folders.batch(index, 2).pixels);
  REQUIRE_THROWS_WITH(data::DreamBoothDataset({concepts[0], {concepts[1].instance, {}, "p", ""}}, {16, true, 3}), Catch::Contains("class images"));
}

TEST_CASE("model.data.max_image_pixels reaches the dataset and the latent cache", "[dataset][latent_cache]") {
  const auto inst = folder("limit");
  write_image(inst / "big.png", 1, 40, 32);  // 1280 pixels
  const auto images = data::list_images(inst, "instance_dir");
  const data::DreamBoothDataset within(images, {}, {16, true, 3, 1280}), over(images, {}, {16, true, 3, 1279});
  REQUIRE(within.load(images[0], 0).size() == 3 * 16 * 16);
  REQUIRE_THROWS_WITH(over.load(images[0], 0), Catch::Contains("big.png") && Catch::Contains("limit of 1279 pixels"));

  CpuBackend b;
  auto vae = io::load_vae(b, kData / "vae" / "tiny" / "vae");
  data::LatentCache<CpuBackend> cache(folder("limit-cache"), 32);
  cache.set_max_image_pixels(1279);
  REQUIRE_THROWS_WITH(cache.build(b, *vae, images), Catch::Contains("big.png") && Catch::Contains("max_image_pixels"));
  cache.set_max_image_pixels(1280);
  REQUIRE(cache.build(b, *vae, images).encoded == 1);
}

TEST_CASE("latent cache: built, reused, rebuilt on a count mismatch or a changed image", "[dataset][latent_cache]") {
  CpuBackend b;
  auto vae = io::load_vae(b, kData / "vae" / "tiny" / "vae");
  const auto images = folder("cache-images"), cache_dir = folder("cache");
  for (int i = 0; i < 3; ++i) write_image(images / ("x" + std::to_string(i) + ".png"), 20 + i);
  data::LatentCache<CpuBackend> cache(cache_dir, 32);
  auto list = data::list_images(images, "instance_dir");
  auto r = cache.build(b, *vae, list);
  REQUIRE(r.encoded == 3);
  REQUIRE(r.rebuilt_all);
  r = cache.build(b, *vae, list);
  REQUIRE(r.encoded == 0);
  REQUIRE(r.reused == 3);
  write_image(images / "x1.png", 99);  // same count, changed content: only that entry
  r = cache.build(b, *vae, list);
  REQUIRE(r.encoded == 1);
  REQUIRE(r.reused == 2);
  REQUIRE_FALSE(r.rebuilt_all);
  write_image(images / "x3.png", 23);  // a new image: the count no longer matches, everything is rebuilt
  list = data::list_images(images, "instance_dir");
  r = cache.build(b, *vae, list);
  REQUIRE(r.rebuilt_all);
  REQUIRE(r.encoded == 4);
  REQUIRE(std::distance(fs::directory_iterator(cache_dir), fs::directory_iterator{}) == 4);
}

TEST_CASE("training on cached latents gives the same losses as online encoding with the same noise", "[dataset][latent_cache]") {
  CpuBackend b;
  auto vae = io::load_vae(b, kData / "vae" / "tiny" / "vae");
  const auto images = folder("same-images"), cache_dir = folder("same-cache");
  write_image(images / "instance.png", 1, 48, 32);
  write_image(images / "class.png", 2, 32, 40);
  const auto list = data::list_images(images, "instance_dir");
  data::LatentCache<CpuBackend> cache(cache_dir, 32);
  cache.build(b, *vae, list);

  const auto latents_for = [&](bool cached, std::uint64_t step) {
    std::vector<float> all;
    for (std::size_t i = 0; i < list.size(); ++i) {
      Tensor<CpuBackend> z;
      if (cached) {
        z = cache.sample(b, *vae, list[i], 7, step * 10 + i);
      } else {
        const auto pixels = data::preprocess(data::load_image(list[i]), 32, true);
        z = vae->sample(b, vae->encode(b, Tensor<CpuBackend>::from_host(b, {1, 3, 32, 32}, pixels)), 7, step * 10 + i);
        b.scale(z.data<float>(), z.data<float>(), static_cast<float>(vae->config.scaling_factor), static_cast<std::size_t>(z.numel()));
      }
      const auto v = z.to_host();
      all.insert(all.end(), v.begin(), v.end());
    }
    return Tensor<CpuBackend>::from_host(b, {2, 4, 16, 16}, all);
  };
  std::vector<double> losses[2];
  for (int mode = 0; mode < 2; ++mode) {
    auto unet = io::load_unet(b, kData / "training" / "frozen_text_encoder" / "unet");
    auto text = io::load_clip_text(b, kData / "training" / "frozen_text_encoder" / "text_encoder");
    train::StepConfig config;
    config.optimizer.lr = 1e-3;
    train::DreamBoothStep<CpuBackend> step(b, *unet, *text, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
    for (std::uint64_t k = 0; k < 2; ++k) {
      train::DreamBoothStep<CpuBackend>::Batch batch;
      batch.latents = latents_for(mode == 1, k);
      batch.noise = Tensor<CpuBackend>::empty(b, {2, 4, 16, 16});
      b.fill_normal(batch.noise.data<float>(), 2 * 4 * 16 * 16, 11, k, 0.0f, 1.0f);
      batch.timesteps = {static_cast<int>(100 + 300 * k), static_cast<int>(700 - 200 * k)};
      batch.ids.assign(2 * 77, 5);
      losses[mode].push_back(step.step(batch).loss.total);
    }
  }
  REQUIRE(losses[0] == losses[1]);
}

TEST_CASE("aspect-ratio buckets: each batch from one bucket, every image once per epoch, cached at its bucket's size", "[dataset][buckets]") {
  CpuBackend b;
  const auto dir = folder("buckets");
  // instance pictures of four shapes; class pictures square
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{48, 32}, {32, 48}, {32, 32}, {32, 32}, {64, 16}, {40, 30}, {30, 40}};
  data::ConceptImages subject;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    subject.instance.push_back(dir / ("i" + std::to_string(i) + ".png"));
    write_image(subject.instance.back(), static_cast<int>(i), shapes[i].first, shapes[i].second);
  }
  for (int i = 0; i < 3; ++i) {
    subject.classes.push_back(dir / ("c" + std::to_string(i) + ".png"));
    write_image(subject.classes.back(), 20 + i, 32, 32);
  }
  subject.instance_prompt = "a photo of sks thing", subject.class_prompt = "a photo of a thing";
  data::DatasetConfig config{32, true, 9};
  config.buckets = {true, 16, 64, 16, false};
  const data::DreamBoothDataset dataset({subject}, config);
  const data::BucketAssigner assigner(config.buckets, 32);
  for (std::size_t i = 0; i < shapes.size(); ++i)  // kohya's assignment (test_buckets checks it against sd-scripts)
    CHECK(dataset.bucket_choices().at(subject.instance[i]).bucket == assigner.select(shapes[i].first, shapes[i].second).bucket);
  const auto counts = dataset.bucket_counts(0);
  REQUIRE(counts.size() >= 3);  // the shapes spread over several buckets
  std::size_t per_epoch = 0;
  for (const auto& [size, n] : counts) per_epoch += (n + 1) / 2;  // batches of 2, the last of a bucket may hold 1
  for (std::uint64_t epoch = 0; epoch < 2; ++epoch) {
    std::multiset<fs::path> seen;
    for (std::uint64_t index = epoch * per_epoch; index < (epoch + 1) * per_epoch; ++index) {
      const auto batch = dataset.batch(index, 2);
      REQUIRE(batch.instances >= 1);
      REQUIRE(batch.instances <= 2);
      std::size_t pixels = 0;
      for (std::size_t k = 0; k < batch.sources.size(); ++k) {
        const bool instance = k < batch.instances;
        const auto size = instance ? batch.instance_size : batch.class_size;
        CHECK(dataset.bucket_choices().at(batch.sources[k]).bucket == size);  // one bucket per part
        CHECK(batch.prompts[k] == (instance ? subject.instance_prompt : subject.class_prompt));
        if (instance) seen.insert(batch.sources[k]);
        pixels += static_cast<std::size_t>(3 * size.width * size.height);
      }
      CHECK(batch.pixels.size() == pixels);
      CHECK(batch.class_size == data::Size2{32, 32});
    }
    CHECK(seen == std::multiset<fs::path>(subject.instance.begin(), subject.instance.end()));  // each instance image once per epoch
  }
  CHECK(dataset.bucket_epoch(0, 0, 2) != dataset.bucket_epoch(0, 1, 2));  // reshuffled per epoch
  // the same batches whatever the number of workers
  for (std::size_t workers : {0u, 2u}) {
    data::BatchLoader loader(dataset, 2, 3, workers);
    for (std::uint64_t index = 3; index < 9; ++index) REQUIRE(loader.next().pixels == dataset.batch(index, 2).pixels);
  }
  // the latent cache holds each image at its bucket's size and samples what online encoding of the centre crop gives
  auto vae = io::load_vae(b, kData / "vae" / "tiny" / "vae");
  data::LatentCache<CpuBackend> cache(folder("bucket-cache"), 32);
  cache.set_buckets(&dataset.bucket_choices());
  cache.build(b, *vae, subject.instance);
  const auto wide = subject.instance[0];
  const auto choice = dataset.bucket_choices().at(wide);
  const auto cached = cache.sample(b, *vae, wide, 7, 3);
  const auto down = vae->config.downscale();
  REQUIRE(cached.shape() == Shape{1, vae->config.latent_channels, choice.bucket.height / down, choice.bucket.width / down});
  const auto pixels = data::preprocess_to_bucket(data::load_image(wide), choice, true, 0.5);
  auto online = vae->sample(b, vae->encode(b, Tensor<CpuBackend>::from_host(b, {1, 3, choice.bucket.height, choice.bucket.width}, pixels)), 7, 3);
  b.scale(online.data<float>(), online.data<float>(), static_cast<float>(vae->config.scaling_factor), static_cast<std::size_t>(online.numel()));
  REQUIRE(cached.to_host() == online.to_host());
}

TEST_CASE("the instance and prior halves run apart (buckets) give the joint batch's loss, gradients and update", "[dataset][buckets]") {
  CpuBackend b;
  std::vector<float> weights[2];
  train::PriorPreservationLoss<CpuBackend>::Value values[2];
  for (int mode = 0; mode < 2; ++mode) {
    auto unet = io::load_unet(b, kData / "training" / "frozen_text_encoder" / "unet");
    auto text = io::load_clip_text(b, kData / "training" / "frozen_text_encoder" / "text_encoder");
    train::StepConfig config;
    config.optimizer.lr = 1e-3;
    config.train_text_encoder = true;
    config.prior_loss_weight = 0.7;
    config.snr_gamma = 5.0;  // the instance samples weighted, the prior ones not
    train::DreamBoothStep<CpuBackend> step(b, *unet, *text, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
    const auto part = [&](std::int64_t first, std::int64_t n) {
      train::DreamBoothStep<CpuBackend>::Batch batch;
      batch.latents = Tensor<CpuBackend>::empty(b, {n, 4, 16, 16});
      batch.noise = Tensor<CpuBackend>::empty(b, {n, 4, 16, 16});
      for (std::int64_t k = 0; k < n; ++k) {  // sample k of the joint batch, wherever it runs
        b.fill_normal(batch.latents.data<float>() + k * 1024, 1024, 3, static_cast<std::uint64_t>(first + k), 0.0f, 1.0f);
        b.fill_normal(batch.noise.data<float>() + k * 1024, 1024, 4, static_cast<std::uint64_t>(first + k), 0.0f, 1.0f);
        batch.timesteps.push_back(static_cast<int>(130 + 211 * (first + k)));
        batch.ids.insert(batch.ids.end(), 77, static_cast<std::int32_t>(first + k < 2 ? 5 : 9));
      }
      return batch;
    };
    values[mode] = mode == 0 ? step.forward_backward(part(0, 4), 1.0) : step.forward_backward_split(part(0, 2), part(2, 2), 1.0);
    step.apply();
    unet->visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      const auto v = p.value.to_host();
      weights[mode].insert(weights[mode].end(), v.begin(), v.end());
    });
    text->visit([&](const std::string&, nn::Param<CpuBackend>& p) {
      const auto v = p.value.to_host();
      weights[mode].insert(weights[mode].end(), v.begin(), v.end());
    });
  }
  CHECK(values[1].instance == Approx(values[0].instance).epsilon(1e-6));
  CHECK(values[1].prior == Approx(values[0].prior).epsilon(1e-6));
  CHECK(values[1].total == Approx(values[0].total).epsilon(1e-6));
  CHECK(values[0].instance != values[0].prior);
  CHECK(testing::relative_l2(weights[1], weights[0]) < 1e-6);
}

TEST_CASE("caption files as kohya reads them: the first line stripped, the folder's prompt without one", "[dataset][captions]") {
  const auto dir = folder("captions");
  std::ofstream(dir / "a.txt") << "  sks dog, running , grass \nsecond line\n";
  std::ofstream(dir / "b.txt") << "\xEF\xBB\xBF"
                               << "sks dog\r\n";
  std::ofstream(dir / "c.txt") << "";
  CHECK(data::read_caption(dir / "a.png", ".txt", "fallback") == "sks dog, running , grass");
  CHECK(data::read_caption(dir / "b.png", ".txt", "fallback") == "sks dog");  // byte-order mark and CR dropped
  CHECK(data::read_caption(dir / "d.png", ".txt", "fallback") == "fallback");
  CHECK(data::read_caption(dir / "a.png", "", "fallback") == "fallback");  // no caption_extension: no files read
  REQUIRE_THROWS_WITH(data::read_caption(dir / "c.png", ".txt", "fallback"), Catch::Contains("c.txt") && Catch::Contains("empty"));
  const data::Captions captions({dir / "a.png", dir / "d.png"}, ".txt", "a photo of sks dog");
  CHECK(captions.from_files() == 1);
  CHECK(captions.at(dir / "d.png") == "a photo of sks dog");
  REQUIRE_THROWS_WITH(captions.at(dir / "e.png"), Catch::Contains("e.png"));
}

TEST_CASE("caption dropout, tag shuffling with kept leading tags and tag dropout as kohya's process_caption", "[dataset][captions]") {
  const std::string caption = "sks dog, running,grass , sunny day";
  const auto draws = [](std::uint64_t sample) { return data::CaptionDraws{7, 1, sample}; };
  data::CaptionConfig c;
  auto d = draws(0);
  CHECK(data::process_caption(caption, c, d) == caption);  // nothing asked: unchanged (not even re-joined)
  CHECK_FALSE(c.active());
  // shuffling: the first tag kept in front; the rest permuted, stripped, joined with ", "; every order drawn
  c.shuffle = true;
  c.keep_tokens = 1;
  std::map<std::string, int> orders;
  for (std::uint64_t k = 0; k < 6000; ++k) {
    auto dk = draws(k);
    const auto out = data::process_caption(caption, c, dk);
    REQUIRE(out.rfind("sks dog, ", 0) == 0);
    ++orders[out];
  }
  REQUIRE(orders.size() == 6);  // 3! orders of the three flexible tags
  for (const auto& [order, count] : orders) {
    INFO(order);
    CHECK(std::abs(count - 1000) < 150);  // uniform: 1000 each, binomial sd ~29
  }
  CHECK(orders.count("sks dog, grass, running, sunny day") == 1);
  auto again = draws(42), once = draws(42);
  CHECK(data::process_caption(caption, c, again) == data::process_caption(caption, c, once));  // the same draws, the same caption
  // caption dropout: the empty caption at the given rate
  data::CaptionConfig drop;
  drop.dropout_rate = 0.25;
  int dropped = 0;
  for (std::uint64_t k = 0; k < 8000; ++k) {
    auto dk = draws(k);
    dropped += data::process_caption(caption, drop, dk).empty();
  }
  CHECK(std::abs(dropped - 2000) < 160);  // binomial sd ~39
  // tag dropout: each flexible tag kept at 1 - rate; kept leading tags always; a custom separator
  data::CaptionConfig tags;
  tags.tag_dropout_rate = 0.5;
  tags.keep_tokens = 1;
  tags.separator = "|";
  std::map<std::string, int> kept;
  for (std::uint64_t k = 0; k < 4000; ++k) {
    auto dk = draws(k);
    const auto out = data::process_caption("a|b|c", tags, dk);
    REQUIRE(out.rfind("a", 0) == 0);
    for (const char* t : {"b", "c"}) kept[t] += out.find(t) != std::string::npos;
  }
  CHECK(std::abs(kept["b"] - 2000) < 160);
  CHECK(std::abs(kept["c"] - 2000) < 160);
}

TEST_CASE("random_flip mirrors the cropped picture left to right in half of the draws, from the seed", "[dataset]") {
  const auto dir = folder("flip");
  write_image(dir / "a.png", 5, 40, 32);
  data::DatasetConfig plain_config{16, true, 3};
  data::DatasetConfig flip_config = plain_config;
  flip_config.random_flip = true;
  const data::DreamBoothDataset plain({dir / "a.png"}, {}, plain_config), flipping({dir / "a.png"}, {}, flip_config);
  const auto original = plain.load(dir / "a.png", 0);
  auto mirrored = original;
  data::DreamBoothDataset::flip_horizontally(mirrored, 16);
  REQUIRE(mirrored != original);
  CHECK(mirrored[0] == original[15]);                       // channel 0, row 0: the last column first
  CHECK(mirrored[16 * 16 + 16] == original[16 * 16 + 31]);  // channel 1, row 1
  int flipped = 0;
  for (std::uint64_t draw = 0; draw < 400; ++draw) {
    const auto got = flipping.load(dir / "a.png", draw);
    REQUIRE((got == original || got == mirrored));
    flipped += got == mirrored;
  }
  CHECK(std::abs(flipped - 200) < 40);  // binomial sd 10
  CHECK(flipping.load(dir / "a.png", 7) == flipping.load(dir / "a.png", 7));
  // each batch says which of its pictures are mirrored
  int batches_flipped = 0;
  for (std::uint64_t index = 0; index < 40; ++index) {
    const auto batch = flipping.batch(index, 1);
    REQUIRE(batch.flipped.size() == 1);
    REQUIRE(batch.pixels == (batch.flipped[0] ? mirrored : original));
    batches_flipped += batch.flipped[0];
  }
  CHECK(batches_flipped > 0);
  CHECK(batches_flipped < 40);

  // with random flips the latent cache holds both orientations (kohya's latents_flipped), each equal to encoding its
  // picture online
  CpuBackend b;
  auto vae = io::load_vae(b, kData / "vae" / "tiny" / "vae");
  data::LatentCache<CpuBackend> cache(folder("flip-cache"), 16);
  cache.set_flips(true);
  REQUIRE(cache.build(b, *vae, {dir / "a.png"}).encoded == 1);
  for (const bool mirror : {false, true}) {
    auto online = vae->sample(b, vae->encode(b, Tensor<CpuBackend>::from_host(b, {1, 3, 16, 16}, mirror ? mirrored : original)), 7, 2);
    b.scale(online.data<float>(), online.data<float>(), static_cast<float>(vae->config.scaling_factor), static_cast<std::size_t>(online.numel()));
    CHECK(cache.sample(b, *vae, dir / "a.png", 7, 2, mirror).to_host() == online.to_host());
  }
  CHECK(cache.sample(b, *vae, dir / "a.png", 7, 2, true).to_host() != cache.sample(b, *vae, dir / "a.png", 7, 2, false).to_host());
  // a cache built without flips is completed with them: the entry is encoded again
  data::LatentCache<CpuBackend> plain_cache(folder("flip-cache-2"), 16);
  plain_cache.build(b, *vae, {dir / "a.png"});
  REQUIRE_THROWS_WITH(plain_cache.sample(b, *vae, dir / "a.png", 7, 2, true), Catch::Contains("no flipped latents"));
  data::LatentCache<CpuBackend> upgraded(plain_cache.folder(), 16);
  upgraded.set_flips(true);
  CHECK(upgraded.build(b, *vae, {dir / "a.png"}).encoded == 1);
  CHECK(upgraded.build(b, *vae, {dir / "a.png"}).reused == 1);
}
