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
// A bucket whose gradients lie back to back in host memory (the parameter arena, in the backward's reverse order) is
// summed in place; any other (padding between tensors, device memory) is staged through a host buffer: copied out when
// the bucket is handed over, back in finish().
//
// Without `background` (a communicator that cannot be called from another thread, or trainer.overlap_gradient_sum
// false) every bucket is summed at once on the calling thread: after the backward, when nothing was reported.
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
    std::size_t bytes = 0;                    // gradient bytes summed
    double waited_seconds = 0;                // finish(): time spent waiting for the sums (what the overlap did not hide)
  };

  // bucket_bytes: a bucket is handed over once it holds at least this much (a parameter larger than that is a bucket of
  // its own). background: sums on a thread of their own, overlapped with the backward pass.
  GradientSum(B& b, Communicator& comm, std::size_t bucket_bytes, bool background)
      : b_(&b), comm_(&comm), bucket_floats_(std::max<std::size_t>(1, bucket_bytes / sizeof(float))), background_(background) {
    if (background_) worker_ = std::thread([this] { work(); });
  }
  // Stops the communication thread after the sum it is running (one whose finish() was never called, as when the
  // backward pass threw, leaves the rest of its buckets unsummed: the run is stopping).
  ~GradientSum() {
    if (!background_) return;
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

  bool background() const { return background_; }

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

  // Sums what was not reported, waits for every bucket's sum and puts the staged ones back. Rethrows the communication
  // thread's error.
  void finish() {
    DB_CHECK(active_, "gradient sum: finish() without begin()");
    active_ = false;
    for (std::size_t i = 0; i < trained_.size(); ++i) {
      if (reported_[i]) continue;
      open_.push_back(i);
      open_floats_ += static_cast<std::size_t>(trained_[i]->grad.numel());
      if (open_floats_ >= bucket_floats_) hand_over(false);
    }
    if (!open_.empty()) hand_over(false);
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr error;
    if (background_) {
      std::unique_lock lock(mutex_);
      worker_idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
      error = std::exchange(error_, nullptr);
    }
    stats_.waited_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (auto& bucket : done_) {
      if (error) break;
      if (!bucket.staging.empty()) unstage(bucket);
    }
    done_.clear();
    if (error) std::rethrow_exception(error);
  }

  const Stats& last() const { return stats_; }

 private:
  struct Bucket {
    std::vector<std::size_t> params;  // indices into trained_
    std::span<float> data;            // what is summed: the gradients themselves, or `staging`
    std::vector<float> staging;
  };

  // The open bucket to the communication thread (or summed now, without one).
  void hand_over(bool during_backward) {
    Bucket bucket;
    bucket.params = std::move(open_);
    open_.clear();
    const auto floats = open_floats_;
    open_floats_ = 0;
    if (float* start = contiguous_start(bucket.params)) {
      bucket.data = std::span<float>(start, floats);
    } else {  // staged: copied to host memory in the bucket's order
      bucket.staging.resize(floats);
      std::size_t at = 0;
      for (const auto i : bucket.params) {
        const auto n = static_cast<std::size_t>(trained_[i]->grad.numel());
        b_->copy_to_host(bucket.staging.data() + at, nn::ptr(trained_[i]->grad), n * sizeof(float));
        at += n;
      }
      bucket.data = std::span<float>(bucket.staging);
      ++stats_.staged;
    }
    ++stats_.buckets;
    stats_.started_during_backward += during_backward;
    stats_.bytes += floats * sizeof(float);
    done_.push_back(std::move(bucket));
    const auto data = done_.back().data;  // a span into done_'s element: its storage does not move with the deque
    if (!background_) {
      comm_->sum_in_rank_order(data);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(data);
    }
    wake_worker_.notify_one();
  }

  // The first gradient of a bucket whose gradients fill one stretch of host memory without gaps; null otherwise.
  float* contiguous_start(const std::vector<std::size_t>& params) const {
    if constexpr (requires { B::host_memory; }) {
      if constexpr (B::host_memory) {
        std::vector<std::pair<float*, std::size_t>> ranges;  // (first gradient value, count), by address
        for (const auto i : params) ranges.emplace_back(nn::ptr(trained_[i]->grad), static_cast<std::size_t>(trained_[i]->grad.numel()));
        std::sort(ranges.begin(), ranges.end());
        for (std::size_t k = 1; k < ranges.size(); ++k)
          if (ranges[k - 1].first + ranges[k - 1].second != ranges[k].first) return nullptr;
        return ranges.empty() ? nullptr : ranges.front().first;
      }
    }
    return nullptr;
  }

  void unstage(const Bucket& bucket) {
    std::size_t at = 0;
    for (const auto i : bucket.params) {
      const auto n = static_cast<std::size_t>(trained_[i]->grad.numel());
      b_->copy_to_device(nn::ptr(trained_[i]->grad), bucket.staging.data() + at, n * sizeof(float));
      at += n;
    }
  }

  // The communication thread: sums the buckets in the order they were handed over. After an error it sums nothing more
  // (finish() rethrows it; the run stops).
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_worker_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      const auto data = queue_.front();
      queue_.pop_front();
      busy_ = true;
      const bool failed = error_ != nullptr;
      lock.unlock();
      std::exception_ptr error;
      if (!failed) {
        try {
          comm_->sum_in_rank_order(data);
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
  bool background_;

  // the step being summed (main thread only)
  bool active_ = false;
  std::vector<nn::Param<B>*> trained_;
  std::unordered_map<const nn::Param<B>*, std::size_t> index_;
  std::vector<bool> reported_;
  std::vector<std::size_t> open_;  // the bucket being filled
  std::size_t open_floats_ = 0;
  std::deque<Bucket> done_;  // handed over this step
  Stats stats_;

  // shared with the communication thread, under mutex_
  std::mutex mutex_;
  std::condition_variable wake_worker_, worker_idle_;
  std::deque<std::span<float>> queue_;
  bool busy_ = false, stopping_ = false;
  std::exception_ptr error_;
  std::thread worker_;
};

}  // namespace dreambooth::train
