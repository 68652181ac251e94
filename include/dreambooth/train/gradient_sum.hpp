// GradientSum<B>: data-parallel training's gradient sum over the processes (Communicator::sum_in_rank_order), in buckets,
// started while the backward pass still runs, as PyTorch DDP's Reducer does.
//
// A step's last backward pass on each process reports every parameter whose gradient it has finished
// (nn::GradientReadyHook, a module at a time). The parameters are put into buckets in the order they are reported; a
// bucket of bucket_bytes or more is handed to a communication thread at once, which sums it over the processes while the
// main thread computes the next modules' gradients. finish() puts the trained parameters nobody reported (LoRA adapters,
// a model without reports) into the last buckets in their own order and waits for every sum.
//
// Every process runs the same backward pass, so every process forms the same buckets in the same order, and the
// collectives pair up. The sum of each element is the rank-order sum whatever the buckets, so the gradients are
// bit-identical with or without the overlap and at any bucket size.
//
// Gradients in host memory are summed in place, one sum per run of memory the bucket covers: gradients of one arena with
// nothing between them but its alignment padding (zeroed at allocation) make one run, padding included (a module's
// parameters lie together; a block's modules are reported in another order than they lie). Gradients in device memory
// are summed in place the same way where the communicator sums device memory (NCCL, Communicator::sums_device_memory):
// each run's sum is queued on the device behind the backward pass's work so far, and finish() makes the backend's later
// work (clipping, the optimizer) wait for them; no thread is needed. Otherwise they are staged through a host buffer:
// copied out when the bucket is handed over, back in finish().
//
// Without `background` (a communicator that can neither be called from another thread nor queue device sums, or
// trainer.overlap_gradient_sum false) every bucket is summed at once on the calling thread: after the backward, when
// nothing was reported.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dreambooth/core/arena.hpp"
#include "dreambooth/core/error.hpp"
#include "dreambooth/nn/param.hpp"
#include "dreambooth/train/communicator.hpp"

namespace dreambooth::train {

template <class B>
class GradientSum {
 public:
  // What the last step's sum did.
  struct Stats {
    std::size_t buckets = 0;                  // buckets summed
    std::size_t started_during_backward = 0;  // of them, handed over before finish() (while the backward still ran)
    std::size_t staged = 0;                   // of them, staged through a host buffer
    std::size_t runs = 0;                     // sums (one per run of memory; a staged bucket is one run)
    std::size_t bytes = 0;                    // gradient bytes summed
    double waited_seconds = 0;                // how long finish() took: what the overlap did not hide (all of it without);
                                              // with device sums, the host's time to queue them (the device waits unseen)
  };

  // bucket_bytes: a bucket is handed over once it holds at least this much (a parameter larger than that is a bucket of
  // its own). background: sums overlapped with the backward pass, on a thread of their own (queued on the device, where
  // the communicator sums device memory).
  // bf16_wire: the sums sent as bfloat16 (Communicator::sum_in_rank_order_bf16; the gradients end rounded to bf16).
  GradientSum(B& b, Communicator& comm, std::size_t bucket_bytes, bool background, bool bf16_wire = false)
      : b_(&b),
        comm_(&comm),
        bucket_floats_(std::max<std::size_t>(1, bucket_bytes / sizeof(float))),
        background_(background),
        device_(comm.sums_device_memory()),
        thread_(background && !device_),
        bf16_wire_(bf16_wire) {
    if (thread_) worker_ = std::thread([this] { work(); });
  }
  // Stops the communication thread after the sum it is running (one whose finish() was never called, as when the
  // backward pass threw, leaves the rest of its buckets unsummed: the run is stopping).
  ~GradientSum() {
    if (!thread_) return;
    {
      std::lock_guard lock(mutex_);
      queue_.clear();
      stopping_ = true;
    }
    wake_worker_.notify_all();
    worker_.join();
  }
  GradientSum(const GradientSum&) = delete;
  GradientSum& operator=(const GradientSum&) = delete;

  // Whether buckets are summed while the backward pass runs (on a thread, or queued on the device).
  bool background() const { return background_; }
  // Whether the communicator sums the gradients in device memory (no host staging).
  bool on_device() const { return device_; }
  // Whether the gradients go through host buffers: device memory summed by a communicator of host memory.
  bool staged() const { return !host_memory() && !device_; }

  // The step's last backward pass on this process is about to run; `trained` are the parameters whose gradients are
  // summed (the optimizer's, in its order). Gradients reported before finish() must be final.
  void begin(std::span<nn::Param<B>* const> trained) {
    DB_CHECK(!active_, "gradient sum: begin() twice without finish()");
    trained_.assign(trained.begin(), trained.end());
    index_.clear();
    for (std::size_t i = 0; i < trained_.size(); ++i) index_.emplace(trained_[i], i);
    reported_.assign(trained_.size(), false);
    open_.clear();
    open_floats_ = 0;
    stats_ = Stats{};
    active_ = true;
  }

  // For the backward pass: each parameter whose gradient it has finished. Others than the trained ones are ignored.
  nn::GradientReadyHook<B> hook() {
    return [this](nn::Param<B>& p) { ready(p); };
  }

  void ready(nn::Param<B>& param) {
    DB_CHECK(active_, "gradient sum: a gradient reported outside begin() / finish()");
    const auto found = index_.find(&param);
    if (found == index_.end()) return;
    const auto i = found->second;
    DB_CHECK(!reported_[i], "gradient sum: a parameter's gradient reported twice in one backward pass");
    reported_[i] = true;
    open_.push_back(i);
    open_floats_ += static_cast<std::size_t>(param.grad.numel());
    if (open_floats_ >= bucket_floats_) hand_over(true);
  }

  // Sums what was not reported, waits for every bucket's sum (device sums: makes the backend's later work wait for them)
  // and puts the staged ones back. Rethrows the communication thread's error.
  void finish() {
    DB_CHECK(active_, "gradient sum: finish() without begin()");
    active_ = false;
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < trained_.size(); ++i) {
      if (reported_[i]) continue;
      open_.push_back(i);
      open_floats_ += static_cast<std::size_t>(trained_[i]->grad.numel());
      if (open_floats_ >= bucket_floats_) hand_over(false);
    }
    if (!open_.empty()) hand_over(false);
    std::exception_ptr error;
    if (device_) comm_->wait_device_sums();
    if (thread_) {
      std::unique_lock lock(mutex_);
      worker_idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
      error = std::exchange(error_, nullptr);
    }
    stats_.waited_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (auto& bucket : done_) {
      if (bucket.staging.empty()) continue;
      if (!error) unstage(bucket);
      spare_.push_back(std::move(bucket.staging));  // for the next step's staged buckets: no fresh pages each step
    }
    done_.clear();
    if (error) std::rethrow_exception(error);
  }

  const Stats& last() const { return stats_; }

 private:
  struct Bucket {
    std::vector<std::size_t> params;     // indices into trained_
    std::vector<std::span<float>> runs;  // what is summed, in order: runs of the gradients themselves, or `staging`
    std::vector<float> staging;
  };

  // The open bucket to the communication thread (or summed now, without one).
  void hand_over(bool during_backward) {
    Bucket bucket;
    bucket.params = std::move(open_);
    open_.clear();
    const auto floats = open_floats_;
    open_floats_ = 0;
    bucket.runs = runs_in_memory(bucket.params);
    if (bucket.runs.empty()) {  // staged: copied to host memory in the bucket's order
      if (!spare_.empty()) bucket.staging = std::move(spare_.back()), spare_.pop_back();
      bucket.staging.resize(floats);
      std::size_t at = 0;
      for (const auto i : bucket.params) {
        const auto n = static_cast<std::size_t>(trained_[i]->grad.numel());
        b_->copy_to_host(bucket.staging.data() + at, nn::ptr(trained_[i]->grad), n * sizeof(float));
        at += n;
      }
      bucket.runs = {std::span<float>(bucket.staging)};
      ++stats_.staged;
    }
    ++stats_.buckets;
    stats_.runs += bucket.runs.size();
    stats_.started_during_backward += during_backward;
    stats_.bytes += floats * sizeof(float);
    if (device_) {  // queued on the device, in place
      for (const auto run : bucket.runs) comm_->enqueue_device_sum(run, bf16_wire_);
      return;
    }
    done_.push_back(std::move(bucket));
    const auto* runs = &done_.back().runs;  // done_'s elements stay where they are as it grows
    if (!thread_) {
      sum(*runs);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(runs);
    }
    wake_worker_.notify_one();
  }

  void sum(const std::vector<std::span<float>>& runs) {
    for (const auto run : runs) {
      if (bf16_wire_)
        comm_->sum_in_rank_order_bf16(run);
      else
        comm_->sum_in_rank_order(run);
    }
  }

  // Where the bucket's gradients lie in memory: taken in the optimizer's order (an arena's order), the runs of gradients
  // with nothing between them but an arena's alignment padding (zeroed at allocation and never written: summing it
  // changes nothing). Not by address: the processes' allocations need not lie in the same order, and every process must
  // sum the same runs in the same order. Empty where the memory is a device's and the communicator sums host memory.
  std::vector<std::span<float>> runs_in_memory(const std::vector<std::size_t>& params) const {
    std::vector<std::span<float>> runs;
    if (staged()) return runs;
    std::vector<std::size_t> in_order = params;
    std::sort(in_order.begin(), in_order.end());
    constexpr auto kPadding = static_cast<std::ptrdiff_t>(Arena<B>::kAlignment / sizeof(float));
    const Tensor<B>* last = nullptr;
    for (const auto i : in_order) {
      const auto& g = trained_[i]->grad;
      float* start = nn::ptr(g);
      const auto n = static_cast<std::size_t>(g.numel());
      const auto gap = last ? start - (runs.back().data() + runs.back().size()) : kPadding;
      if (gap >= 0 && gap < kPadding && g.shares_buffer_with(*last))
        runs.back() = std::span<float>(runs.back().data(), start + n);
      else
        runs.emplace_back(start, n);
      last = &g;
    }
    return runs;
  }

  void unstage(const Bucket& bucket) {
    std::size_t at = 0;
    for (const auto i : bucket.params) {
      const auto n = static_cast<std::size_t>(trained_[i]->grad.numel());
      b_->copy_to_device(nn::ptr(trained_[i]->grad), bucket.staging.data() + at, n * sizeof(float));
      at += n;
    }
  }

  static constexpr bool host_memory() {
    if constexpr (requires { B::host_memory; })
      return B::host_memory;
    else
      return false;
  }

  // The communication thread: sums the buckets in the order they were handed over. After an error it sums nothing more
  // (finish() rethrows it; the run stops).
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_worker_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      const auto* runs = queue_.front();
      queue_.pop_front();
      busy_ = true;
      const bool failed = error_ != nullptr;
      lock.unlock();
      std::exception_ptr error;
      if (!failed) {
        try {
          sum(*runs);
        } catch (...) {
          error = std::current_exception();
        }
      }
      lock.lock();
      if (error) error_ = error;
      busy_ = false;
      if (queue_.empty()) worker_idle_.notify_all();
    }
  }

  B* b_;
  Communicator* comm_;
  std::size_t bucket_floats_;
  bool background_;  // buckets summed while the backward pass runs
  bool device_;      // queued on the device by the communicator
  bool thread_;      // summed on worker_
  bool bf16_wire_;

  // the step being summed (main thread only)
  bool active_ = false;
  std::vector<nn::Param<B>*> trained_;
  std::unordered_map<const nn::Param<B>*, std::size_t> index_;
  std::vector<bool> reported_;
  std::vector<std::size_t> open_;  // the bucket being filled
  std::size_t open_floats_ = 0;
  std::deque<Bucket> done_;                // handed over this step
  std::vector<std::vector<float>> spare_;  // staging buffers of earlier steps
  Stats stats_;

  // shared with the communication thread, under mutex_
  std::mutex mutex_;
  std::condition_variable wake_worker_, worker_idle_;
  std::deque<const std::vector<std::span<float>>*> queue_;  // buckets' runs, in done_
  bool busy_ = false, stopping_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace dreambooth::train
