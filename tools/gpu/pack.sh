#!/usr/bin/env bash
# Builds the CUDA programs here and packs them, with the non-CUDA shared libraries they link, into .gpu/
# (ignored by git) for the device machine, which has the CUDA 13 driver, toolkit and PyTorch's cuDNN /
# cuBLAS but none of the Debian libraries; and the Python wheels that machine lacks for the diffusers side of the
# benchmark (benchmarks/peer/torch_train_step.py). Usage: bash tools/gpu/pack.sh   (then carry .gpu; see run.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${BUILD_DIR:-$root/build-gpu}
bash tools/install-deps.sh
# Portable x86-64 code (no -march=native): the device machine's processor may lack this one's AVX-512. Without oneDNN
# and MPI, which run.sh does not use (the CPU side of the parity checks is fp32): their libraries would not fit in what
# a device call carries.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDREAMBOOTH_CUDA=ON -DDREAMBOOTH_WERROR=ON -DDREAMBOOTH_NATIVE=OFF \
  -DDREAMBOOTH_ONEDNN=OFF -DDREAMBOOTH_MPI=OFF -DDREAMBOOTH_NCCL=OFF >/dev/null
targets=(test_cuda_parity test_cuda_ops test_cuda_backend_ops test_cuda_models dreambooth_cli train_step_bench test_clip_tokenizer)
help=$(cmake --build "$build" --target help)
available=()
for t in "${targets[@]}"; do
  if grep -qx "\.\.\. $t" <<<"$help"; then available+=("$t"); fi
done
cmake --build "$build" -j"$(nproc)" --target "${available[@]}"

stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib"
find "$build" -type f -executable \( -name 'test_cuda_*' -o -name 'dreambooth' -o -name 'train_step_bench' \) -exec cp {} "$stage/bin/" \;
cp "$build"/backends/cuda/libdreambooth_cuda.so* "$stage/lib/"
# Shared libraries that are neither the C/C++ runtime nor CUDA's (those come from the device machine).
for f in "$stage"/bin/* "$stage"/lib/*; do
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcu|/libcudnn|/libnv' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
# ICU's data library (30 MB) replaced by an empty data package: the tokenizer needs none of its data
# (tools/gpu/icudata_stub.c), which its tests, run against the stand-in, check here.
icudata=$(basename "$(find "$stage/lib" -name 'libicudata.so.*')")
if [ -n "$icudata" ]; then
  major=${icudata#libicudata.so.}
  gcc -shared -fPIC -O2 -Wl,-soname,"$icudata" -DICU_DATA_SYMBOL="icudt${major}_dat" tools/gpu/icudata_stub.c -o "$stage/lib/$icudata"
  LD_LIBRARY_PATH="$stage/lib" "$build/tests/test_clip_tokenizer" >/dev/null ||
    { echo "pack.sh: the CLIP tokenizer's tests fail with the stand-in ICU data" >&2; exit 1; }
fi
strip --strip-unneeded "$stage"/bin/* "$stage"/lib/*
mkdir -p .gpu
tar -C "$stage" -cf - bin lib | xz -9e -T2 >.gpu/programs.tar.xz
rm -rf "$stage"
# diffusers is not on the device machine; its other needs are (huggingface_hub 1.33, safetensors 0.8, PyTorch 2.11),
# except importlib_metadata. Wheels for its Python 3.12. peft too, which run.sh installs only where the machine's is
# older than diffusers' minimum for LoRA (0.17).
rm -rf .gpu/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  -d .gpu/wheels diffusers==0.42.1 importlib_metadata==8.7.0 peft==0.21.2
ls -la .gpu/programs.tar.xz .gpu/wheels
# The device tool carries at most 64 MiB: the checkout's tracked files and .gpu together.
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -cb .gpu | tail -1 | cut -f1)
echo "checkout $((tree / 1048576)) MiB + .gpu $((carried / 1048576)) MiB of the 64 MiB a device call carries"
if [ $((tree + carried)) -gt $((64 * 1048576)) ]; then echo "pack.sh: too large to carry" >&2; exit 1; fi
echo "the repository root must be $root on the device too (run.sh links it there): the tests read fixtures by absolute path"
