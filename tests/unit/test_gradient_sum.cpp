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
  void broadcast(std::span<std::byte>, int) override {}
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
    CHECK(stats.runs == comm.calls.size());  // a sum per run of memory: a block's modules lie in another order than they are reported
    CHECK(stats.buckets > 20);
    CHECK(stats.started_during_backward + 1 >= stats.buckets);  // all but the last, handed over when it filled
    std::size_t floats = 0, on_main_thread = 0;
    for (const auto& c : comm.calls) floats += c.floats, on_main_thread += c.thread == std::this_thread::get_id();
    std::size_t expected = 0;
    for (const auto* p : trained) expected += static_cast<std::size_t>(p->grad.numel());
    CHECK(floats >= expected);  // and the arena's padding summed with them: under 64 floats per tensor
    CHECK(floats < expected + 64 * trained.size());
    CHECK(stats.bytes == expected * sizeof(float));
    CHECK(on_main_thread == (background ? 0 : comm.calls.size()));
    step.optimizer().zero_grad();
  }
}

TEST_CASE("a bucket is summed in place, a sum per run of memory it covers; finish() sums the unreported", "[gradient_sum]") {
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
  sum.ready(params[2]);  // 256: handed over; params 2 and 3 lie back to back: one run
  sum.ready(params[4]);  // 10
  sum.finish();          // 4 and the unreported 0, 1: runs of 0 + 1 (192 floats) and of 4 (10), another allocation
  for (const auto* p : trained) CHECK(p->grad.to_host() == summed(before.at(p)));
  CHECK(sum.last().buckets == 2);
  CHECK(sum.last().started_during_backward == 1);
  CHECK(sum.last().runs == 3);
  CHECK(sum.last().staged == 0);
  REQUIRE(comm.calls.size() == 3);
  CHECK(comm.calls[0].floats == 256);
  CHECK(comm.calls[1].floats + comm.calls[2].floats == 202);
  CHECK(std::min(comm.calls[1].floats, comm.calls[2].floats) == 10);

  // nothing reported: every bucket formed by finish(), in the parameters' order; a second step reuses the object
  sum.begin(std::span<nn::Param<B>* const>(trained.data(), 4));
  sum.finish();
  CHECK(sum.last().buckets == 2);  // 64 + 128 + 64 = 256, then 192: one run each
  CHECK(sum.last().runs == 2);
  CHECK(sum.last().started_during_backward == 0);
  for (std::size_t i = 0; i < 4; ++i) CHECK(params[i].grad.to_host() == summed(summed(before.at(&params[i]))));

  // reported out of their order in memory (0, 2, then 1): still one run
  sum.begin(std::span<nn::Param<B>* const>(trained.data(), 3));
  for (const std::size_t k : {0, 2, 1}) sum.ready(params[k]);
  sum.finish();
  CHECK(sum.last().runs == 1);
  CHECK(comm.calls.back().floats == 256);

  // gradients of 10 and 20 floats in one zeroed arena: the run between them is padding, summed in place with them
  Arena<B> padded(b, Arena<B>::plan({{Shape{10}, DType::F32}, {Shape{20}, DType::F32}}));
  padded.set_zero();
  std::vector<nn::Param<B>> small(2);
  small[0].shape = Shape{10}, small[1].shape = Shape{20};
  for (auto& p : small) p.grad = padded.allocate(p.shape);
  small[0].grad.copy_from_host(random_values(10, 50));
  small[1].grad.copy_from_host(random_values(20, 51));
  const std::vector<float> first = small[0].grad.to_host(), second = small[1].grad.to_host();
  CHECK(nn::ptr(small[1].grad) - nn::ptr(small[0].grad) == 64);  // 54 floats of padding between them
  std::vector<nn::Param<B>*> both = {&small[0], &small[1]};  // the optimizer's order is the arena's
  PlusNeighbour other;
  train::GradientSum<B> in_place(b, other, 1 << 20, false);
  in_place.begin(both);
  in_place.finish();
  CHECK(in_place.last().staged == 0);
  REQUIRE(other.calls.size() == 1);
  CHECK(other.calls[0].floats == 84);  // 10 + 54 + 20
  CHECK(small[0].grad.to_host() == summed(first));
  CHECK(small[1].grad.to_host() == summed(second));
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

TEST_CASE("with bf16 on the wire the gradients end as the bf16 rounding of the sum of the bf16-rounded parts", "[gradient_sum]") {
  B b;
  nn::Param<B> param;
  param.shape = Shape{1000};
  const auto values = random_values(1000, 90, 3.0f);
  param.grad = Tensor<B>::from_host(b, param.shape, values);
  std::vector<nn::Param<B>*> trained = {&param};
  PlusNeighbour comm;
  train::GradientSum<B> sum(b, comm, 1 << 20, true, /*bf16_wire=*/true);
  sum.begin(trained);
  sum.ready(param);
  sum.finish();
  const auto bf16 = [](float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); };
  std::vector<float> expected(values.size()), plain(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float mine = bf16(values[i]);
    expected[i] = bf16(mine + (mine + 1.0f));
    plain[i] = values[i] + (values[i] + 1.0f);
  }
  CHECK(param.grad.to_host() == expected);
  CHECK(expected != plain);  // the rounding shows
}

// A backend whose memory the host cannot address (as a GPU's): its gradients go through a host buffer.
struct OffHostBackend : CpuBackend {
  static constexpr bool host_memory = false;
};

TEST_CASE("gradients the host cannot address are staged through a host buffer and copied back", "[gradient_sum]") {
  OffHostBackend b;
  std::vector<nn::Param<OffHostBackend>> params(3);
  std::vector<nn::Param<OffHostBackend>*> trained;
  std::vector<std::vector<float>> before;
  for (std::size_t i = 0; i < params.size(); ++i) {
    params[i].shape = Shape{static_cast<std::int64_t>(100 * (i + 1))};
    before.push_back(random_values(100 * (i + 1), 60 + i));
    params[i].grad = Tensor<OffHostBackend>::from_host(b, params[i].shape, before.back());
    trained.push_back(&params[i]);
  }
  PlusNeighbour comm;
  train::GradientSum<OffHostBackend> sum(b, comm, 250 * sizeof(float), true);
  for (int step = 0; step < 2; ++step) {  // the second step reuses the first one's buffers
    sum.begin(trained);
    sum.ready(params[2]);  // 300 floats: a bucket
    sum.finish();          // 100 + 200
    CHECK(sum.last().staged == 2);
    CHECK(sum.last().runs == 2);
    for (std::size_t i = 0; i < params.size(); ++i) {
      before[i] = summed(before[i]);
      CHECK(params[i].grad.to_host() == before[i]);
    }
  }
}

// Two processes whose device sums are queued, as NCCL's are: each queued sum lands only when wait_device_sums() is called
// (the backend's later work waits for the queue), and only on the thread that made the communicator.
class QueuedOnDevice final : public train::Communicator {
 public:
  struct Queued {
    float* data;
    std::size_t floats;
    bool bf16;
  };
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void sum_in_rank_order(std::span<float>) override { FAIL("a device communicator's host sum was called"); }
  bool sums_device_memory() const override { return true; }
  void enqueue_device_sum(std::span<float> data, bool bf16_wire) override {
    CHECK(std::this_thread::get_id() == owner);
    queue.push_back({data.data(), data.size(), bf16_wire});
    all.push_back(queue.back());
  }
  void wait_device_sums() override {
    const auto bf16 = [](float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); };
    for (const auto& q : queue)
      for (std::size_t i = 0; i < q.floats; ++i) {
        const float x = q.bf16 ? bf16(q.data[i]) : q.data[i];
        q.data[i] = q.bf16 ? bf16(x + (x + 1.0f)) : x + (x + 1.0f);
      }
    queue.clear();
    ++waits;
  }
  void broadcast(std::span<std::byte>, int) override {}
  std::vector<double> all_gather(std::span<const double> values) override { return {values.begin(), values.end()}; }
  void barrier() override {}
  [[noreturn]] void abort(int status) override { std::exit(status); }
  std::string description() const override { return "a stand-in for 2 processes on GPUs"; }

  std::thread::id owner = std::this_thread::get_id();
  std::vector<Queued> queue, all;
  int waits = 0;
};

TEST_CASE("a communicator of device memory gets the gradients in place, queued as the backward pass reports them", "[gradient_sum]") {
  using D = OffHostBackend;
  D b;
  // three gradients back to back in one zeroed arena (one run), one on its own
  Arena<D> arena(b, Arena<D>::plan({{Shape{64}, DType::F32}, {Shape{100}, DType::F32}, {Shape{128}, DType::F32}}));
  arena.set_zero();
  std::vector<nn::Param<D>> params(4);
  const std::vector<std::int64_t> sizes = {64, 100, 128, 30};
  std::vector<std::vector<float>> before;
  std::vector<nn::Param<D>*> trained;
  for (std::size_t i = 0; i < params.size(); ++i) {
    params[i].shape = Shape{sizes[i]};
    params[i].grad = i < 3 ? arena.allocate(params[i].shape) : Tensor<D>::empty(b, params[i].shape);
    before.push_back(random_values(static_cast<std::size_t>(sizes[i]), 70 + i, 3.0f));
    params[i].grad.copy_from_host(before.back());
    trained.push_back(&params[i]);
  }
  QueuedOnDevice comm;
  train::GradientSum<D> sum(b, comm, 150 * sizeof(float), /*background=*/true);
  CHECK(sum.on_device());
  CHECK_FALSE(sum.staged());
  CHECK(sum.background());
  sum.begin(trained);
  sum.ready(params[2]);  // 128
  sum.ready(params[0]);  // 192: a bucket, queued now; 0 and 2 are not adjacent (1 lies between): two runs
  REQUIRE(comm.queue.size() == 2);
  CHECK(comm.queue[0].data == nn::ptr(params[0].grad));
  CHECK(comm.queue[0].floats == 64);
  CHECK(comm.queue[1].data == nn::ptr(params[2].grad));
  CHECK(comm.queue[1].floats == 128);
  CHECK(params[0].grad.to_host() == before[0]);  // queued, not yet summed
  sum.finish();  // 1 and 3, then the wait
  CHECK(comm.waits == 1);
  CHECK(comm.queue.empty());
  for (std::size_t i = 0; i < params.size(); ++i) CHECK(params[i].grad.to_host() == summed(before[i]));
  CHECK(sum.last().buckets == 2);
  CHECK(sum.last().started_during_backward == 1);
  CHECK(sum.last().staged == 0);
  CHECK(sum.last().runs == 4);
  CHECK(sum.last().bytes == 322 * sizeof(float));

  // nothing reported, bf16 on the wire: the arena's three gradients (padding between them included) are one run
  comm.all.clear();
  train::GradientSum<D> bf16_sum(b, comm, 1 << 20, false, /*bf16_wire=*/true);
  CHECK_FALSE(bf16_sum.background());
  for (std::size_t i = 0; i < 3; ++i) before[i] = params[i].grad.to_host();
  bf16_sum.begin(std::span<nn::Param<D>* const>(trained.data(), 3));
  bf16_sum.finish();
  REQUIRE(comm.all.size() == 1);
  CHECK(comm.all[0].bf16);
  CHECK(comm.all[0].data == nn::ptr(params[0].grad));
  CHECK(comm.all[0].floats == static_cast<std::size_t>(nn::ptr(params[2].grad) - nn::ptr(params[0].grad)) + 128);
  const auto bf16 = [](float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); };
  for (std::size_t i = 0; i < 3; ++i) {
    auto want = before[i];
    for (auto& x : want) x = bf16(bf16(x) + (bf16(x) + 1.0f));
    CHECK(params[i].grad.to_host() == want);
  }
  CHECK(comm.waits == 2);
}
