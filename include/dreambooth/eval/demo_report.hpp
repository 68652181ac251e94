// The demo's measurement of what DreamBooth claims (docs/demo.md), from the pictures a demo run left in its folder:
//   DIR/instance/*.png                          the subject's photos
//   DIR/samples/<model>/subject-K.png           "a photo of sks <class>" sampled by <model>, K = 0, 1, ...
//   DIR/samples/<model>/class-K.png             "a photo of a <class>" sampled by <model>
// for <model> = base (the pretrained model), prior (fine-tuned with prior preservation) and, when present, no-prior
// (fine-tuned without it). Each picture is reduced to the colour histogram of its object (colour_histogram.hpp) and:
//   subject distance   mean distance of the subject samples to the instance photos' mean histogram (fidelity: lower
//                      is closer to the subject);
//   class distance     the same for the class samples (lower: the class drifted toward the subject);
//   class variety      mean distance between two class samples (lower: the class samples look alike).
// fidelity gain = base subject distance - fine-tuned subject distance; class drift = base class distance - fine-tuned
// class distance.
#pragma once

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/data/canvas.hpp"
#include "dreambooth/eval/colour_histogram.hpp"
#include "dreambooth/io/png.hpp"

namespace dreambooth::eval {

struct Picture {
  std::filesystem::path path;
  io::PngImage image;
};

struct SampleSet {
  std::vector<Picture> subject, class_samples;
};

struct SampleFigures {
  double subject_distance = 0, class_distance = 0, class_variety = 0;
};

struct DemoFigures {
  int instance_images = 0, samples_per_prompt = 0;
  double instance_variety = 0;
  SampleFigures base, prior;
  std::optional<SampleFigures> no_prior;

  double fidelity_gain(const SampleFigures& tuned) const { return base.subject_distance - tuned.subject_distance; }
  double class_drift(const SampleFigures& tuned) const { return base.class_distance - tuned.class_distance; }
};

inline Picture read_picture(const std::filesystem::path& path) { return {path, io::read_png(path)}; }

inline ColourHistogram picture_colours(const Picture& p) {
  return object_colours(p.image.pixels.data(), static_cast<int>(p.image.width), static_cast<int>(p.image.height));
}

inline std::vector<ColourHistogram> colours_of(const std::vector<Picture>& pictures) {
  std::vector<ColourHistogram> out;
  for (const auto& p : pictures) out.push_back(picture_colours(p));
  return out;
}

// The PNGs of `dir`, sorted by name.
inline std::vector<Picture> read_pictures(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) fail("demo report: ", dir.string(), " is not a folder");
  std::vector<std::filesystem::path> paths;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".png") paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) fail("demo report: ", dir.string(), " holds no .png");
  std::vector<Picture> out;
  for (const auto& p : paths) out.push_back(read_picture(p));
  return out;
}

// samples/<model>/subject-K.png and class-K.png for K = 0 .. while both exist.
inline SampleSet read_sample_set(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) fail("demo report: ", dir.string(), " is not a folder");
  SampleSet set;
  for (int k = 0;; ++k) {
    const auto subject = dir / ("subject-" + std::to_string(k) + ".png"), class_sample = dir / ("class-" + std::to_string(k) + ".png");
    if (!std::filesystem::exists(subject) || !std::filesystem::exists(class_sample)) break;
    set.subject.push_back(read_picture(subject));
    set.class_samples.push_back(read_picture(class_sample));
  }
  if (set.subject.size() < 2) fail("demo report: ", dir.string(), " needs subject-K.png and class-K.png for K = 0 and 1 at least");
  return set;
}

inline SampleFigures measure(const SampleSet& set, const ColourHistogram& instance_mean) {
  const auto classes = colours_of(set.class_samples);
  return {mean_distance_to(colours_of(set.subject), instance_mean), mean_distance_to(classes, instance_mean), mean_pairwise_distance(classes)};
}

struct DemoPictures {
  std::vector<Picture> instance;
  SampleSet base, prior;
  std::optional<SampleSet> no_prior;
};

inline DemoPictures read_demo_pictures(const std::filesystem::path& demo_dir) {
  DemoPictures p{read_pictures(demo_dir / "instance"), read_sample_set(demo_dir / "samples" / "base"),
                 read_sample_set(demo_dir / "samples" / "prior"), std::nullopt};
  if (std::filesystem::exists(demo_dir / "samples" / "no-prior")) p.no_prior = read_sample_set(demo_dir / "samples" / "no-prior");
  return p;
}

inline DemoFigures measure_demo(const DemoPictures& p) {
  const auto instance = colours_of(p.instance);
  const auto instance_mean = mean_histogram(instance);
  DemoFigures f;
  f.instance_images = static_cast<int>(p.instance.size());
  f.samples_per_prompt = static_cast<int>(p.prior.subject.size());
  f.instance_variety = instance.size() > 1 ? mean_pairwise_distance(instance) : 0;
  f.base = measure(p.base, instance_mean);
  f.prior = measure(p.prior, instance_mean);
  if (p.no_prior) f.no_prior = measure(*p.no_prior, instance_mean);
  return f;
}

inline nlohmann::json to_json(const DemoFigures& f) {
  const auto by_model = [&](auto field) {
    nlohmann::json j{{"base", field(f.base)}, {"with_prior", field(f.prior)}};
    if (f.no_prior) j["without_prior"] = field(*f.no_prior);
    return j;
  };
  nlohmann::json j{
      {"measure", "total variation distance between the colour histograms of the pictures' objects (0: equal, 1: no colour in common); docs/demo.md"},
      {"instance_images", f.instance_images},
      {"samples_per_prompt", f.samples_per_prompt},
      {"instance_variety", f.instance_variety},
      {"subject_distance", by_model([](const SampleFigures& s) { return s.subject_distance; })},
      {"class_distance", by_model([](const SampleFigures& s) { return s.class_distance; })},
      {"class_variety", by_model([](const SampleFigures& s) { return s.class_variety; })},
      {"fidelity_gain", {{"with_prior", f.fidelity_gain(f.prior)}}},
      {"class_drift", {{"with_prior", f.class_drift(f.prior)}}}};
  if (f.no_prior) {
    j["fidelity_gain"]["without_prior"] = f.fidelity_gain(*f.no_prior);
    j["class_drift"]["without_prior"] = f.class_drift(*f.no_prior);
  }
  return j;
}

// The before / after grid: one labelled row each of the instance photos, the subject samples of each model and the class
// samples of each model, `columns` pictures a row, each pasted at `scale`.
inline void write_demo_grid(const std::filesystem::path& path, const DemoPictures& p, const std::string& subject_prompt,
                            const std::string& class_prompt, int columns, int scale) {
  struct Row {
    std::string label;
    const std::vector<Picture>* pictures;
  };
  std::vector<Row> rows{{"INSTANCE PHOTOS", &p.instance},
                        {"\"" + subject_prompt + "\"", nullptr},
                        {"  BEFORE", &p.base.subject},
                        {"  AFTER, WITH PRIOR", &p.prior.subject}};
  if (p.no_prior) rows.push_back({"  AFTER, WITHOUT PRIOR", &p.no_prior->subject});
  rows.push_back({"\"" + class_prompt + "\"", nullptr});
  rows.push_back({"  BEFORE", &p.base.class_samples});
  rows.push_back({"  AFTER, WITH PRIOR", &p.prior.class_samples});
  if (p.no_prior) rows.push_back({"  AFTER, WITHOUT PRIOR", &p.no_prior->class_samples});
  int side = 0, label_width = 0;  // the largest picture's side; the longest label's width
  for (const auto& r : rows)
    if (r.pictures) {
      label_width = std::max(label_width, data::Canvas::text_width(r.label) + 12);
      for (const auto& picture : *r.pictures)
        side = std::max({side, static_cast<int>(picture.image.width) * scale, static_cast<int>(picture.image.height) * scale});
    }
  const int gap = 4, header = 14;
  int height = gap;
  for (const auto& r : rows) height += r.pictures ? side + gap : header;
  data::Canvas canvas(label_width + columns * (side + gap), height, {255, 255, 255});
  const data::Rgb ink{40, 40, 40};
  int y = gap;
  for (const auto& r : rows) {
    if (!r.pictures) {  // a prompt's heading, across the row
      canvas.text(4, y + 4, r.label, ink);
      y += header;
      continue;
    }
    canvas.text(4, y + side / 2 - 3, r.label, ink);
    for (int k = 0; k < columns && k < static_cast<int>(r.pictures->size()); ++k) {
      const auto& image = (*r.pictures)[static_cast<std::size_t>(k)].image;
      canvas.paste(image.pixels.data(), static_cast<int>(image.width), static_cast<int>(image.height), label_width + k * (side + gap), y, scale);
    }
    y += side + gap;
  }
  canvas.write_png(path, {{"Software", "dreambooth.cpp demo"}});
}

}  // namespace dreambooth::eval
