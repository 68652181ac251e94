// LoRA adapters: the adapter's forward and backward against the dense computation W + scale * up @ down in double,
// the network's targets and kohya names on the tiny UNet and text encoder, the adapted model equal to the base at
// initialisation, and frozen weights that get no gradient.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <set>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/models/lora_network.hpp"
#include "dreambooth/pipeline/load_pipeline.hpp"
#include "dreambooth/pipeline/lora_files.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "pipeline_checks.hpp"
#include "reference.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

namespace {
const fs::path kTraining = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "training" / "frozen_text_encoder";

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::vector<float> v(n);
  B().fill_normal(v.data(), n, seed, 0, 0.0f, stddev);
  return v;
}
}  // namespace

TEST_CASE("a LoRA adapter adds scale * up @ down to its Linear layer, forward and backward", "[lora]") {
  B b;
  const std::int64_t N = 5, in = 7, out = 6, rank = 3;
  const double alpha = 4.5, scale = alpha / rank;
  nn::Linear<B> layer(in, out);
  nn::LoraAdapter<B> adapter(in, out, rank, alpha);
  const auto w = random_values(out * in, 1), bias = random_values(out, 2), down = random_values(rank * in, 3), up = random_values(out * rank, 4);
  const auto x = random_values(N * in, 5), dy = random_values(N * out, 6);
  layer.weight.value = Tensor<B>::from_host(b, {out, in}, w);
  layer.bias.value = Tensor<B>::from_host(b, {out}, bias);
  layer.weight.grad = Tensor<B>::zeros(b, {out, in});
  layer.bias.grad = Tensor<B>::zeros(b, {out});
  adapter.down.value = Tensor<B>::from_host(b, {rank, in}, down);
  adapter.up.value = Tensor<B>::from_host(b, {out, rank}, up);
  adapter.down.grad = Tensor<B>::zeros(b, {rank, in});
  adapter.up.grad = Tensor<B>::zeros(b, {out, rank});
  layer.lora = &adapter;
  const auto xt = Tensor<B>::from_host(b, {N, in}, x);
  const auto y = layer.forward(b, xt).to_host();
  const auto dx = layer.backward(b, Tensor<B>::from_host(b, {N, out}, dy), xt).to_host();

  // dense reference in double: W' = W + scale * up @ down; h = down x
  const auto at = [](const std::vector<float>& m, std::int64_t cols, std::int64_t r, std::int64_t c) { return static_cast<double>(m[r * cols + c]); };
  std::vector<double> y_ref(N * out), dx_ref(N * in, 0.0), dup_ref(out * rank, 0.0), ddown_ref(rank * in, 0.0), dw_ref(out * in, 0.0);
  std::vector<double> w_eff(out * in);
  for (std::int64_t o = 0; o < out; ++o)
    for (std::int64_t i = 0; i < in; ++i) {
      double d = 0;
      for (std::int64_t r = 0; r < rank; ++r) d += at(up, rank, o, r) * at(down, in, r, i);
      w_eff[o * in + i] = at(w, in, o, i) + scale * d;
    }
  for (std::int64_t n = 0; n < N; ++n) {
    std::vector<double> h(rank, 0.0), dh(rank, 0.0);
    for (std::int64_t r = 0; r < rank; ++r)
      for (std::int64_t i = 0; i < in; ++i) h[r] += at(down, in, r, i) * at(x, in, n, i);
    for (std::int64_t o = 0; o < out; ++o) {
      double v = bias[o];
      for (std::int64_t i = 0; i < in; ++i) v += w_eff[o * in + i] * at(x, in, n, i);
      y_ref[n * out + o] = v;
      const double g = at(dy, out, n, o);
      for (std::int64_t i = 0; i < in; ++i) {
        dx_ref[n * in + i] += g * w_eff[o * in + i];
        dw_ref[o * in + i] += g * at(x, in, n, i);
      }
      for (std::int64_t r = 0; r < rank; ++r) {
        dup_ref[o * rank + r] += scale * g * h[r];
        dh[r] += scale * g * at(up, rank, o, r);
      }
    }
    for (std::int64_t r = 0; r < rank; ++r)
      for (std::int64_t i = 0; i < in; ++i) ddown_ref[r * in + i] += dh[r] * at(x, in, n, i);
  }
  const auto close = [](const std::vector<float>& got, const std::vector<double>& want) {
    return testing::relative_l2(got, std::vector<float>(want.begin(), want.end()));
  };
  CHECK(close(y, y_ref) < 1e-6);
  CHECK(close(dx, dx_ref) < 1e-6);
  CHECK(close(adapter.up.grad.to_host(), dup_ref) < 1e-6);
  CHECK(close(adapter.down.grad.to_host(), ddown_ref) < 1e-6);
  CHECK(close(layer.weight.grad.to_host(), dw_ref) < 1e-6);

  // a frozen base layer: no weight gradient, the adapter's gradients and dx as before
  layer.weight.grad = Tensor<B>();
  layer.bias.grad = Tensor<B>();
  adapter.down.grad.set_zero();
  adapter.up.grad.set_zero();
  const auto dx_frozen = layer.backward(b, Tensor<B>::from_host(b, {N, out}, dy), xt).to_host();
  CHECK(dx_frozen == dx);
  CHECK(close(adapter.up.grad.to_host(), dup_ref) < 1e-6);
  CHECK(close(adapter.down.grad.to_host(), ddown_ref) < 1e-6);
}

TEST_CASE("a LoRA network adapts the target layers under kohya's names and starts equal to the base model", "[lora]") {
  B b;
  auto unet = io::load_unet(b, kTraining / "unet");
  auto text_encoder = io::load_clip_text(b, kTraining / "text_encoder");
  std::map<const nn::Param<B>*, std::string> weight_names;
  unet->visit([&](const std::string& name, nn::Param<B>& p) { weight_names[&p] = "unet." + name; });
  text_encoder->visit([&](const std::string& name, nn::Param<B>& p) { weight_names[&p] = "text_encoder." + name; });

  // the base output, before any adapter
  const auto sample = Tensor<B>::from_host(b, {1, 4, 16, 16}, random_values(4 * 16 * 16, 10));
  const auto context = Tensor<B>::from_host(b, {1, 77, 8}, random_values(77 * 8, 11));
  const auto base = unet->infer(b, sample, std::vector<float>{500.0f}, context).to_host();

  models::LoraConfig config;
  config.rank = 2;
  config.alpha = 4.0;
  models::LoraNetwork<B> lora(b, *unet, text_encoder.get(), config);
  // the tiny UNet has one transformer block (down_blocks.1, mid_block, up_blocks.0 x2): 4 blocks x 2 attentions x 4
  // projections; the text encoder 2 layers x 4 projections
  std::size_t unet_modules = 0, text_modules = 0;
  std::set<std::string> stems;
  for (const auto& m : lora.modules()) {
    INFO(m->module);
    (m->text_encoder ? text_modules : unet_modules)++;
    stems.insert(m->stem);
    // the module name is the adapted layer's parameter name without ".weight"
    REQUIRE(weight_names.at(&m->layer->weight) == (m->text_encoder ? "text_encoder." : "unet.") + m->module + ".weight");
    CHECK(m->stem == models::kohya_lora_stem(m->text_encoder ? "lora_te" : "lora_unet", m->module));
    CHECK(m->adapter.scale() == 2.0);
    CHECK(m->layer->lora == &m->adapter);
  }
  CHECK(unet_modules == 4 * 2 * 4);
  CHECK(text_modules == 2 * 4);
  CHECK(stems.count("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0"));
  CHECK(stems.count("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"));
  CHECK(stems.count("lora_te_text_model_encoder_layers_1_self_attn_v_proj"));

  // up starts at zero: the adapted model computes what the base does
  CHECK(unet->infer(b, sample, std::vector<float>{500.0f}, context).to_host() == base);

  // frozen weights: after a backward pass they have no gradient, the adapters do; zeroing nothing is a no-op
  unet->freeze();
  unet->zero_grad();
  text_encoder->freeze();
  text_encoder->zero_grad();
  lora.visit([](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), 12, 0.1f)); });
  typename models::UNet2DConditionModel<B>::Activations activations;
  const auto out = unet->forward(b, sample, std::vector<float>{500.0f}, context, activations);
  CHECK(out.to_host() != base);
  unet->backward(b, Tensor<B>::from_host(b, out.shape(), random_values(static_cast<std::size_t>(out.numel()), 13)), activations);
  unet->visit([](const std::string& name, nn::Param<B>& p) {
    INFO(name);
    CHECK(nn::ptr(p.grad) == nullptr);
  });
  double unet_adapter_grad = 0;
  for (const auto& m : lora.modules())
    if (!m->text_encoder)
      for (const float g : m->adapter.up.grad.to_host()) unet_adapter_grad += std::abs(g);
  CHECK(unet_adapter_grad > 0);

  // detached, the layers compute the base model again
  lora.detach();
  CHECK(unet->infer(b, sample, std::vector<float>{500.0f}, context).to_host() == base);
}

TEST_CASE("LoRA configurations are checked", "[lora]") {
  B b;
  auto unet = io::load_unet(b, kTraining / "unet");
  models::LoraConfig config;
  config.unet_targets = {"to_z"};
  REQUIRE_THROWS_WITH(models::LoraNetwork<B>(b, *unet, nullptr, config), Catch::Contains("no layer matches"));
  config = {};
  config.init = "orthogonal";
  REQUIRE_THROWS_WITH(models::LoraNetwork<B>(b, *unet, nullptr, config), Catch::Contains("unknown initialisation \"orthogonal\""));
  config = {};
  config.rank = 0;
  REQUIRE_THROWS_WITH(models::LoraNetwork<B>(b, *unet, nullptr, config), Catch::Contains("rank must be positive"));
}

namespace {
const fs::path kLoraData = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "lora";

// A training fixture's batch and its first step's noise and timesteps.
train::DreamBoothStep<B>::Batch first_step_batch(B& b, const io::SafetensorsFile& fixture) {
  train::DreamBoothStep<B>::Batch batch;
  batch.latents = Tensor<B>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
  batch.noise = Tensor<B>::from_host(b, fixture.info("noise.0").shape, fixture.read_f32("noise.0"));
  const auto t = fixture.read_f32("timesteps.0"), ids = fixture.read_f32("input.ids");
  batch.timesteps.assign(t.begin(), t.end());
  batch.ids.assign(ids.begin(), ids.end());
  return batch;
}

// LoRA DreamBooth against diffusers' train_dreambooth_lora.py with peft (tools/reference/make_lora_fixtures.py): the
// tiny models, the same initial adapters, batch, noise and timesteps; 5 steps with prior preservation.
void check_lora_run(const std::string& run) {
  INFO("run " << run);
  B b;
  const auto dir = kLoraData / "training" / run;
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  const auto& meta = fixture.metadata();
  auto unet = io::load_unet(b, dir / "unet");
  auto text_encoder = io::load_clip_text(b, dir / "text_encoder");
  train::StepConfig config;
  config.train_text_encoder = meta.at("train_text_encoder") == "True";
  config.optimizer.lr = std::stod(meta.at("lr"));
  config.prior_loss_weight = std::stod(meta.at("prior_loss_weight"));
  config.max_grad_norm = std::stod(meta.at("max_grad_norm"));
  models::LoraConfig lora_config;
  lora_config.rank = std::stol(meta.at("rank"));
  lora_config.alpha = std::stod(meta.at("alpha"));
  if (meta.count("conv_rank")) {  // kohya's LoCon: conv_dim adds the resnets' and resamplers' layers itself
    lora_config.conv_rank = std::stol(meta.at("conv_rank"));
    lora_config.conv_alpha = std::stod(meta.at("conv_alpha"));
  }
  models::LoraNetwork<B> lora(b, *unet, config.train_text_encoder ? text_encoder.get() : nullptr, lora_config);
  std::size_t adapters = 0;
  lora.visit([&](const std::string& name, nn::Param<B>& p) {
    p.value.copy_from_host(fixture.read_f32("initial." + name));
    ++adapters;
  });
  CHECK(fixture.tensors().size() == 17 + 2 * (adapters + adapters / 2));  // inputs, then initial. / final. down, up and alpha of each
  for (const auto& m : lora.modules()) CHECK(fixture.read_f32("initial." + m->stem + ".alpha").at(0) == static_cast<float>(m->adapter.alpha));

  train::DreamBoothStep<B> trainer(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config, &lora);
  train::DreamBoothStep<B>::Batch batch;
  batch.latents = Tensor<B>::from_host(b, fixture.info("input.latents").shape, fixture.read_f32("input.latents"));
  const auto ids = fixture.read_f32("input.ids");
  batch.ids.assign(ids.begin(), ids.end());
  for (int k = 0; k < std::stoi(meta.at("steps")); ++k) {
    const auto key = std::to_string(k);
    batch.noise = Tensor<B>::from_host(b, fixture.info("noise." + key).shape, fixture.read_f32("noise." + key));
    const auto t = fixture.read_f32("timesteps." + key);
    batch.timesteps.assign(t.begin(), t.end());
    const auto r = trainer.step(batch);
    const auto expected = fixture.read_f32("loss." + key);
    INFO("step " << k << ": loss " << r.loss.total << ", diffusers + peft " << expected[0]);
    CHECK(std::abs(r.loss.total - expected[0]) <= 1e-5 * std::abs(expected[0]));
    CHECK(std::abs(r.loss.instance - expected[1]) <= 1e-5 * std::abs(expected[1]));
    CHECK(std::abs(r.loss.prior - expected[2]) <= 1e-5 * std::abs(expected[2]));
  }
  std::vector<float> ours, theirs, our_delta, their_delta;
  lora.visit([&](const std::string& name, nn::Param<B>& p) {
    const auto got = p.value.to_host(), want = fixture.read_f32("final." + name), init = fixture.read_f32("initial." + name);
    for (std::size_t i = 0; i < got.size(); ++i) {
      ours.push_back(got[i]);
      theirs.push_back(want[i]);
      our_delta.push_back(got[i] - init[i]);
      their_delta.push_back(want[i] - init[i]);
    }
  });
  const double final_error = testing::relative_l2(ours, theirs), update_error = testing::relative_l2(our_delta, their_delta);
  INFO("final adapters relative L2 " << final_error << ", updates relative L2 " << update_error);
  CHECK(final_error <= 1e-5);
  CHECK(update_error <= 1e-4);
  // the base weights did not move
  const auto base = io::load_unet(b, dir / "unet");
  std::map<std::string, std::vector<float>> initial;
  base->visit([&](const std::string& name, nn::Param<B>& p) { initial[name] = p.value.to_host(); });
  unet->visit([&](const std::string& name, nn::Param<B>& p) { CHECK(p.value.to_host() == initial.at(name)); });
  WARN(run << ": final adapters relative L2 " << final_error << ", updates relative L2 " << update_error << " over " << ours.size()
           << " adapter values");
}
}  // namespace

TEST_CASE("LoRA DreamBooth steps equal diffusers' train_dreambooth_lora.py with peft, UNet adapters", "[lora][reference]") { check_lora_run("unet"); }
TEST_CASE("LoRA DreamBooth steps equal diffusers' train_dreambooth_lora.py with peft, UNet and text-encoder adapters", "[lora][reference]") {
  check_lora_run("unet_and_text_encoder");
}
TEST_CASE("LoCon DreamBooth steps (kohya's conv_dim: 3x3 convolution adapters) equal peft's lora.Conv2d", "[lora][reference]") {
  check_lora_run("unet_locon");
}

namespace {
const fs::path kPipelineModel = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "pipeline" / "model";

// Every weight a LoRA changes in `pipe` beside the fixture's merged.<model>.<name> (diffusers' fuse_lora), as one
// relative L2 over all of them; the other weights must be unchanged.
double merged_error(pipeline::TextToImagePipeline<B>& pipe, const io::SafetensorsFile& fixture, std::size_t& changed) {
  auto original = pipeline::TextToImagePipeline<B>::from_pretrained(pipe.unet->conv_in.weight.value.backend(), kPipelineModel);
  std::vector<float> ours, theirs;
  changed = 0;
  const auto compare = [&](const std::string& model, auto& got, auto& base) {
    std::map<std::string, std::vector<float>> before;
    base.visit([&](const std::string& name, nn::Param<B>& p) { before[name] = p.value.to_host(); });
    got.visit([&](const std::string& name, nn::Param<B>& p) {
      const auto v = p.value.to_host();
      const auto key = "merged." + model + "." + name;
      if (!fixture.contains(key)) {
        INFO(key);
        CHECK(v == before.at(name));
        return;
      }
      const auto want = fixture.read_f32(key);
      ours.insert(ours.end(), v.begin(), v.end());
      theirs.insert(theirs.end(), want.begin(), want.end());
      ++changed;
    });
  };
  compare("unet", *pipe.unet, *original.unet);
  compare("text_encoder", *pipe.text_encoder, *original.text_encoder);
  return testing::relative_l2(ours, theirs);
}

std::vector<float> sample_ddim(pipeline::TextToImagePipeline<B>& pipe, const io::SafetensorsFile& fixture) {
  return pipe.generate(test::fixture_generation_options(fixture, fixture.metadata().at("scheduler"))).latents;
}
}  // namespace

TEST_CASE("LoRA files in kohya's and diffusers' formats merge as diffusers' fuse_lora and sample as diffusers does", "[lora][reference]") {
  B b;
  const auto dir = kLoraData / "pipeline";
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  std::size_t changed = 0;

  // kohya's format, alpha 4 at rank 2: scale 2
  auto pipe = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  const auto kohya = pipeline::read_lora(dir / "lora_kohya.safetensors", pipe);
  CHECK(kohya.size() == 40);
  for (const auto& d : kohya) CHECK(d.scale == 2.0);
  REQUIRE(pipeline::merge_lora(pipe, kohya, 1.0) == 40);
  const double kohya_error = merged_error(pipe, fixture, changed);
  CHECK(changed == 40);
  CHECK(kohya_error < 1e-6);
  const double latents_error = testing::relative_l2(sample_ddim(pipe, fixture), fixture.read_f32("latents.scale_1"));
  CHECK(latents_error < 1e-3);

  // diffusers' format carries no alpha (diffusers reads it with alpha = rank): the same adapters at weight 2
  auto pipe2 = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  const auto diffusers = pipeline::read_lora(dir / "pytorch_lora_weights.safetensors", pipe2);
  for (const auto& d : diffusers) CHECK(d.scale == 1.0);
  pipeline::merge_lora(pipe2, diffusers, 2.0);
  const double diffusers_error = merged_error(pipe2, fixture, changed);
  CHECK(diffusers_error < 1e-6);

  // at weight 0.5 (diffusers' fuse_lora(lora_scale=0.5))
  auto half = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  pipeline::merge_lora(half, pipeline::read_lora(dir / "lora_kohya.safetensors", half), 0.5);
  const double half_error = testing::relative_l2(sample_ddim(half, fixture), fixture.read_f32("latents.scale_0_5"));
  CHECK(half_error < 1e-3);
  WARN("merged weights relative L2: kohya file " << kohya_error << ", diffusers file " << diffusers_error << "; DDIM latents relative L2 at weight 1 "
                                                 << latents_error << ", at 0.5 " << half_error);
}

TEST_CASE("a trained LoRA network written in either format reads back to the same merged model", "[lora]") {
  B b;
  auto pipe = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  models::LoraConfig config;
  config.rank = 3;
  config.alpha = 1.5;
  config.unet_targets = {"to_q", "to_v", "ff.net.2", "proj_in"};  // proj_in: a 1x1 convolution in this model
  config.text_encoder_targets = {"q_proj", "fc1"};
  models::LoraNetwork<B> lora(b, *pipe.unet, pipe.text_encoder.get(), config);
  std::uint64_t seed = 20;
  lora.visit(
      [&](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), seed++, 0.2f)); });
  const auto scratch = fs::temp_directory_path() / ("dreambooth-test-lora-" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  pipeline::write_lora(lora, scratch / "kohya.safetensors", pipeline::LoraFormat::Kohya, DType::F32, {{"ss_output_name", "test"}});
  pipeline::write_lora(lora, scratch / "diffusers.safetensors", pipeline::LoraFormat::Diffusers, DType::F32);
  pipeline::write_lora(lora, scratch / "kohya16.safetensors", pipeline::LoraFormat::Kohya, DType::F16);
  const auto expected = pipeline::lora_deltas(lora);
  lora.detach();

  const io::SafetensorsFile file(scratch / "kohya.safetensors");
  CHECK(file.metadata().at("ss_network_dim") == "3");
  CHECK(file.metadata().at("ss_network_alpha") == "1.5");
  CHECK(file.metadata().at("ss_output_name") == "test");
  CHECK(file.info("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight").shape == Shape{3, 8, 1, 1});
  CHECK(file.info("lora_unet_mid_block_attentions_0_proj_in.alpha").shape.rank() == 0);
  CHECK(io::SafetensorsFile(scratch / "diffusers.safetensors")
            .contains("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight"));

  const auto kohya = pipeline::read_lora(scratch / "kohya.safetensors", pipe);
  REQUIRE(kohya.size() == expected.size());
  std::map<std::string, const pipeline::LoraDelta*> by_module;
  for (const auto& d : kohya) by_module[d.model + "." + d.module] = &d;
  for (const auto& e : expected) {
    const auto& d = *by_module.at(e.model + "." + e.module);
    CHECK(d.down == e.down);
    CHECK(d.up == e.up);
    CHECK(d.scale == e.scale);
  }
  // the diffusers file folds the scale into up: merged, the same weights (to float rounding)
  auto a = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  auto c = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  auto h = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  pipeline::merge_lora(a, pipeline::read_lora(scratch / "kohya.safetensors", a), 1.0);
  pipeline::merge_lora(c, pipeline::read_lora(scratch / "diffusers.safetensors", c), 1.0);
  pipeline::merge_lora(h, pipeline::read_lora(scratch / "kohya16.safetensors", h), 1.0);
  std::vector<float> wa, wc, wh;
  a.unet->visit([&](const std::string&, nn::Param<B>& p) {
    const auto v = p.value.to_host();
    wa.insert(wa.end(), v.begin(), v.end());
  });
  c.unet->visit([&](const std::string&, nn::Param<B>& p) {
    const auto v = p.value.to_host();
    wc.insert(wc.end(), v.begin(), v.end());
  });
  h.unet->visit([&](const std::string&, nn::Param<B>& p) {
    const auto v = p.value.to_host();
    wh.insert(wh.end(), v.begin(), v.end());
  });
  CHECK(testing::relative_l2(wc, wa) < 1e-6);
  CHECK(testing::relative_l2(wh, wa) < 1e-3);  // fp16 adapters

  // a file for another model, a broken pair, a shape that does not fit: refused by name
  io::SafetensorsWriter other;
  other.add("lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", Shape{2, 4}, random_values(8, 1));
  other.write(scratch / "other.safetensors");
  REQUIRE_THROWS_WITH(pipeline::read_lora(scratch / "other.safetensors", pipe),
                      Catch::Contains("1 tensors name no layer of this model") && Catch::Contains("down_blocks_7"));
  io::SafetensorsWriter half_pair;
  half_pair.add("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", Shape{2, 8}, random_values(16, 1));
  half_pair.write(scratch / "half.safetensors");
  REQUIRE_THROWS_WITH(pipeline::read_lora(scratch / "half.safetensors", pipe), Catch::Contains("without its lora_up"));
  io::SafetensorsWriter misfit;
  misfit.add("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight", Shape{2, 5}, random_values(10, 1));
  misfit.add("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight", Shape{8, 2}, random_values(16, 1));
  misfit.write(scratch / "misfit.safetensors");
  REQUIRE_THROWS_WITH(pipeline::read_lora(scratch / "misfit.safetensors", pipe), Catch::Contains("do not fit its weight [8, 8]"));
  fs::remove_all(scratch);
}

TEST_CASE("the text encoder's adapters take their own rank, alpha and learning rate", "[lora]") {
  B b;
  const auto dir = kLoraData / "training" / "unet_and_text_encoder";
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  // one step from the same start, the text encoder's learning rate once equal to the UNet's and once twice it: AdamW's
  // first update is proportional to the learning rate, so the text encoder's adapters move twice as far, the UNet's alike
  const auto one_step = [&](std::optional<double> text_encoder_lr) {
    auto unet = io::load_unet(b, dir / "unet");
    auto text_encoder = io::load_clip_text(b, dir / "text_encoder");
    models::LoraConfig lc;
    lc.rank = 2;
    lc.alpha = 4.0;
    lc.text_encoder_rank = 3;
    lc.text_encoder_alpha = 1.5;
    models::LoraNetwork<B> lora(b, *unet, text_encoder.get(), lc);
    std::map<std::string, std::vector<float>> before;
    lora.visit([&](const std::string& name, nn::Param<B>& p) {
      p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), before.size() + 40, 0.1f));
      before[name] = p.value.to_host();
    });
    for (const auto& m : lora.modules()) {
      CHECK(m->adapter.rank == (m->text_encoder ? 3 : 2));
      CHECK(m->adapter.scale() == (m->text_encoder ? 0.5 : 2.0));
    }
    train::StepConfig config;
    config.train_text_encoder = true;
    config.optimizer.lr = 1e-3;
    config.optimizer.weight_decay = 0;
    config.max_grad_norm = 0;  // no clipping: the gradients are the same in both runs
    config.text_encoder_lr = text_encoder_lr;
    train::DreamBoothStep<B> step(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config, &lora);
    auto batch = first_step_batch(b, fixture);
    step.step(batch);
    std::map<std::string, std::vector<double>> moved;
    lora.visit([&](const std::string& name, nn::Param<B>& p) {
      const auto after = p.value.to_host();
      for (std::size_t i = 0; i < after.size(); ++i) moved[name].push_back(static_cast<double>(after[i]) - before[name][i]);
    });
    return moved;
  };
  const auto same = one_step(std::nullopt), doubled = one_step(2e-3);
  double text_ratio_error = 0, unet_error = 0, text_moved = 0;
  for (const auto& [name, d] : same)
    for (std::size_t i = 0; i < d.size(); ++i) {
      const double other = doubled.at(name)[i];
      if (name.rfind("lora_te_", 0) == 0) {
        text_ratio_error = std::max(text_ratio_error, std::abs(other - 2 * d[i]));
        text_moved = std::max(text_moved, std::abs(d[i]));
      } else {
        unet_error = std::max(unet_error, std::abs(other - d[i]));
      }
    }
  CHECK(text_moved > 1e-4);
  CHECK(text_ratio_error < 1e-3 * text_moved);
  CHECK(unet_error < 1e-3 * text_moved);
}

namespace {
std::vector<float> unet_output(B& b, models::UNet2DConditionModel<B>& unet) {
  const auto sample = Tensor<B>::from_host(b, {1, 4, 16, 16}, random_values(4 * 16 * 16, 70));
  const auto context = Tensor<B>::from_host(b, {1, 77, 8}, random_values(77 * 8, 71));
  return unet.infer(b, sample, std::vector<float>{300.0f}, context).to_host();
}
}  // namespace

TEST_CASE("kohya's LoCon adapts the resnets' and resamplers' layers; merged, it computes what the adapters do", "[lora]") {
  B b;
  auto unet = io::load_unet(b, kTraining / "unet");
  models::LoraConfig config;
  config.rank = 2;
  config.alpha = 4.0;
  config.conv_rank = 3;
  config.conv_alpha = 1.5;
  models::LoraNetwork<B> lora(b, *unet, nullptr, config);
  std::map<std::string, const models::LoraNetwork<B>::Module*> by_module;
  for (const auto& m : lora.modules()) by_module[m->module] = m.get();
  // kohya's set: the attention projections, and in every ResnetBlock2D / Downsample2D / Upsample2D each Linear and Conv2d
  const auto& conv1 = *by_module.at("down_blocks.0.resnets.0.conv1");
  CHECK(conv1.stem == "lora_unet_down_blocks_0_resnets_0_conv1");
  CHECK(conv1.adapter.conv);
  CHECK(conv1.adapter.rank == 3);
  CHECK(conv1.adapter.scale() == 0.5);
  CHECK(conv1.adapter.down.shape == Shape{3, 4, 3, 3});
  CHECK(conv1.adapter.up.shape == Shape{4, 3, 1, 1});
  const auto& downsampler = *by_module.at("down_blocks.0.downsamplers.0.conv");
  CHECK(downsampler.adapter.geometry.stride == 2);
  CHECK(downsampler.adapter.rank == 3);
  const auto& shortcut = *by_module.at("down_blocks.1.resnets.0.conv_shortcut");  // 1x1: the Linear rank and alpha
  CHECK(shortcut.adapter.rank == 2);
  CHECK(shortcut.adapter.scale() == 2.0);
  CHECK(shortcut.adapter.down.shape == Shape{2, 4, 1, 1});
  const auto& time_proj = *by_module.at("up_blocks.1.resnets.1.time_emb_proj");
  CHECK(!time_proj.adapter.conv);
  CHECK(time_proj.adapter.rank == 2);
  CHECK(by_module.count("up_blocks.0.upsamplers.0.conv"));
  CHECK(by_module.count("mid_block.attentions.0.transformer_blocks.0.attn2.to_k"));
  CHECK(!by_module.count("conv_in"));  // outside kohya's modules
  CHECK(!by_module.count("time_embedding.linear_1"));
  CHECK(!by_module.count("mid_block.attentions.0.proj_in"));  // not among the targets
  // 8 resnets (1 per down block, 2 in the mid block, 2 per up block): conv1, conv2, time_emb_proj, and 5 shortcuts;
  // 2 resamplers; 4 transformer blocks x 8 projections
  CHECK(lora.modules().size() == 8 * 3 + 5 + 2 + 4 * 8);

  const auto base = unet_output(b, *unet);
  CHECK(unet_output(b, *unet) == base);  // up starts at zero
  std::uint64_t seed = 80;
  lora.visit(
      [&](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), seed++, 0.3f)); });
  const auto adapted = unet_output(b, *unet);
  CHECK(testing::relative_l2(adapted, base) > 1e-2);

  // the same adapters written (kohya and diffusers formats), read and merged into the weights
  const auto scratch = fs::temp_directory_path() / ("dreambooth-test-locon-" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  pipeline::write_lora(lora, scratch / "kohya.safetensors", pipeline::LoraFormat::Kohya, DType::F32);
  pipeline::write_lora(lora, scratch / "diffusers.safetensors", pipeline::LoraFormat::Diffusers, DType::F32);
  lora.detach();
  CHECK(unet_output(b, *unet) == base);
  const io::SafetensorsFile file(scratch / "kohya.safetensors");
  CHECK(file.info("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight").shape == Shape{3, 4, 3, 3});
  CHECK(file.info("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight").shape == Shape{4, 3, 1, 1});
  CHECK(file.read_f32("lora_unet_down_blocks_0_resnets_0_conv1.alpha") == std::vector<float>{1.5f});
  CHECK(file.metadata().at("ss_network_args") == "{\"conv_dim\": \"3\", \"conv_alpha\": \"1.5\"}");
  CHECK(io::SafetensorsFile(scratch / "diffusers.safetensors").info("unet.down_blocks.0.resnets.0.conv1.lora.down.weight").shape ==
        Shape{3, 4, 3, 3});
  for (const auto* name : {"kohya.safetensors", "diffusers.safetensors"}) {
    INFO(name);
    auto pipe = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
    pipe.unet = io::load_unet(b, kTraining / "unet");
    pipe.text_encoder = io::load_clip_text(b, kTraining / "text_encoder");
    CHECK(pipeline::merge_lora(pipe, pipeline::read_lora(scratch / name, pipe), 1.0) == lora.modules().size());
    const auto merged = unet_output(b, *pipe.unet);
    CHECK(testing::relative_l2(merged, adapted) < 1e-5);
  }
  // a 3x3 adapter for a 1x1 layer does not fit
  io::SafetensorsWriter misfit;
  misfit.add("lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_down.weight", Shape{2, 4, 3, 3}, random_values(72, 1));
  misfit.add("lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_up.weight", Shape{8, 2, 1, 1}, random_values(16, 1));
  misfit.write(scratch / "misfit.safetensors");
  auto pipe = pipeline::TextToImagePipeline<B>::from_pretrained(b, kPipelineModel);
  pipe.unet = io::load_unet(b, kTraining / "unet");
  REQUIRE_THROWS_WITH(pipeline::read_lora(scratch / "misfit.safetensors", pipe), Catch::Contains("do not fit its weight [8, 4]"));
  fs::remove_all(scratch);
}

TEST_CASE("LoRA dropout masks the adapter's input in training, alike in forward and backward, and never in evaluation", "[lora]") {
  B b;
  const std::int64_t N = 6, in = 8, out = 5, rank = 2;
  const double p = 0.5;
  nn::Linear<B> layer(in, out);
  layer.weight.value = Tensor<B>::from_host(b, {out, in}, random_values(out * in, 90));
  layer.bias.value = Tensor<B>::from_host(b, {out}, random_values(out, 91));
  const auto make_adapter = [&](double dropout) {
    nn::LoraAdapter<B> a(in, out, rank, 3.0);
    a.down.value = Tensor<B>::from_host(b, {rank, in}, random_values(rank * in, 92));
    a.up.value = Tensor<B>::from_host(b, {out, rank}, random_values(out * rank, 93));
    a.down.grad = Tensor<B>::zeros(b, {rank, in});
    a.up.grad = Tensor<B>::zeros(b, {out, rank});
    a.dropout = dropout;
    a.dropout_seed = 5;
    a.dropout_offset = 17;
    return a;
  };
  const auto x = Tensor<B>::from_host(b, {N, in}, random_values(N * in, 94));
  const auto dy = Tensor<B>::from_host(b, {N, out}, random_values(N * out, 95));
  auto x_dropped = nn::empty_like(b, x);
  b.dropout(nn::ptr(x_dropped), nn::ptr(x), static_cast<std::size_t>(x.numel()), 5, 17, static_cast<float>(p));
  const auto plain_dx = layer.backward(b, dy, x).to_host();  // the base layer's own dx (independent of x)
  const auto base_y = layer.forward(b, x).to_host(), base_y_dropped = layer.forward(b, x_dropped).to_host();

  auto dropping = make_adapter(p), reference = make_adapter(0.0);
  dropping.training = true;
  reference.training = true;
  layer.lora = &dropping;
  const auto y = layer.forward(b, x).to_host();
  const auto dx = layer.backward(b, dy, x).to_host();
  // the reference: no dropout, on the dropped input
  layer.lora = &reference;
  const auto y_ref = layer.forward(b, x_dropped).to_host();
  layer.backward(b, dy, x_dropped);
  // the adapters' share of the output: on x with dropout, as on the dropped x without
  std::vector<float> share(y.size()), share_ref(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    share[i] = y[i] - base_y[i];
    share_ref[i] = y_ref[i] - base_y_dropped[i];
  }
  CHECK(testing::relative_l2(share, share_ref) < 1e-5);
  CHECK(testing::relative_l2(dropping.up.grad.to_host(), reference.up.grad.to_host()) < 1e-6);
  CHECK(testing::relative_l2(dropping.down.grad.to_host(), reference.down.grad.to_host()) < 1e-6);
  // dx: the base layer's plus the adapter's, masked and scaled as the input was
  auto no_dropout = make_adapter(0.0);
  layer.lora = &no_dropout;
  const auto dx_unmasked = layer.backward(b, dy, x).to_host();
  std::vector<float> adapter_dx(plain_dx.size()), expected(plain_dx.size()), got(plain_dx.size());
  for (std::size_t i = 0; i < plain_dx.size(); ++i) adapter_dx[i] = dx_unmasked[i] - plain_dx[i];
  b.dropout(expected.data(), adapter_dx.data(), expected.size(), 5, 17, static_cast<float>(p));
  for (std::size_t i = 0; i < plain_dx.size(); ++i) got[i] = dx[i] - plain_dx[i];
  CHECK(testing::relative_l2(got, expected) < 1e-5);
  CHECK(testing::relative_l2(got, adapter_dx) > 0.1);  // some of it was dropped

  // in evaluation (training false) the dropout does nothing
  dropping.training = false;
  no_dropout.training = false;
  layer.lora = &dropping;
  const auto y_eval = layer.forward(b, x).to_host();
  layer.lora = &no_dropout;
  CHECK(layer.forward(b, x).to_host() == y_eval);
  CHECK(testing::relative_l2(y_eval, y) > 1e-3);
  layer.lora = nullptr;
}

TEST_CASE("LoRA dropout in a DreamBooth step: masks per micro-batch, reproducible, off after the step", "[lora]") {
  B b;
  const auto dir = kLoraData / "training" / "unet";
  const io::SafetensorsFile fixture(dir / "fixture.safetensors");
  const auto gradients_after_step = [&](double dropout, std::uint64_t index) {
    auto unet = io::load_unet(b, dir / "unet");
    auto text_encoder = io::load_clip_text(b, dir / "text_encoder");
    models::LoraConfig lc;
    lc.rank = 2;
    lc.dropout = dropout;
    lc.seed = 9;
    models::LoraNetwork<B> lora(b, *unet, nullptr, lc);
    std::uint64_t seed = 100;
    lora.visit(
        [&](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), seed++, 0.2f)); });
    train::StepConfig config;
    train::DreamBoothStep<B> step(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config, &lora);
    auto batch = first_step_batch(b, fixture);
    batch.index = index;
    step.forward_backward(batch, 1.0);
    std::vector<float> grads;
    lora.visit([&](const std::string&, nn::Param<B>& p) {
      const auto g = p.grad.to_host();
      grads.insert(grads.end(), g.begin(), g.end());
    });
    for (const auto& m : lora.modules()) CHECK(!m->adapter.training);  // back in evaluation after the step
    return grads;
  };
  const auto plain = gradients_after_step(0.0, 0), first = gradients_after_step(0.3, 0), again = gradients_after_step(0.3, 0),
             second = gradients_after_step(0.3, 1);
  CHECK(first == again);
  CHECK(testing::relative_l2(first, plain) > 1e-2);
  CHECK(testing::relative_l2(second, first) > 1e-2);
  CHECK(gradients_after_step(0.0, 1) == plain);
}

TEST_CASE("a frozen model's backward computes no gradient nobody wants, and the adapters' are unchanged", "[lora]") {
  B b;
  auto unet = io::load_unet(b, kTraining / "unet");
  models::LoraConfig config;
  config.conv_rank = 2;  // adapters on the resnets (time_emb_proj included) and the attention projections
  models::LoraNetwork<B> lora(b, *unet, nullptr, config);
  unet->freeze();
  std::uint64_t seed = 120;
  lora.visit(
      [&](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), seed++, 0.2f)); });
  const auto sample = Tensor<B>::from_host(b, {2, 4, 16, 16}, random_values(2 * 4 * 16 * 16, 130));
  const auto context = Tensor<B>::from_host(b, {2, 77, 8}, random_values(2 * 77 * 8, 131));
  const auto dout = random_values(2 * 4 * 16 * 16, 132);
  const auto adapter_gradients = [&](bool need_input_gradients) {
    lora.zero_grad();
    typename models::UNet2DConditionModel<B>::Activations activations;
    const auto out = unet->forward(b, sample, std::vector<float>{100.0f, 800.0f}, context, activations);
    const auto input = unet->backward(b, Tensor<B>::from_host(b, out.shape(), dout), activations, need_input_gradients);
    CHECK(input.context.defined() == need_input_gradients);
    CHECK(input.sample.defined() == need_input_gradients);
    std::vector<float> grads;
    lora.visit([&](const std::string&, nn::Param<B>& p) {
      const auto g = p.grad.to_host();
      grads.insert(grads.end(), g.begin(), g.end());
    });
    return grads;
  };
  const auto all = adapter_gradients(true), pruned = adapter_gradients(false);
  CHECK(pruned == all);
  double total = 0;
  for (const float g : all) total += std::abs(g);
  CHECK(total > 0);
}

namespace {
// The CPU backend, counting its convolution backward passes.
class ConvCountingBackend : public CpuBackend {
 public:
  long conv_backward_calls = 0;
  void conv2d_backward(float* din, float* dweight, float* dbias, const float* dout, const float* in, const float* weight, const nn::Conv2dDims& d) {
    ++conv_backward_calls;
    CpuBackend::conv2d_backward(din, dweight, dbias, dout, in, weight, d);
  }
};
}  // namespace

TEST_CASE("LoRA on the attention projections leaves out the down path's backward before the first adapter", "[lora]") {
  using C = ConvCountingBackend;
  C b;
  auto unet = io::load_unet(b, kTraining / "unet");
  models::LoraNetwork<C> lora(b, *unet, nullptr, models::LoraConfig{});  // to_q, to_k, to_v, to_out.0
  unet->freeze();
  std::uint64_t seed = 140;
  lora.visit([&](const std::string&, nn::Param<C>& p) {
    std::vector<float> v(static_cast<std::size_t>(p.shape.numel()));
    b.fill_normal(v.data(), v.size(), seed++, 0, 0.0f, 0.2f);
    p.value.copy_from_host(v);
  });
  std::vector<float> sample(2 * 4 * 16 * 16), context(2 * 77 * 8), dout(sample.size());
  b.fill_normal(sample.data(), sample.size(), 150, 0, 0.0f, 1.0f);
  b.fill_normal(context.data(), context.size(), 151, 0, 0.0f, 1.0f);
  b.fill_normal(dout.data(), dout.size(), 152, 0, 0.0f, 1.0f);
  const auto adapter_gradients = [&](bool need_input_gradients, long& conv_backward_calls) {
    lora.zero_grad();
    typename models::UNet2DConditionModel<C>::Activations activations;
    const auto out = unet->forward(b, Tensor<C>::from_host(b, {2, 4, 16, 16}, sample), std::vector<float>{100.0f, 800.0f},
                                   Tensor<C>::from_host(b, {2, 77, 8}, context), activations);
    b.conv_backward_calls = 0;
    unet->backward(b, Tensor<C>::from_host(b, out.shape(), dout), activations, need_input_gradients);
    conv_backward_calls = b.conv_backward_calls;
    std::vector<float> grads;
    lora.visit([&](const std::string&, nn::Param<C>& p) {
      const auto g = p.grad.to_host();
      grads.insert(grads.end(), g.begin(), g.end());
    });
    return grads;
  };
  long all_calls = 0, pruned_calls = 0;
  const auto all = adapter_gradients(true, all_calls), pruned = adapter_gradients(false, pruned_calls);
  CHECK(pruned == all);
  // the tiny UNet's first adapter is in down_blocks.1.attentions.0: conv_in, all of down block 0 and down block 1's
  // resnet come before it
  long before_first_adapter = 0;
  unet->visit_conv_layers([&](const std::string& name, nn::Conv2d<C>&) {
    before_first_adapter += name == "conv_in" || name.starts_with("down_blocks.0.") || name.starts_with("down_blocks.1.resnets.0.");
  });
  CHECK(before_first_adapter == 7);  // conv_in, the two resnets' conv1 / conv2 and the second's shortcut, the downsampler
  CHECK(all_calls - pruned_calls == before_first_adapter);
}
