#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those missing. Runs apt-get as root (or through sudo).
set -euo pipefail
packages=(build-essential cmake pkg-config libeigen3-dev nlohmann-json3-dev catch2 libopenblas-openmp-dev libicu-dev libpng-dev libjpeg62-turbo-dev libyaml-cpp-dev zlib1g-dev libssl-dev libcli11-dev libopenmpi-dev openmpi-bin libdnnl-dev ocl-icd-opencl-dev)
# ocl-icd-opencl-dev: Debian's oneDNN is built with its OpenCL GPU runtime and its CMake package requires OpenCL; apt
# only recommends it, and --no-install-recommends drops it.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
