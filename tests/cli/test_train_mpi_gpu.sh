#!/usr/bin/env bash
# Data-parallel training on GPUs under mpirun (label gpu): 2 processes with --device cuda against 1 process at the same
# global batch on the bundled tiny pipeline, fp32 compute: losses at every step and the final weights; the gradient sum
# in small buckets during the backward pass and after it, bit-identical; bf16 on the wire close. With 2 GPUs or more each
# process takes its own and NCCL sums in device memory; with one, both processes share it and the sum goes through host
# memory over MPI (NCCL refuses two processes on one GPU). Skips (exit 77) without a GPU.
# Usage: test_train_mpi_gpu.sh DREAMBOOTH_BINARY TEST_DATA_DIR MPIRUN
source "$(dirname "$0")/common.sh"
bin=$1
model=$2/pipeline/model
mpirun=$3
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
[ "${gpus:-0}" -ge 1 ] || { echo "skipped: no GPU"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
two() { "$mpirun" -np 2 "$bin" train --device cuda "$@" trainer.devices=2; }
if [ "$gpus" -ge 2 ]; then where="in device memory"; else where="through host memory"; fi

"$bin" render-demo-images --output-dir "$work/instance" --count 4 --size 64 2>/dev/null
train=(model.restore_from_path="$model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  "model.data.regularization_prompt=a photo of a thing" model.optim.lr=1e-3 model.data.resolution=64 model.data.num_reg_images=4
  model.data.num_images_per_prompt=1 model.regularization.steps=20 model.use_cached_latents=true model.data.regularization_dir="$work/reg"
  trainer.precision=32 trainer.max_steps=4)
unet=model/unet/diffusion_pytorch_model.safetensors
losses() { grep -o '"loss":[^,]*' "$1" | cut -d: -f2 | tr '\n' ' '; }
loss_gap() { paste <(losses "$1" | tr ' ' '\n') <(losses "$2" | tr ' ' '\n') | awk 'NF == 2 {d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.2e", m}'; }

"$bin" train --device cuda "${train[@]}" trainer.accumulate_grad_batches=2 trainer.output_dir="$work/one" 2>"$work/one.log" ||
  failed "one process: $(tail -n 2 "$work/one.log")"
two "${train[@]}" trainer.output_dir="$work/two" >"$work/two.log" 2>&1 || failed "two processes: $(tail -n 4 "$work/two.log")"
gap=$(loss_gap "$work/one/metrics.jsonl" "$work/two/metrics.jsonl")
grep -q "gradients summed in rank order $where" "$work/two.log" && [ "$(losses "$work/two/metrics.jsonl" | wc -w)" -eq 4 ] &&
  awk -v g="$gap" 'BEGIN {exit !(g <= 1e-6)}' &&
  "$bin" inspect "$work/one/$unet" --compare "$work/two/$unet" --tolerance 1e-6 >"$work/compare" 2>&1 &&
  pass "2 processes on $gpus GPU(s), summed $where: losses within $gap of 1 process's, weights within 1e-6" ||
  failed "2 against 1 process: $(grep -h 'data-parallel\|error' "$work/two.log" | head -n 3); losses $(losses "$work/one/metrics.jsonl") vs $(losses "$work/two/metrics.jsonl"); $(tail -n 2 "$work/compare")"

two "${train[@]}" trainer.gradient_bucket_mb=0.001 trainer.output_dir="$work/overlap" >"$work/overlap.log" 2>&1
two "${train[@]}" trainer.gradient_bucket_mb=0.001 trainer.overlap_gradient_sum=false trainer.output_dir="$work/after" >"$work/after.log" 2>&1
[ "$(losses "$work/two/metrics.jsonl")" = "$(losses "$work/overlap/metrics.jsonl")" ] &&
  [ "$(losses "$work/two/metrics.jsonl")" = "$(losses "$work/after/metrics.jsonl")" ] &&
  cmp -s "$work/two/$unet" "$work/overlap/$unet" && cmp -s "$work/two/$unet" "$work/after/$unet" &&
  pass "1 KiB buckets during the backward pass and after it: losses and weights bit-identical to one bucket's" ||
  failed "buckets: losses $(losses "$work/two/metrics.jsonl") / $(losses "$work/overlap/metrics.jsonl") / $(losses "$work/after/metrics.jsonl"); $(grep -h error "$work/overlap.log" "$work/after.log" | head -n 2)"

two "${train[@]}" trainer.gradient_sum_precision=bf16 trainer.output_dir="$work/bf16" >"$work/bf16.log" 2>&1
gap=$(loss_gap "$work/two/metrics.jsonl" "$work/bf16/metrics.jsonl")
awk -v g="$gap" 'BEGIN {exit !(g > 0 && g <= 1e-4)}' && "$bin" inspect "$work/two/$unet" --compare "$work/bf16/$unet" --tolerance 5e-3 >/dev/null 2>&1 &&
  pass "bf16 on the wire: losses within $gap of the float sum's, weights within 5e-3" ||
  failed "bf16 on the wire: losses $(losses "$work/two/metrics.jsonl") vs $(losses "$work/bf16/metrics.jsonl"); $(grep -h error "$work/bf16.log" | head -n 2)"
finish
