// NeMo's configuration files: the stock dreambooth.yaml (examples/nemo_dreambooth.yaml, paths changed only) and the NeMo
// launcher's dreambooth/860m.yaml load unchanged; every key is honoured or on the no-effect list; OmegaConf's
// interpolation; keys that cannot be honoured yet are refused by name.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "dreambooth/io/nemo_model_config.hpp"
#include "dreambooth/io/yaml_config.hpp"
#include "dreambooth/train/config.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;

namespace {
const fs::path kRoot = fs::path(DREAMBOOTH_TEST_DATA_DIR).parent_path().parent_path();
const fs::path kStock = kRoot / "examples" / "nemo_dreambooth.yaml";
const fs::path kLauncher = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "nemo_configs" / "launcher_860m.yaml";

fs::path yaml_file(const std::string& name, const std::string& text) {
  const auto dir = fs::temp_directory_path() / ("dreambooth-nemo-config-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name) << text;
  return dir / name;
}
}  // namespace

TEST_CASE("NeMo's stock dreambooth.yaml loads and means what it means in NeMo", "[config][nemo]") {
  const auto c = train::TrainingConfig::load(kStock, {});
  // trainer
  REQUIRE(c.max_steps == 400);
  REQUIRE(c.device == "cuda");  // accelerator: gpu
  REQUIRE(c.compute_precision() == "bf16");
  REQUIRE(c.gradient_clip_val == 1.0);
  REQUIRE(c.log_every_n_steps == 10);
  // exp_manager: exp_dir/name, checkpoints every 200 steps, all kept, resume, <name>.nemo at the end
  REQUIRE(c.name == "Dreambooth");
  REQUIRE(fs::path(c.output_dir) == fs::path("out/nemo-demo/Dreambooth"));
  REQUIRE(c.checkpoint_every_n_steps == 200);
  REQUIRE(c.keep_last_checkpoints == -1);
  REQUIRE(c.resume_if_exists);
  REQUIRE(c.resume_ignore_no_checkpoint);
  REQUIRE(c.resume_from_checkpoint.empty());  // ${model.resume_from_checkpoint} -> null
  REQUIRE(c.writes_nemo_on_train_end());
  // model
  REQUIRE(c.micro_batch_size == 2);
  REQUIRE(c.accumulate_grad_batches == 1);  // global_batch_size 2 = 2 x 1 device
  REQUIRE_FALSE(c.with_prior_preservation);
  REQUIRE_FALSE(c.use_cached_latents);
  REQUIRE(c.prior_loss_weight == 0.5);
  REQUIRE(c.restore_from_path == "tests/data/checkpoints/nemo/sd.nemo");
  REQUIRE(c.unet_from_pretrained == "tests/data/checkpoints/nemo/model/unet");
  REQUIRE(c.vae_from_pretrained == "tests/data/checkpoints/nemo/model/vae");
  REQUIRE(c.text_target.ends_with("FrozenMegatronCLIPEmbedder"));
  REQUIRE(c.text_restore_from_path == "tests/data/checkpoints/nemo/clip.nemo");
  REQUIRE(c.scale_factor == 0.18215);
  REQUIRE(c.seed == 1234);
  REQUIRE(c.lr == 1e-6);
  REQUIRE(c.weight_decay == 0.0);
  REQUIRE(c.schedule.name == "WarmupHoldPolicy");
  REQUIRE(c.schedule.rate(0, c.lr) == Approx(5e-7));  // NeMo's warmup: (step + 1) / (warmup_steps + 1)
  REQUIRE(c.schedule.rate(399, c.lr) == Approx(1e-6));
  REQUIRE(c.unet_config["model_channels"].as<int>() == 320);
  REQUIRE(c.noise_scheduler["linear_end"].as<double>() == 0.012);
  // data and the regularization sampler (infer.*)
  REQUIRE(c.instance_prompt == "a photo of a sks dog");
  REQUIRE(c.num_reg_images == 10);
  REQUIRE(c.num_images_per_prompt == 4);
  REQUIRE(c.reg_steps == 50);
  REQUIRE(c.reg_scheduler == "pndm");  // PLMS
  REQUIRE(c.reg_guidance_scale == 7.5);
  REQUIRE(c.reg_width == 512);
  REQUIRE(c.reg_sample_prompt == "a photo of a dog");  // ${model.data.regularization_prompt}
  // every leaf is honoured or named as having no effect, with its reason
  const auto tree = io::YamlConfig::load(kStock, {});
  std::size_t honoured = 0;
  for (const auto& leaf : tree.leaves()) {
    INFO("key " << leaf);
    const bool known = train::TrainingConfig::keys().count(leaf) != 0;
    const bool ignored = train::TrainingConfig::no_effect(leaf).has_value();
    REQUIRE(known != ignored);
    honoured += known;
  }
  REQUIRE(tree.leaves().size() == 165);  // all of NeMo's file
  REQUIRE(c.ignored_keys.size() + honoured == 165);
  for (const auto& [key, reason] : c.ignored_keys) REQUIRE_FALSE(reason.empty());
}

TEST_CASE("the NeMo launcher's dreambooth/860m.yaml loads unchanged", "[config][nemo]") {
  // its explicit_log_dir comes from the launcher's root config: needed only when it names the output directory
  REQUIRE_THROWS_WITH(train::TrainingConfig::load(kLauncher, {}), Catch::Contains("base_results_dir") && Catch::Contains("explicit_log_dir"));
  const auto c = train::TrainingConfig::load(kLauncher, {"base_results_dir=/results"});
  REQUIRE(fs::path(c.output_dir) == fs::path("/results/dreambooth_sd_860m/results"));  // ${training.run.results_dir}/results
  REQUIRE(c.max_steps == 800);
  REQUIRE(c.use_cached_latents);
  REQUIRE(c.keep_last_checkpoints == 5);
  REQUIRE(c.compute_precision() == "bf16");  // model.precision: ${training.trainer.precision}
  REQUIRE(train::TrainingConfig::load(kLauncher, {"trainer.output_dir=/elsewhere"}).output_dir == "/elsewhere");
}

TEST_CASE("OmegaConf's interpolation as NeMo's files use it", "[config][interpolation]") {
  const auto file = yaml_file("interp.yaml", R"(name: Run
a:
  count: 4
  ratio: 0.5
  text: ${name}-{step}
  whole: ${a.count}
  sibling: ${.count}
  parent: ${..name}
  escaped: \${name}
  product: ${multiply:${a.count},3}
  nothing: ${a.empty}
  empty:
  missing: ${a.nope}
  cycle1: ${a.cycle2}
  cycle2: ${a.cycle1}
  unknown: ${frobnicate:1,2}
training_free: ${training.name}
)");
  const auto t = io::YamlConfig::load(file, {"name=Other"});  // overrides apply before interpolation, as Hydra's
  REQUIRE(t.get("a.text").as<std::string>() == "Other-{step}");
  REQUIRE(t.get("a.whole").as<int>() == 4);
  REQUIRE(t.get("a.sibling").as<int>() == 4);
  REQUIRE(t.get("a.parent").as<std::string>() == "Other");
  REQUIRE(t.get("a.escaped").as<std::string>() == "${name}");
  REQUIRE(t.get("a.product").as<int>() == 12);
  REQUIRE(t.get("a.nothing").IsNull());
  REQUIRE(t.get("training_free").as<std::string>() == "Other");  // the launcher's training. prefix
  REQUIRE_THROWS_WITH(t.get("a.missing"), Catch::Contains("a.missing") && Catch::Contains("no key \"a.nope\""));
  REQUIRE_THROWS_WITH(t.get("a.cycle1"), Catch::Contains("cycle"));
  REQUIRE_THROWS_WITH(t.get("a.unknown"), Catch::Contains("unknown resolver \"frobnicate\""));
}

TEST_CASE("NeMo keys that cannot be honoured yet are refused by name", "[config][nemo][errors]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  REQUIRE_THROWS_WITH(load({"trainer.devices=0"}), Catch::Contains("trainer.devices") && Catch::Contains("mpirun"));
  REQUIRE_THROWS_WITH(load({"trainer.num_nodes=-1"}), Catch::Contains("trainer.num_nodes"));
  REQUIRE_THROWS_WITH(load({"trainer.max_epochs=3"}), Catch::Contains("trainer.max_epochs"));
  REQUIRE_THROWS_WITH(load({"model.optim.sched.name=WarmupFooPolicy"}), Catch::Contains("WarmupFooPolicy"));
  REQUIRE_THROWS_WITH(load({"model.cond_stage_config.layer=penultimate"}), Catch::Contains("penultimate"));
  REQUIRE_THROWS_WITH(load({"model.global_batch_size=3"}), Catch::Contains("model.global_batch_size 3"));
  REQUIRE_THROWS_WITH(load({"trainer.logerr=False"}), Catch::Contains("unknown config key \"trainer.logerr\"") && Catch::Contains("did you mean"));
  REQUIRE_THROWS_WITH(load({"trainer.max_steps=2.5"}), Catch::Contains("needs an integer"));
  REQUIRE_THROWS_WITH(load({"model.precision=16"}), Catch::Contains("model.precision"));
  // NeMo's accumulation: global = micro x devices x micro-batches per step
  REQUIRE(load({"model.global_batch_size=8"}).accumulate_grad_batches == 4);
  // data-parallel: trainer.devices x trainer.num_nodes processes, each with micro-batches of model.micro_batch_size
  const auto parallel = load({"trainer.devices=2", "trainer.num_nodes=2", "model.global_batch_size=16"});
  REQUIRE(parallel.processes() == 4);
  REQUIRE(parallel.accumulate_grad_batches == 2);
  // the gradient sum's settings
  const auto defaults = load({});
  REQUIRE(defaults.overlap_gradient_sum);
  REQUIRE(defaults.gradient_bucket_mb == 25);
  REQUIRE(!defaults.gradient_sum_bf16);
  const auto sum = load({"trainer.overlap_gradient_sum=false", "trainer.gradient_bucket_mb=0.5", "trainer.gradient_sum_precision=bf16"});
  REQUIRE(!sum.overlap_gradient_sum);
  REQUIRE(sum.gradient_bucket_mb == 0.5);
  REQUIRE(sum.gradient_sum_bf16);
  REQUIRE_THROWS_WITH(load({"trainer.gradient_sum_precision=fp16"}),
                      Catch::Contains("trainer.gradient_sum_precision") && Catch::Contains("32 or bf16"));
  REQUIRE_THROWS_WITH(load({"trainer.gradient_bucket_mb=0"}), Catch::Contains("trainer.gradient_bucket_mb") && Catch::Contains("positive"));
  REQUIRE(load({"trainer.accelerator=cpu", "trainer.precision=32"}).device == "cpu");
}

TEST_CASE("training config values are checked at load, each error naming the key and the file or the command line", "[config][errors]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  const auto from_command_line = [&](const std::string& override, const std::string& key, const std::string& what) {
    INFO("override: " << override);
    REQUIRE_THROWS_WITH(load({override}), Catch::Contains("command line") && Catch::Contains("\"" + key + "\"") && Catch::Contains(what));
  };
  // types: a whole number where an integer belongs, whatever the spelling
  from_command_line("trainer.max_steps=2.5", "trainer.max_steps", "needs an integer, not 2.5");
  from_command_line("trainer.max_steps=1e300", "trainer.max_steps", "needs an integer");
  from_command_line("infer.inference_steps=.nan", "infer.inference_steps", "needs an integer");
  from_command_line("model.optim.lr=.inf", "model.optim.lr", "needs a number");
  from_command_line("model.optim.lr=[1]", "model.optim.lr", "needs a number");
  // ranges
  from_command_line("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "at least 1");
  from_command_line("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val", "non-negative");
  from_command_line("model.optim.lr=-1e-6", "model.optim.lr", "non-negative");
  from_command_line("model.optim.betas=[0.9,1.5]", "model.optim.betas", "[0, 1)");
  from_command_line("model.optim.eps=0", "model.optim.eps", "positive");
  from_command_line("model.optim.weight_decay=-0.01", "model.optim.weight_decay", "non-negative");
  from_command_line("model.prior_loss_weight=-0.5", "model.prior_loss_weight", "non-negative");
  from_command_line("model.data.num_reg_images=0", "model.data.num_reg_images", "at least 1");
  from_command_line("model.data.resolution=0", "model.data.resolution", "multiple of 8");
  from_command_line("model.global_batch_size=0", "model.global_batch_size", "at least 1");
  from_command_line("model.optim.sched.warmup_ratio=2", "model.optim.sched.warmup_ratio", "between 0 and 1");
  from_command_line("model.validation.steps=0", "model.validation.steps", "at least 1");
  from_command_line("model.validation.every_n_steps=-1", "model.validation.every_n_steps", "at least 0");
  from_command_line("infer.width=100", "infer.width", "multiple of 8");
  from_command_line("infer.eta=-1", "infer.eta", "between 0 and 1");
  from_command_line("infer.unconditional_guidance_scale=-2", "infer.unconditional_guidance_scale", "non-negative");
  // regularization sampling settings: refused at load, not after sampling has started
  from_command_line("model.regularization.scheduler=heun", "model.regularization.scheduler", "\"heun\" is not a scheduler");
  from_command_line("model.regularization.steps=0", "model.regularization.steps", "between 1 and 1000");
  const auto minimal = yaml_file("minimal.yaml",
                                 "model:\n  restore_from_path: m\n  with_prior_preservation: false\n  data:\n    instance_dir: d\n"
                                 "    instance_prompt: p\n");
  const auto ok = train::TrainingConfig::load(minimal, {"model.regularization.scheduler=euler_a", "model.regularization.steps=20"});
  REQUIRE(ok.reg_scheduler == "euler_a");
  REQUIRE(ok.reg_steps == 20);
  // a value from a file names the file, the key and its line
  const auto file = yaml_file("wrong-type.yaml", "trainer:\n  max_steps: 2.5\n");
  REQUIRE_THROWS_WITH(train::TrainingConfig::load(file, {}), Catch::Contains("wrong-type.yaml") && Catch::Contains("line 2") &&
                                                                 Catch::Contains("\"trainer.max_steps\" needs an integer, not 2.5"));
  const auto range = yaml_file("range.yaml", "model:\n  optim:\n    lr: -1\n");
  REQUIRE_THROWS_WITH(train::TrainingConfig::load(range, {"model.data.instance_dir=x", "model.data.instance_prompt=x"}),
                      Catch::Contains("range.yaml") && Catch::Contains("\"model.optim.lr\""));
}

TEST_CASE("YAML syntax errors name the file or the override and the line and column", "[config][errors]") {
  const auto file = yaml_file("syntax.yaml", "trainer:\n  max_steps: 10\n  precision: [32, bf16\n");
  REQUIRE_THROWS_WITH(train::TrainingConfig::load(file, {}),
                      Catch::Contains("syntax.yaml") && Catch::Contains("not valid YAML at line") && Catch::Contains("column"));
  REQUIRE_THROWS_WITH(train::TrainingConfig::load(kStock, {"trainer.max_steps=[1"}),
                      Catch::Contains("command line") && Catch::Contains("trainer.max_steps=[1") && Catch::Contains("line 1, column"));
  // keys that are not names: an error, never yaml-cpp's exception
  REQUIRE_THROWS_AS(train::TrainingConfig::from_text("? [a, b]\n: 1\n", "complex-key.yaml"), Error);
  REQUIRE_THROWS_WITH(train::TrainingConfig::from_text("model:\n  ? {a: 1}\n  : 1\n", "complex-key.yaml"),
                      Catch::Contains("complex-key.yaml") && Catch::Contains("under \"model\"") && Catch::Contains("line 2"));
  REQUIRE_THROWS_AS(train::TrainingConfig::load(kStock, {"model.data={[1]: 2}"}), Error);
}

TEST_CASE("a .nemo's model_config sections are held to the ranges of a diffusers config.json", "[config][nemo][errors]") {
  // a Megatron CLIP text tower with no attention heads divided by zero before (SIGFPE)
  REQUIRE_THROWS_WITH(
      io::megatron_text_config(YAML::Load("{hidden_size: 64, num_layers: 2, num_attention_heads: 0}"), 1000, "cond_stage_config.text"),
      Catch::Contains("cond_stage_config.text") && Catch::Contains("num_attention_heads"));
  REQUIRE(io::megatron_text_config(YAML::Load("{hidden_size: 64, num_layers: 2, num_attention_heads: 4}"), 1000, "text").clip.num_attention_heads ==
          4);
  // an autoencoder with no channels
  REQUIRE_THROWS_WITH(io::vae_config_from_nemo(YAML::Load("{embed_dim: 4, ddconfig: {ch: 0, z_channels: 4}}"), 0.18215, "first_stage_config"),
                      Catch::Contains("first_stage_config") && Catch::Contains("block_out_channels"));
  // LDM schedule keys out of range: linear_end above 1, or no timesteps
  REQUIRE_THROWS_WITH(io::scheduler_config_from_nemo(YAML::Load("{linear_start: 0.00085, linear_end: 2.0}"), "model"),
                      Catch::Contains("model") && Catch::Contains("beta_end"));
  REQUIRE_THROWS_WITH(io::scheduler_config_from_nemo(YAML::Load("{timesteps: -5}"), "model"), Catch::Contains("num_train_timesteps"));
  REQUIRE(io::scheduler_config_from_nemo(YAML::Load("{timesteps: 1000}"), "model").num_train_timesteps == 1000);
}

TEST_CASE("NeMo's sdlora keys configure LoRA DreamBooth; what it cannot honour is refused by name", "[config][nemo][lora]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  CHECK_FALSE(load({}).lora());
  CHECK(load({}).lora_description().empty());
  // NeMo's dreambooth_lora_train.yaml
  const auto c = load({"+model.peft.peft_scheme=sdlora", "+model.peft.lora_tuning.adapter_dim=32", "+model.peft.lora_tuning.network_alpha=16",
                       "+model.peft.lora_tuning.adapter_dropout=0.0", "+model.peft.lora_tuning.column_init_method=xavier",
                       "+model.peft.lora_tuning.row_init_method=zero", "+model.peft.lora_tuning.layer_selection=null",
                       "+model.peft.lora_tuning.weight_tying=False", "+model.peft.restore_from_path=null",
                       "+model.cond_stage_config.enable_lora_finetune=True"});
  CHECK(c.lora());
  CHECK(c.lora_rank == 32);
  CHECK(c.lora_alpha == 16.0);
  CHECK(c.lora_init == "xavier");
  CHECK(c.text_encoder_lora());
  CHECK(c.lora_unet_target_modules() == std::vector<std::string>{"to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"});
  CHECK(c.lora_text_encoder_target_modules() == std::vector<std::string>{"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"});
  CHECK(c.lora_description() ==
        "rank 32, alpha 16, init xavier, UNet to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2, text encoder "
        "q_proj,k_proj,v_proj,out_proj,fc1,fc2");
  // ours: the diffusers script's targets, given targets, the file format
  const auto d = load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.target_modules=[to_q,to_v]", "+model.peft.export_format=diffusers"});
  CHECK(d.lora_unet_target_modules() == std::vector<std::string>{"to_q", "to_v"});
  CHECK(d.lora_text_encoder_target_modules() == std::vector<std::string>{"q_proj", "k_proj", "v_proj", "out_proj"});
  CHECK_FALSE(d.text_encoder_lora());
  CHECK(d.lora_format == "diffusers");
  CHECK(load({"+model.peft.peft_scheme=null"}).lora() == false);
  // the text encoder's own rank, alpha and learning rate
  const auto t = load({"+model.peft.peft_scheme=lora", "model.train_text_encoder=true", "+model.peft.lora_tuning.text_encoder_adapter_dim=8",
                       "+model.peft.lora_tuning.text_encoder_network_alpha=2", "+model.optim.text_encoder_lr=5e-5"});
  CHECK(t.lora_text_encoder_rank == 8);
  CHECK(t.lora_text_encoder_alpha == 2.0);
  CHECK(t.text_encoder_lr == 5e-5);
  CHECK(t.lora_description() ==
        "rank 4, alpha 4, init kaiming_uniform, UNet to_q,to_k,to_v,to_out.0, text encoder q_proj,k_proj,v_proj,out_proj (rank 8, alpha 2)");
  // LoRA dropout and kohya's LoCon (conv_dim / conv_alpha)
  const auto l = load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.adapter_dropout=0.1", "+model.peft.lora_tuning.conv_adapter_dim=8",
                       "+model.peft.lora_tuning.conv_network_alpha=1"});
  CHECK(l.lora_dropout == 0.1);
  CHECK(l.lora_conv_rank == 8);
  CHECK(l.lora_conv_alpha == 1.0);
  CHECK(l.lora_description() == "rank 4, alpha 4, init kaiming_uniform, UNet to_q,to_k,to_v,to_out.0, LoCon rank 8, alpha 1, dropout 0.1");
  REQUIRE_THROWS_WITH(load({"+model.peft.lora_tuning.adapter_dropout=1"}), Catch::Contains("adapter_dropout") && Catch::Contains("[0, 1)"));
  REQUIRE_THROWS_WITH(load({"+model.peft.lora_tuning.conv_adapter_dim=0"}), Catch::Contains("conv_adapter_dim"));
  REQUIRE_THROWS_WITH(load({"+model.peft.lora_tuning.conv_network_alpha=0"}), Catch::Contains("conv_network_alpha"));
  REQUIRE_THROWS_WITH(load({"+model.optim.text_encoder_lr=0"}), Catch::Contains("model.optim.text_encoder_lr"));
  REQUIRE_THROWS_WITH(load({"+model.peft.lora_tuning.text_encoder_adapter_dim=2.5"}), Catch::Contains("text_encoder_adapter_dim"));
  // refused, naming the key
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=ptuning"}), Catch::Contains("model.peft.peft_scheme") && Catch::Contains("ptuning"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.row_init_method=xavier"}), Catch::Contains("row_init_method"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.column_init_method=orthogonal"}),
                      Catch::Contains("column_init_method") && Catch::Contains("orthogonal"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.network_alpha=-1"}), Catch::Contains("network_alpha"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.adapter_dim=0"}), Catch::Contains("adapter_dim"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.lora_tuning.target_modules=[]"}), Catch::Contains("target_modules"));
  REQUIRE_THROWS_WITH(load({"+model.peft.peft_scheme=lora", "+model.peft.export_format=ckpt"}), Catch::Contains("export_format"));
  REQUIRE_THROWS_WITH(load({"+model.peft.restore_from_path=adapters.nemo"}), Catch::Contains("model.peft.restore_from_path"));
}

TEST_CASE("min-SNR weighting and noise offset: diffusers' and kohya's settings, checked", "[config]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  CHECK_FALSE(load({}).snr_gamma.has_value());
  CHECK(load({}).noise_offset == 0.0);
  const auto c = load({"+model.snr_gamma=5", "+model.noise_offset=0.1"});
  CHECK(c.snr_gamma == 5.0);
  CHECK(c.noise_offset == 0.1);
  CHECK_FALSE(load({"+model.snr_gamma=null"}).snr_gamma.has_value());
  REQUIRE_THROWS_WITH(load({"+model.snr_gamma=0"}), Catch::Contains("model.snr_gamma"));
  REQUIRE_THROWS_WITH(load({"+model.noise_offset=-0.1"}), Catch::Contains("model.noise_offset"));
}

TEST_CASE("EMA: NeMo's exp_manager.ema keys and diffusers' EMAModel settings, checked", "[config][nemo]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  const auto off = load({});
  CHECK_FALSE(off.ema_enabled);  // the stock file's ema.enable: False
  CHECK(off.ema_description().empty());
  // NeMo's EMA: the stock file's decay (0.9999), no warm-up, validation on the average
  const auto nemo = load({"exp_manager.ema.enable=true", "exp_manager.ema.every_n_steps=2"});
  CHECK(nemo.ema_enabled);
  CHECK(nemo.ema.decay == 0.9999);
  CHECK(nemo.ema.warmup == "none");
  CHECK(nemo.ema.every_n_steps == 2);
  CHECK_FALSE(nemo.ema_validate_original_weights);
  CHECK(nemo.ema.decay_at(1) == 0.9999);
  // without a decay in the file NeMo's default is 0.999
  CHECK(
      train::TrainingConfig::from_text("model: {data: {instance_dir: i, instance_prompt: p}, restore_from_path: m, with_prior_preservation: false}\n"
                                       "exp_manager: {ema: {enable: true}}\n",
                                       "test")
          .ema.decay == 0.999);
  // diffusers' EMAModel: (1 + s) / (10 + s) below the decay
  const auto diffusers = load({"+model.ema.enable=true", "+model.ema.decay=0.999", "+model.ema.use_ema_warmup=true", "+model.ema.power=0.75",
                               "+model.ema.update_after_step=3", "+model.ema.min_decay=0.5", "+model.ema.export_original_weights=true"});
  CHECK(diffusers.ema.warmup == "power");
  CHECK(diffusers.ema.update_after_step == 3);
  CHECK(diffusers.ema_export_original_weights);
  CHECK(diffusers.ema_description().find("warmup power") != std::string::npos);
  REQUIRE_THROWS_WITH(load({"+model.ema.decay=1.5"}), Catch::Contains("model.ema.decay"));
  REQUIRE_THROWS_WITH(load({"exp_manager.ema.every_n_steps=0"}), Catch::Contains("exp_manager.ema.every_n_steps"));
  REQUIRE_THROWS_WITH(load({"+model.ema.warmup=linear"}), Catch::Contains("model.ema.warmup") && Catch::Contains("linear"));
  REQUIRE_THROWS_WITH(load({"+model.ema.update_after_step=1.5"}), Catch::Contains("model.ema.update_after_step") && Catch::Contains("integer"));
  REQUIRE_THROWS_WITH(load({"+model.ema.inv_gamma=0"}), Catch::Contains("model.ema.inv_gamma"));
}

TEST_CASE("scale_lr, stop_text_encoder_training and the validation settings: diffusers' and kohya's, checked", "[config]") {
  const auto load = [](std::vector<std::string> o) { return train::TrainingConfig::load(kStock, o); };
  // diffusers' --scale_lr: lr x accumulation x batch x processes; the text encoder's own rate as given
  const auto scaled = load({"+model.optim.scale_lr=true", "model.micro_batch_size=2", "model.global_batch_size=6", "model.optim.lr=1e-6",
                            "+model.optim.text_encoder_lr=5e-7"});
  CHECK(scaled.lr == Approx(6e-6).epsilon(1e-12));
  CHECK(scaled.lr_given == 1e-6);
  CHECK(*scaled.text_encoder_lr == 5e-7);
  CHECK(load({"model.optim.lr=1e-6", "model.micro_batch_size=2"}).lr == 1e-6);
  // kohya's stop_text_encoder_training
  CHECK(load({"model.train_text_encoder=true", "+model.stop_text_encoder_training=100"}).stop_text_encoder_training == 100L);
  REQUIRE_THROWS_WITH(load({"+model.stop_text_encoder_training=100"}),
                      Catch::Contains("model.stop_text_encoder_training") && Catch::Contains("model.train_text_encoder is false"));
  REQUIRE_THROWS_WITH(load({"model.train_text_encoder=true", "+model.stop_text_encoder_training=-1"}),
                      Catch::Contains("model.train_text_encoder=false"));
  REQUIRE_THROWS_WITH(load({"model.train_text_encoder=true", "+model.stop_text_encoder_training=10", "+model.peft.peft_scheme=lora"}),
                      Catch::Contains("LoRA"));
  // validation sampling
  const auto v = load({"+model.validation.negative_prompt=blurry", "+model.validation.guidance_scale=5", "+model.validation.scheduler=ddim",
                       "+model.validation.num_images_per_prompt=2"});
  CHECK(v.validation_negative_prompt == "blurry");
  CHECK(v.validation_guidance_scale == 5.0);
  CHECK(v.validation_scheduler == "ddim");
  CHECK(v.validation_images_per_prompt == 2);
  REQUIRE_THROWS_WITH(load({"+model.validation.scheduler=heun"}), Catch::Contains("model.validation.scheduler") && Catch::Contains("heun"));
  REQUIRE_THROWS_WITH(load({"+model.validation.num_images_per_prompt=0"}), Catch::Contains("model.validation.num_images_per_prompt"));
}

TEST_CASE("several subjects: model.data.concepts and diffusers' --concepts_list file, checked", "[config][concepts]") {
  const std::string head = "model: {restore_from_path: m, with_prior_preservation: true, data: {num_reg_images: 10, ";
  const std::string two =
      "concepts: [{instance_dir: a, instance_prompt: a photo of sks dog, regularization_dir: ra, regularization_prompt: a photo of a dog},"
      " {instance_data_dir: b, instance_prompt: a photo of zwx cat, class_data_dir: rb, class_prompt: a photo of a cat, num_class_images: 3,"
      " validation_prompt: zwx cat on a beach, validation_guidance_scale: 5}]";
  const auto c = train::TrainingConfig::from_text(head + two + "}}\n", "concepts.yaml");
  REQUIRE(c.concepts.size() == 2);
  CHECK(c.concepts[0].instance_dir == "a");
  CHECK(c.concepts[0].regularization_prompt == "a photo of a dog");
  CHECK(c.concepts[0].num_reg_images == 10);  // model.data.num_reg_images
  CHECK(c.concepts[1].instance_dir == "b");   // diffusers' names
  CHECK(c.concepts[1].regularization_dir == "rb");
  CHECK(c.concepts[1].regularization_prompt == "a photo of a cat");
  CHECK(c.concepts[1].num_reg_images == 3);
  CHECK(c.validation_prompts == std::vector<std::string>{"zwx cat on a beach"});
  REQUIRE(c.ignored_keys.size() == 1);
  CHECK(c.ignored_keys[0].first == "model.data.concepts[1].validation_guidance_scale");
  CHECK(c.concepts_source == "model.data.concepts");

  // without a list, model.data's own keys make the one concept
  const auto single = train::TrainingConfig::load(kStock, {});
  REQUIRE(single.concepts.size() == 1);
  CHECK(single.concepts[0].instance_dir == single.instance_dir);
  CHECK(single.concepts[0].regularization_prompt == single.regularization_prompt);
  CHECK(single.concepts[0].num_reg_images == single.num_reg_images);
  CHECK(single.concepts[0].key("instance_dir") == "model.data.instance_dir");

  // diffusers' JSON file, read unchanged
  const auto json = yaml_file("concepts.json",
                              R"([{"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "instance_data_dir": "dog",
                                   "class_data_dir": "dog_class"},
                                  {"instance_prompt": "a photo of zwx cat", "class_prompt": "a photo of a cat", "instance_data_dir": "cat",
                                   "class_data_dir": "cat_class"}])");
  const auto from_file = train::TrainingConfig::from_text(head + "concepts_list: " + json.string() + "}}\n", "list.yaml");
  REQUIRE(from_file.concepts.size() == 2);
  CHECK(from_file.concepts[1].instance_dir == "cat");
  CHECK(from_file.concepts[1].regularization_dir == "cat_class");
  CHECK(from_file.concepts[1].key("instance_dir") == json.string() + "[1].instance_dir");

  const auto refused = [&](const std::string& data, const std::string& what, const std::string& also) {
    INFO(data);
    REQUIRE_THROWS_WITH(train::TrainingConfig::from_text(head + data + "}}\n", "bad.yaml"), Catch::Contains(what) && Catch::Contains(also));
  };
  // the list beside model.data's own keys; both lists; an unknown concept key; a key given twice; a missing prompt
  refused(two + ", instance_dir: x", "model.data.instance_dir is set beside model.data.concepts", "remove");
  refused(two + ", concepts_list: " + json.string(), "already given by model.data.concepts", "one of the two");
  refused("concepts: [{instance_dir: a, instance_prompt: p, regularization_dir: r, regularization_prompt: q, repeats: 3}]",
          "model.data.concepts[0].repeats", "unknown concept key");
  refused("concepts: [{instance_dir: a, instance_data_dir: b, instance_prompt: p, regularization_dir: r, regularization_prompt: q}]",
          "model.data.concepts[0].instance_data_dir", "twice");
  refused(
      "concepts: [{instance_dir: a, instance_prompt: p, regularization_dir: r, regularization_prompt: q}, {instance_dir: b, "
      "regularization_dir: r2, regularization_prompt: q}]",
      "model.data.concepts[1].instance_prompt", "required");
  refused("concepts: [{instance_dir: a, instance_prompt: p, regularization_dir: r, regularization_prompt: q, num_class_images: 0}]",
          "model.data.concepts[0].num_class_images", "positive integer");
  refused("concepts: []", "model.data.concepts", "non-empty list");
  refused("concepts_list: /nowhere/concepts.json", "model.data.concepts_list", "/nowhere/concepts.json");
  // two concepts sharing a class folder must agree on its prompt and count; infer.prompts names one prompt
  refused(
      "concepts: [{instance_dir: a, instance_prompt: p, regularization_dir: r, regularization_prompt: a dog}, {instance_dir: b, "
      "instance_prompt: p2, regularization_dir: r, regularization_prompt: a cat}]",
      "model.data.concepts[0] and model.data.concepts[1] share the class folder r", "different");
  REQUIRE_THROWS_WITH(train::TrainingConfig::from_text(head + two + "}}\ninfer: {prompts: [a dog]}\n", "bad.yaml"),
                      Catch::Contains("infer.prompts") && Catch::Contains("2 concepts"));
  // concepts sharing a class folder with the same prompt and count are fine
  CHECK(train::TrainingConfig::from_text(head +
                                             "concepts: [{instance_dir: a, instance_prompt: p, regularization_dir: r, regularization_prompt: a dog}, "
                                             "{instance_dir: b, instance_prompt: p2, regularization_dir: ./r, regularization_prompt: a dog}]}}\n",
                                         "shared.yaml")
            .concepts.size() == 2);
}
