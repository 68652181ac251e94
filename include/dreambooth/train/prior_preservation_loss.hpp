// PriorPreservationLoss<Backend>: the DreamBooth loss in fp32.
//   The batch is [instance..., prior (class)...]: prediction and target are split in two halves along the batch and
//   loss = mse(pred_instance, target_instance) + prior_loss_weight * mse(pred_prior, target_prior) (means).
//   Without prior preservation: loss = mse(pred, target).
//   With per-sample instance weights (min-SNR weighting, diffusers' train_dreambooth.py --snr_gamma): the instance term
//   is mean_i(w_i * mse(pred_i, target_i)) over the instance samples i; the prior term stays unweighted, as there.
#pragma once

#include <vector>

#include "dreambooth/nn/modules.hpp"

namespace dreambooth::train {

template <class B>
class PriorPreservationLoss {
 public:
  struct Value {
    double total = 0, instance = 0, prior = 0;
  };

  PriorPreservationLoss(bool with_prior_preservation, double prior_loss_weight) : with_prior_(with_prior_preservation), weight_(prior_loss_weight) {}

  // pred, target [N, ...]; returns the loss and writes dpred (the gradient of the total) into `dpred`. instance_weights:
  // none, or one weight per instance sample.
  Value forward_backward(B& b, const Tensor<B>& pred, const Tensor<B>& target, Tensor<B>& dpred,
                         const std::vector<double>& instance_weights = {}) const {
    DB_CHECK(pred.shape() == target.shape(), "prior-preservation loss: prediction ", pred.shape().str(), " and target ", target.shape().str());
    const auto N = pred.shape()[0];
    DB_CHECK(!with_prior_ || N % 2 == 0, "prior-preservation loss: a batch of ", N, " does not split into instance and prior halves");
    dpred = nn::empty_like(b, pred);
    Value v;
    const auto half = [&](std::int64_t begin, std::int64_t end, double weight) {
      const auto p = pred.slice(begin, end), t = target.slice(begin, end);
      auto g = dpred.slice(begin, end);
      const auto n = static_cast<std::size_t>(p.numel());
      auto loss = Tensor<B>::empty(b, {1});
      b.mse_forward(nn::ptr(loss), nn::ptr(p), nn::ptr(t), n);
      auto dloss = Tensor<B>::from_host(b, {1}, std::vector<float>{static_cast<float>(weight)});
      b.mse_backward(nn::ptr(g), nullptr, nn::ptr(dloss), nn::ptr(p), nn::ptr(t), n);
      return static_cast<double>(loss.to_host()[0]);
    };
    const auto instances = with_prior_ ? N / 2 : N;
    const auto weighted = [&] {  // mean_i(w_i * mse_i), each sample's mse in fp32 as torch's reduction="none" then mean
      DB_CHECK(static_cast<std::int64_t>(instance_weights.size()) == instances, "prior-preservation loss: ", instance_weights.size(),
               " instance weights for ", instances, " instance samples");
      double sum = 0;
      for (std::int64_t i = 0; i < instances; ++i) {
        const double w = instance_weights[static_cast<std::size_t>(i)];
        sum += static_cast<double>(static_cast<float>(half(i, i + 1, w / static_cast<double>(instances)) * w));
      }
      return static_cast<double>(static_cast<float>(sum / static_cast<double>(instances)));
    };
    if (!instance_weights.empty()) {
      v.instance = weighted();
      if (with_prior_) v.prior = half(N / 2, N, weight_);
      v.total =
          with_prior_ ? static_cast<double>(static_cast<float>(v.instance) + static_cast<float>(weight_) * static_cast<float>(v.prior)) : v.instance;
    } else if (with_prior_) {
      v.instance = half(0, N / 2, 1.0);
      v.prior = half(N / 2, N, weight_);
      v.total = static_cast<double>(static_cast<float>(v.instance) + static_cast<float>(weight_) * static_cast<float>(v.prior));
    } else {
      v.total = v.instance = half(0, N, 1.0);
    }
    return v;
  }

 private:
  bool with_prior_;
  double weight_;
};

}  // namespace dreambooth::train
