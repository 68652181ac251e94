#!/usr/bin/env bash
# Builds the CUDA programs here and packs them, with the non-CUDA shared libraries they link, into .gpu/
# (ignored by git) for the device machine, which has the CUDA 13 driver, toolkit and PyTorch's cuDNN /
# cuBLAS but none of the Debian libraries. Usage: bash tools/gpu/pack.sh   (then carry .gpu; see run.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${BUILD_DIR:-$root/build-gpu}
bash tools/install-deps.sh
# Portable x86-64 code (no -march=native): the device machine's processor may lack this one's AVX-512.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDREAMBOOTH_CUDA=ON -DDREAMBOOTH_WERROR=ON -DDREAMBOOTH_NATIVE=OFF >/dev/null
targets=(test_cuda_parity test_cuda_ops test_cuda_models dreambooth_cli train_step_bench unet_bench sampling_bench)
help=$(cmake --build "$build" --target help)
available=()
for t in "${targets[@]}"; do
  if grep -qx "\.\.\. $t" <<<"$help"; then available+=("$t"); fi
done
cmake --build "$build" -j"$(nproc)" --target "${available[@]}"

stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib"
find "$build" -type f -executable \( -name 'test_cuda_*' -o -name 'dreambooth' -o -name '*_bench' \) -exec cp {} "$stage/bin/" \;
cp "$build"/backends/cuda/libdreambooth_cuda.so* "$stage/lib/"
# Shared libraries that are neither the C/C++ runtime nor CUDA's (those come from the device machine).
for f in "$stage"/bin/* "$stage"/lib/*; do
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcu|/libcudnn|/libnv' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
mkdir -p .gpu
tar -C "$stage" -cJf .gpu/programs.tar.xz bin lib
rm -rf "$stage"
ls -la .gpu/programs.tar.xz
echo "the repository root must be $root on the device too (run.sh links it there): the tests read fixtures by absolute path"
