#!/usr/bin/env bash
# Data-parallel training under mpirun on the bundled tiny pipeline (include/dreambooth/train/communicator.hpp): 2 processes
# against 1 at the same global batch (losses at every step, final weights), the gradient sum overlapped with the backward
# pass or not (bit-identical), bf16 on the wire (close), class images shared out, a 2-process run resumed by 1 process,
# a killed process and a failing one stopping the run with the last checkpoint intact, and the process-count errors.
# Every fault is injected at a named place (DREAMBOOTH_FAULT, DREAMBOOTH_FAULT_RANK), nothing depends on timing.
# Usage: test_train_mpi.sh DREAMBOOTH_BINARY TEST_DATA_DIR MPIRUN
source "$(dirname "$0")/common.sh"
bin=$1
model=$2/pipeline/model
mpirun=$3
# CI containers run as root; the shared-memory transport without ptrace-based single copies (refused in containers);
# one OpenMP thread per process everywhere, so that the 1- and 2-process runs add up their numbers alike
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
two() { "$mpirun" -np 2 "$bin" train "$@" trainer.devices=2; }

"$bin" render-demo-images --output-dir "$work/instance" --count 4 --size 64 2>/dev/null
base=(model.restore_from_path="$model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  "model.data.regularization_prompt=a photo of a thing" model.optim.lr=1e-3 model.data.resolution=64 model.data.num_reg_images=4
  model.data.num_images_per_prompt=1 model.regularization.steps=20 model.use_cached_latents=true trainer.checkpoint_every_n_steps=2)
unet=model/unet/diffusion_pytorch_model.safetensors
steps() { grep -o '"step":[0-9]*' "$1" | cut -d: -f2 | tr '\n' ' '; }
losses() { grep -o '"loss":[^,]*' "$1" | cut -d: -f2 | tr '\n' ' '; }
# the largest relative difference between two runs' losses, step by step
loss_gap() { paste <(losses "$1" | tr ' ' '\n') <(losses "$2" | tr ' ' '\n') | awk 'NF == 2 {d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.2e", m}'; }
close() { "$bin" inspect "$1" --compare "$2" --tolerance 1e-6 >"$work/compare" 2>&1; }

# 1. The class images and the latent cache entries shared out: 2 processes make the 4 missing images (2 each) and encode
#    the 8 entries, equal to one process's bit for bit.
cp -r "$work/instance" "$work/instance-two"
"$bin" train "${base[@]}" model.data.regularization_dir="$work/reg-one" trainer.max_steps=1 trainer.output_dir="$work/reg-one-out" \
  2>"$work/reg-one.log" || failed "one process sampling: $(tail -n 2 "$work/reg-one.log")"
two "${base[@]}" model.data.instance_dir="$work/instance-two" model.data.regularization_dir="$work/reg-two" trainer.max_steps=1 \
  trainer.output_dir="$work/reg-two-out" >"$work/reg-two.log" 2>&1 || failed "two processes sampling: $(tail -n 4 "$work/reg-two.log")"
same=0
for f in "$work"/reg-one/*.png; do cmp -s "$f" "$work/reg-two/$(basename "$f")" && same=$((same + 1)); done
[ "$same" -eq 4 ] && [ "$(ls "$work/reg-two" | wc -l)" -eq 4 ] && grep -q "regularization images: 2 of this process's 2 (4 made by 2 processes)" "$work/reg-two.log" &&
  pass "class images: rank 0 made 2 of the 4, the folder holds 4 equal to one process's, bit for bit" ||
  failed "class images: $same of 4 equal, $(ls "$work/reg-two" | tr '\n' ' '); $(grep 'regularization images' "$work/reg-two.log" | head -n 2)"
same=0
for f in "$work"/instance_latents/*.safetensors "$work"/reg-one_latents/*.safetensors; do
  other=$(dirname "$f" | sed -e 's/instance_latents$/instance-two_latents/' -e 's/reg-one_latents$/reg-two_latents/')/$(basename "$f")
  "$bin" inspect "$f" --compare "$other" --tolerance 0 >/dev/null 2>&1 && same=$((same + 1))
done
[ "$same" -eq 8 ] && grep -q "instance latent cache (safetensors, .*): 4 encoded, 0 reused (rebuilt) by 2 processes" "$work/reg-two.log" &&
  grep -q "regularization latent cache (safetensors, .*): 4 encoded, 0 reused (rebuilt) by 2 processes" "$work/reg-two.log" &&
  pass "latent caches: 8 entries encoded by 2 processes, each equal to one process's" ||
  failed "latent caches: $same of 8 equal; $(grep 'latent cache' "$work/reg-two.log" | head -n 2)"

# 2. 2 processes x 1 micro-batch against 1 process x 2 (the same global batch, micro-batches numbered alike).
train=("${base[@]}" model.data.regularization_dir="$work/reg-one" trainer.max_steps=4)
"$bin" train "${train[@]}" trainer.accumulate_grad_batches=2 trainer.output_dir="$work/one" 2>"$work/one.log" || failed "one process: $(tail -n 2 "$work/one.log")"
two "${train[@]}" trainer.output_dir="$work/two" >"$work/two.log" 2>&1 || failed "two processes: $(tail -n 4 "$work/two.log")"
gap=$(loss_gap "$work/one/metrics.jsonl" "$work/two/metrics.jsonl")
[ "$(steps "$work/two/metrics.jsonl")" = "1 2 3 4 " ] && [ "$(losses "$work/one/metrics.jsonl" | cut -d' ' -f1)" = "$(losses "$work/two/metrics.jsonl" | cut -d' ' -f1)" ] &&
  awk -v g="$gap" 'BEGIN {exit !(g <= 1e-6)}' && grep -q "data-parallel: 2 processes (MPI" "$work/two.log" &&
  [ "$(grep -c '^train: step 4/4' "$work/two.log")" -eq 1 ] &&
  pass "2 processes: step 1's loss equal bit for bit, every step's within $gap of 1 process's; one process logs" ||
  failed "2 against 1 process: losses $(losses "$work/one/metrics.jsonl") vs $(losses "$work/two/metrics.jsonl") (gap $gap); $(grep -c '^train: step 4/4' "$work/two.log") progress lines"
close "$work/one/$unet" "$work/two/$unet" && pass "2 processes: final weights within 1e-6 of 1 process's: $(tail -n 2 "$work/compare" | head -n 1)" ||
  failed "2 against 1 process, final weights: $(cat "$work/compare" | tail -n 3)"
# 2 x 2 micro-batches against 1 x 4
"$bin" train "${train[@]}" trainer.max_steps=2 trainer.accumulate_grad_batches=4 trainer.output_dir="$work/one-4" 2>"$work/one-4.log"
two "${train[@]}" trainer.max_steps=2 trainer.accumulate_grad_batches=2 trainer.output_dir="$work/two-4" >"$work/two-4.log" 2>&1
gap=$(loss_gap "$work/one-4/metrics.jsonl" "$work/two-4/metrics.jsonl")
awk -v g="$gap" 'BEGIN {exit !(g <= 1e-6)}' && [ "$(steps "$work/two-4/metrics.jsonl")" = "1 2 " ] && close "$work/one-4/$unet" "$work/two-4/$unet" &&
  pass "2 processes x 2 micro-batches against 1 x 4: losses within $gap, weights within 1e-6" ||
  failed "2 x 2 against 1 x 4: $(losses "$work/one-4/metrics.jsonl") vs $(losses "$work/two-4/metrics.jsonl"); $(tail -n 2 "$work/compare")"

# 2b. The gradient sum in 1 KiB buckets started during the backward pass (dozens of them in the tiny UNet), and after it
#     (trainer.overlap_gradient_sum=false): losses and weights bit-identical to section 2's run (its one 25 MiB bucket).
two "${train[@]}" trainer.gradient_bucket_mb=0.001 trainer.output_dir="$work/overlap" >"$work/overlap.log" 2>&1 ||
  failed "small buckets: $(tail -n 4 "$work/overlap.log")"
two "${train[@]}" trainer.gradient_bucket_mb=0.001 trainer.overlap_gradient_sum=false trainer.output_dir="$work/after" >"$work/after.log" 2>&1 ||
  failed "no overlap: $(tail -n 4 "$work/after.log")"
grep -q "in buckets of 0.001 MiB during the backward pass" "$work/overlap.log" && grep -q "in buckets of 0.001 MiB after the backward pass" "$work/after.log" &&
  [ "$(losses "$work/two/metrics.jsonl")" = "$(losses "$work/overlap/metrics.jsonl")" ] &&
  [ "$(losses "$work/two/metrics.jsonl")" = "$(losses "$work/after/metrics.jsonl")" ] &&
  cmp -s "$work/two/$unet" "$work/overlap/$unet" && cmp -s "$work/two/$unet" "$work/after/$unet" &&
  [ "$(grep -c '"gradient_sum_wait_s"' "$work/overlap/metrics.jsonl")" -eq 4 ] &&
  pass "gradient sum in 1 KiB buckets during the backward pass, and after it: losses and weights bit-identical to one bucket's" ||
  failed "overlap: $(grep -h 'data-parallel' "$work/overlap.log" "$work/after.log"); losses $(losses "$work/two/metrics.jsonl") / $(losses "$work/overlap/metrics.jsonl") / $(losses "$work/after/metrics.jsonl")"

# 2c. bf16 on the wire: the same step 1 loss (computed before any sum), later ones close to the float sum's run, and the
#     weights too, but not equal to them (the gradients were rounded to bf16).
two "${train[@]}" trainer.gradient_sum_precision=bf16 trainer.output_dir="$work/bf16" >"$work/bf16.log" 2>&1 ||
  failed "bf16 on the wire: $(tail -n 4 "$work/bf16.log")"
gap=$(loss_gap "$work/two/metrics.jsonl" "$work/bf16/metrics.jsonl")
"$bin" inspect "$work/two/$unet" --compare "$work/bf16/$unet" --tolerance 5e-3 >"$work/compare-bf16" 2>&1
weights_close=$?
grep -q "gradients summed in rank order, in buckets of 25 MiB during the backward pass, sent as bf16" "$work/bf16.log" &&
  [ "$(losses "$work/two/metrics.jsonl" | cut -d' ' -f1)" = "$(losses "$work/bf16/metrics.jsonl" | cut -d' ' -f1)" ] &&
  awk -v g="$gap" 'BEGIN {exit !(g > 0 && g <= 1e-4)}' && [ $weights_close -eq 0 ] && ! cmp -s "$work/two/$unet" "$work/bf16/$unet" &&
  pass "bf16 on the wire: step 1's loss equal, the rest within $gap of the float sum's, weights within 5e-3 and not equal: $(tail -n 2 "$work/compare-bf16" | head -n 1)" ||
  failed "bf16 on the wire: losses $(losses "$work/two/metrics.jsonl") vs $(losses "$work/bf16/metrics.jsonl") (gap $gap); $(tail -n 2 "$work/compare-bf16")"

# 3. A 2-process run stopped after step 2 and resumed by 1 process continues as the 2-process run does.
two "${train[@]}" trainer.max_steps=2 trainer.output_dir="$work/handover" >"$work/handover.log" 2>&1
"$bin" train "${train[@]}" trainer.accumulate_grad_batches=2 trainer.output_dir="$work/handover" 2>"$work/handover2.log"
gap=$(loss_gap "$work/two/metrics.jsonl" "$work/handover/metrics.jsonl")
grep -q "resumed from .*step-00000002 at step 2" "$work/handover2.log" && [ "$(steps "$work/handover/metrics.jsonl")" = "1 2 3 4 " ] &&
  awk -v g="$gap" 'BEGIN {exit !(g <= 1e-6)}' && close "$work/two/$unet" "$work/handover/$unet" &&
  pass "resumed by 1 process from the 2-process step-2 checkpoint: steps 1..4 once, losses within $gap, weights within 1e-6" ||
  failed "2 then 1 process: $(grep resumed "$work/handover2.log"); steps $(steps "$work/handover/metrics.jsonl"); gap $gap; $(tail -n 2 "$work/compare")"

# 4. Process 1 killed after step 3: mpirun stops process 0 and says which died; the step-2 checkpoint stays; a 2-process
#    resume ends with the uninterrupted run's weights, bit for bit.
DREAMBOOTH_FAULT=kill:step:3 DREAMBOOTH_FAULT_RANK=1 two "${train[@]}" trainer.output_dir="$work/killed" >"$work/killed.log" 2>&1
status=$?
[ $status -ne 0 ] && grep -q "fault injection: SIGKILL at step" "$work/killed.log" && grep -qi "rank 1 .*signal 9" "$work/killed.log" &&
  [ "$(ls "$work/killed/checkpoints")" = "step-00000002" ] && [ ! -e "$work/killed/model" ] &&
  pass "process 1 killed at step 3: the run stops (exit $status), mpirun names rank 1, step-00000002 intact, nothing exported" ||
  failed "kill one process: exit $status, checkpoints $(ls "$work/killed/checkpoints" | tr '\n' ' '); $(grep -i 'rank\|fault' "$work/killed.log" | head -n 3)"
two "${train[@]}" trainer.output_dir="$work/killed" >"$work/killed2.log" 2>&1
grep -q "resumed from .*step-00000002 at step 2" "$work/killed2.log" && cmp -s "$work/two/$unet" "$work/killed/$unet" &&
  pass "resumed with 2 processes: the uninterrupted 2-process run's weights, bit for bit" ||
  failed "resume after the kill: $(grep -E 'resumed|error' "$work/killed2.log" | head -n 2)"

# 5. A process that fails (rank 0's disk full while it writes the step-2 checkpoint) says why and stops the other one;
#    no checkpoint is published half-written.
DREAMBOOTH_FAULT=enospc:unet.safetensors DREAMBOOTH_FAULT_RANK=0 two "${train[@]}" trainer.output_dir="$work/full" >"$work/full.log" 2>&1
status=$?
[ $status -ne 0 ] && grep -q "error (process 0 of 2):.*unet.safetensors" "$work/full.log" && [ -z "$(ls "$work/full/checkpoints" 2>/dev/null)" ] &&
  pass "rank 0's disk full: 'error (process 0 of 2)', both stop (exit $status), no checkpoint published" ||
  failed "a failing process: exit $status, $(grep -i error "$work/full.log" | head -n 2); checkpoints: $(ls "$work/full/checkpoints" 2>/dev/null)"

# 6. The number of processes must be trainer.devices x trainer.num_nodes.
"$bin" train "${train[@]}" trainer.devices=2 trainer.output_dir="$work/e1" 2>"$work/e1.log"
[ $? -eq 1 ] && grep -q "= 2 processes, but this is one process: start it with mpirun -np 2" "$work/e1.log" &&
  pass "trainer.devices=2 in one process: refused, pointing to mpirun -np 2" || failed "devices=2 alone: $(tail -n 1 "$work/e1.log")"
"$mpirun" -np 2 "$bin" train "${train[@]}" trainer.output_dir="$work/e2" >"$work/e2.log" 2>&1
[ $? -ne 0 ] && grep -q "the launcher started 2 processes, but trainer.devices x trainer.num_nodes = 1 x 1 = 1" "$work/e2.log" &&
  pass "mpirun -np 2 with trainer.devices=1: refused by name" || failed "mpirun without devices: $(grep error "$work/e2.log" | head -n 1)"
finish
