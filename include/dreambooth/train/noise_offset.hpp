// Noise offset (kohya's --noise_offset; diffusers' train_dreambooth.py --offset_noise is the value 0.1):
//   noise[n, c, h, w] += offset * z[n, c],   z ~ N(0, 1), one per sample and channel,
// so that the model learns to shift an image's mean brightness and colour. z is element n * C + c of the counter-based
// stream (seed, stream): the same on every backend and on a resumed run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dreambooth/core/rng.hpp"
#include "dreambooth/nn/modules.hpp"

namespace dreambooth::train {

// noise[N, C, ...] in place.
template <class B>
void add_noise_offset(B& b, Tensor<B>& noise, double offset, std::uint64_t seed, std::uint64_t stream) {
  const auto& s = noise.shape();
  DB_CHECK(s.rank() >= 2, "noise offset: noise ", s.str(), " has no channels");
  const auto channels = s[0] * s[1], plane = noise.numel() / channels;
  std::vector<float> shift(static_cast<std::size_t>(noise.numel()));
  for (std::int64_t k = 0; k < channels; ++k)
    std::fill_n(shift.begin() + k * plane, plane, static_cast<float>(offset) * rng::normal(seed, stream, static_cast<std::uint64_t>(k)));
  nn::accumulate(b, noise, Tensor<B>::from_host(b, s, shift));
}

}  // namespace dreambooth::train
