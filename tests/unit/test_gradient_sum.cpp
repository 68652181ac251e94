// The data-parallel gradient sum overlapped with the backward pass (train/gradient_sum.hpp), against a stand-in for the
// other processes: the models' backward passes report every trained gradient once, after it is complete; every gradient
// is summed exactly once, on the communication thread, in place or staged; what was never reported is summed by finish();
// the communication thread's error reaches the caller. The real MPI sum from a second thread: tests/mpi.
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "dreambooth/backends/cpu.hpp"
#include "dreambooth/core/arena.hpp"
#include "dreambooth/io/clip_loading.hpp"
#include "dreambooth/io/unet_loading.hpp"
#include "dreambooth/models/lora_network.hpp"
#include "dreambooth/train/dreambooth_step.hpp"
#include "dreambooth/train/gradient_sum.hpp"

using namespace dreambooth;
namespace fs = std::filesystem;
using B = CpuBackend;

namespace {

const fs::path kModel = fs::path(DREAMBOOTH_TEST_DATA_DIR) / "pipeline" / "model";

// Two processes whose other one holds this one's gradient plus one: the sum of x is x + (x + 1), in float.
class PlusNeighbour final : public train::Communicator {
 public:
  struct Call {
    std::size_t floats;
    std::thread::id thread;
  };
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void sum_in_rank_order(std::span<float> data) override {
    std::lock_guard lock(mutex);
    calls.push_back({data.size(), std::this_thread::get_id()});
    if (fail_at_call && calls.size() == *fail_at_call) fail("process 1 went away");
    for (auto& x : data) x = x + (x + 1.0f);
  }
  bool sums_on_another_thread() const override { return true; }
  std::vector<double> all_gather(std::span<const double> values) override { return {values.begin(), values.end()}; }
  void barrier() override {}
  [[noreturn]] void abort(int status) override { std::exit(status); }
  std::string description() const override { return "a stand-in for 2 processes"; }

  std::mutex mutex;
  std::vector<Call> calls;
  std::optional<std::size_t> fail_at_call;
};

std::vector<float> summed(std::vector<float> x) {
  for (auto& v : x) v = v + (v + 1.0f);
  return x;
}

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float stddev = 1.0f) {
  std::vector<float> v(n);
  B().fill_normal(v.data(), n, seed, 0, 0.0f, stddev);
  return v;
}

train::DreamBoothStep<B>::Batch tiny_batch(B& b) {
  train::DreamBoothStep<B>::Batch batch;
  batch.latents = Tensor<B>::from_host(b, {2, 4, 8, 8}, random_values(2 * 4 * 8 * 8, 11));
  batch.noise = Tensor<B>::from_host(b, {2, 4, 8, 8}, random_values(2 * 4 * 8 * 8, 12));
  batch.timesteps = {17, 640};
  for (int i = 0; i < 2 * 77; ++i) batch.ids.push_back((i * 37 + 5) % 1000);
  return batch;
}

std::map<const nn::Param<B>*, std::vector<float>> gradients(const std::vector<nn::Param<B>*>& params) {
  std::map<const nn::Param<B>*, std::vector<float>> g;
  for (const auto* p : params) g[p] = p->grad.to_host();
  return g;
}

}  // namespace

TEST_CASE("the backward pass reports each trained gradient once, complete; the sum overlaps it, bucket by bucket", "[gradient_sum]") {
  B b;
  auto unet = io::load_unet(b, kModel / "unet");
  auto text_encoder = io::load_clip_text(b, kModel / "text_encoder");
  train::StepConfig config;
  config.train_text_encoder = true;  // both models' reports
  train::DreamBoothStep<B> step(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), config);
  const auto trained = step.optimizer().trained_parameters();
  const auto batch = tiny_batch(b);

  step.forward_backward(batch, 0.5);  // the reference gradients, nothing reported
  const auto reference = gradients(trained);
  step.optimizer().zero_grad();

  for (const bool background : {true, false}) {
    INFO("communication thread: " << background);
    PlusNeighbour comm;
    train::GradientSum<B> sum(b, comm, 1024, background);  // buckets of 256 floats: dozens of them in the tiny models
    sum.begin(trained);
    std::map<const nn::Param<B>*, std::vector<float>> at_report;
    std::vector<const nn::Param<B>*> order;
    step.report_gradients_of_next_micro_batch([&](nn::Param<B>& p) {
      if (!at_report.count(&p)) order.push_back(&p);
      at_report[&p] = p.grad.to_host();  // before the sum may touch it
      sum.ready(p);
    });
    step.forward_backward(batch, 0.5);
    sum.finish();

    // every trained gradient reported, and complete when it was: equal to the whole backward pass's, bit for bit
    CHECK(at_report.size() == trained.size());
    std::size_t complete = 0, summed_once = 0;
    for (const auto* p : trained) {
      complete += at_report.count(p) && at_report.at(p) == reference.at(p);
      summed_once += p->grad.to_host() == summed(reference.at(p));
    }
    CHECK(complete == trained.size());
    CHECK(summed_once == trained.size());
    // the UNet reports first (conv_out first, the time embedding last), then the text encoder (token embedding last)
    REQUIRE(order.size() == trained.size());
    CHECK(order.front() == &unet->conv_out.weight);
    CHECK(order.back() == &text_encoder->token_embedding);
    std::size_t text_tensors = 0;
    text_encoder->visit([&](const std::string&, nn::Param<B>&) { ++text_tensors; });
    CHECK(order[order.size() - 1 - text_tensors] == &unet->time_linear_1.bias);

    const auto& stats = sum.last();
    CHECK(stats.buckets == comm.calls.size());
    CHECK(stats.buckets > 20);
    CHECK(stats.started_during_backward + 1 >= stats.buckets);  // all but the last, handed over when it filled
    std::size_t floats = 0, on_main_thread = 0;
    for (const auto& c : comm.calls) floats += c.floats, on_main_thread += c.thread == std::this_thread::get_id();
    std::size_t expected = 0;
    for (const auto* p : trained) expected += static_cast<std::size_t>(p->grad.numel());
    CHECK(floats == expected);
    CHECK(stats.bytes == expected * sizeof(float));
    CHECK(on_main_thread == (background ? 0 : comm.calls.size()));
    step.optimizer().zero_grad();
  }
}

TEST_CASE("a bucket is summed in place where its gradients lie back to back, else staged; finish() sums what was never reported", "[gradient_sum]") {
  B b;
  // four gradients of whole 256-byte blocks in one arena (back to back), and one on its own
  Arena<B> arena(b, Arena<B>::plan({{Shape{64}, DType::F32}, {Shape{128}, DType::F32}, {Shape{64}, DType::F32}, {Shape{192}, DType::F32}}));
  std::vector<nn::Param<B>> params(5);
  const std::vector<std::int64_t> sizes = {64, 128, 64, 192, 10};
  for (std::size_t i = 0; i < params.size(); ++i) {
    params[i].shape = Shape{sizes[i]};
    params[i].grad = i < 4 ? arena.allocate(params[i].shape) : Tensor<B>::empty(b, params[i].shape);
    params[i].grad.copy_from_host(random_values(static_cast<std::size_t>(sizes[i]), 40 + i));
  }
  std::vector<nn::Param<B>*> trained;
  for (auto& p : params) trained.push_back(&p);
  const auto before = gradients(trained);

  PlusNeighbour comm;
  train::GradientSum<B> sum(b, comm, 256 * sizeof(float), true);
  sum.begin(trained);
  sum.ready(params[3]);  // 192: below the bucket size
  sum.ready(params[2]);  // 256: handed over, in place (params 2 and 3 are back to back)
  sum.ready(params[4]);  // 10
  sum.finish();          // 4 and the unreported 0, 1: 10 + 64 + 128 = 202 floats, staged (not back to back)
  for (const auto* p : trained) CHECK(p->grad.to_host() == summed(before.at(p)));
  CHECK(sum.last().buckets == 2);
  CHECK(sum.last().started_during_backward == 1);
  CHECK(sum.last().staged == 1);
  REQUIRE(comm.calls.size() == 2);
  CHECK(comm.calls[0].floats == 256);
  CHECK(comm.calls[1].floats == 202);

  // nothing reported: every bucket formed by finish(), in the parameters' order; a second step reuses the object
  sum.begin(std::span<nn::Param<B>* const>(trained.data(), 4));
  sum.finish();
  CHECK(sum.last().buckets == 2);  // 64 + 128 + 64 = 256 (in place), then 192 (in place)
  CHECK(sum.last().started_during_backward == 0);
  CHECK(sum.last().staged == 0);
  for (std::size_t i = 0; i < 4; ++i) CHECK(params[i].grad.to_host() == summed(summed(before.at(&params[i]))));
}

TEST_CASE("the gradient sum refuses a gradient reported twice or outside a step, and passes on the communication thread's error", "[gradient_sum]") {
  B b;
  std::vector<nn::Param<B>> params(3);
  std::vector<nn::Param<B>*> trained;
  for (auto& p : params) {
    p.shape = Shape{300};
    p.grad = Tensor<B>::zeros(b, p.shape);
    trained.push_back(&p);
  }
  PlusNeighbour comm;
  train::GradientSum<B> sum(b, comm, 256 * sizeof(float), true);
  CHECK_THROWS_WITH(sum.ready(params[0]), Catch::Contains("outside begin() / finish()"));
  sum.begin(trained);
  sum.ready(params[1]);
  CHECK_THROWS_WITH(sum.ready(params[1]), Catch::Contains("reported twice"));
  sum.finish();

  comm.fail_at_call = comm.calls.size() + 2;  // the second bucket of the next step fails; the third is not summed
  sum.begin(trained);
  for (auto& p : params) sum.ready(p);
  CHECK_THROWS_WITH(sum.finish(), Catch::Contains("process 1 went away"));
  CHECK(comm.calls.size() == 5);
  CHECK(params[0].grad.to_host() == std::vector<float>(300, 3.0f));  // summed in both steps: 0 -> 1 -> 3
  CHECK(params[2].grad.to_host() == std::vector<float>(300, 1.0f));  // summed the step before (0 -> 1), not after the error
}

TEST_CASE("with LoRA, the adapters nobody reports are summed when the backward pass is over", "[gradient_sum]") {
  B b;
  auto unet = io::load_unet(b, kModel / "unet");
  auto text_encoder = io::load_clip_text(b, kModel / "text_encoder");
  models::LoraConfig lc;
  lc.rank = 2;
  models::LoraNetwork<B> lora(b, *unet, nullptr, lc);
  std::uint64_t seed = 70;
  lora.visit(
      [&](const std::string&, nn::Param<B>& p) { p.value.copy_from_host(random_values(static_cast<std::size_t>(p.shape.numel()), seed++, 0.2f)); });
  train::DreamBoothStep<B> step(b, *unet, *text_encoder, schedulers::NoiseSchedule(schedulers::SchedulerConfig{}), train::StepConfig{}, &lora);
  const auto trained = step.optimizer().trained_parameters();
  const auto batch = tiny_batch(b);
  step.forward_backward(batch, 1.0);
  const auto reference = gradients(trained);
  step.optimizer().zero_grad();

  PlusNeighbour comm;
  train::GradientSum<B> sum(b, comm, 1 << 20, true);
  sum.begin(trained);
  step.report_gradients_of_next_micro_batch(sum.hook());
  step.forward_backward(batch, 1.0);
  sum.finish();
  std::size_t summed_once = 0;
  for (const auto* p : trained) summed_once += p->grad.to_host() == summed(reference.at(p));
  CHECK(summed_once == trained.size());
  CHECK(sum.last().buckets == 1);
  CHECK(sum.last().started_during_backward == 0);
}
