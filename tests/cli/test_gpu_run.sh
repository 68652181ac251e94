#!/usr/bin/env bash
# tools/gpu/run.sh, the script a session runs once on a lent GPU, checked without one: a pack of stand-in programs (a
# Catch2-like test that passes, one that fails, a train_step_bench and a diffusers peer that print reports like the real
# ones) goes through run.sh. Checks that the parts asked for run and no others, that $OUT receives only summary.json,
# run.log and results.tar.gz (the device tool returns at most 8 files), that the summary holds each test's verdict and
# the ratio of steps per second computed from the two reports, and that a failing test makes the exit status 1.
# Usage: test_gpu_run.sh PROJECT_ROOT. Exits 77 (skipped) without python3 (summary.py's interpreter).
set -u
root=$1
command -v python3 >/dev/null || { echo "skipped: no python3"; exit 77; }
source "$(dirname "$0")/common.sh"

# The stand-ins.
mkdir -p "$work/stage/bin" "$work/stage/lib" "$work/pack"
cat >"$work/stage/bin/test_cuda_alpha" <<'EOF'
#!/bin/sh
echo "All tests passed (12 assertions in 3 test cases)"
EOF
cat >"$work/stage/bin/test_cuda_beta" <<'EOF'
#!/bin/sh
if [ -n "${BETA_FAULTS:-}" ]; then
  if [ -n "${CUDA_LAUNCH_BLOCKING:-}" ]; then
    echo "CUDA backend: group_norm_kernel: an illegal memory access was encountered"
  else
    echo "CUDA backend: copy to host: an illegal memory access was encountered"
  fi
  exit 1
fi
echo "test cases: 4 | 3 passed | 1 failed"
[ -n "${BETA_FAILS:-}" ] && exit 1 || exit 0
EOF
# train_step_bench: the step takes 0.04 s, or 0.03 s with --lora, 0.01 s more with --checkpointing; the profile names
# two ops of two kinds.
cat >"$work/stage/bin/train_step_bench" <<'EOF'
#!/bin/sh
seconds=0.04
case "$*" in *--lora*) seconds=0.03 ;; esac
case "$*" in *--checkpointing*) seconds=$(awk "BEGIN{print $seconds + 0.01}") ;; esac
echo "step 0: $seconds s" >&2
cat <<JSON
{"step_seconds": $seconds, "effective_tflops": $(awk "BEGIN{print 4.82 / $seconds}"), "device_peak_gib": 13.5,
 "device_peak_reserved_gib": 14.0, "loss": 0.5,
 "profile": {"ops": [{"op": "linear_forward", "kind": "gemm", "calls": 10, "seconds": 0.01, "gflop": 2000.0, "gflop_per_second": 200000.0},
                     {"op": "attention_backward", "kind": "attention", "calls": 4, "seconds": 0.02}]}}
JSON
EOF
cat >"$work/peer.py" <<'EOF'
import json, sys
print(json.dumps({"step_seconds": 0.1 if "--lora" not in sys.argv else 0.045, "effective_tflops": 48.2,
                  "peak_allocated_gib": 20.0, "peak_reserved_gib": 22.0, "torch": "stand-in", "diffusers": "stand-in"}))
EOF
chmod +x "$work"/stage/bin/*
tar -C "$work/stage" -cJf "$work/pack/programs.tar.xz" bin lib

# gpu_run NAME [PARTS...]: run.sh with the stand-ins, its $OUT in $work/NAME.
gpu_run() {
  local name=$1
  shift
  mkdir -p "$work/$name"
  PACK=$work/pack UNPACK=$work/unpack-$name WORK=$work/work-$name OUT=$work/$name PEER_SCRIPT=$work/peer.py BUILT_ROOT=$root \
    bash "$root/tools/gpu/run.sh" "$@" >"$work/$name.log" 2>&1
}

gpu_run all tests bench peer
status=$?
if [ "$status" -eq 0 ]; then pass "run.sh exits 0 when every part succeeds"; else failed "run.sh exit status $status ($(tail -n 3 "$work/all.log"))"; fi
files=$(cd "$work/all" && ls | tr '\n' ' ')
if [ "$files" = "results.tar.gz run.log summary.json " ]; then pass "\$OUT holds the three files"; else failed "\$OUT holds: $files"; fi
summary() { python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print($2)" "$work/$1/summary.json" 2>&1; }
got=$(summary all 's["tests"]["test_cuda_alpha"]')
if [ "$got" = "All tests passed (12 assertions in 3 test cases)" ]; then pass "a test's verdict"; else failed "test verdict: $got"; fi
got=$(summary all 's["train_step"]["bf16"]["our_steps_per_second_over_diffusers"], s["train_step"]["bf16_lora4"]["our_steps_per_second_over_diffusers"]')
if [ "$got" = "2.5 1.5" ]; then pass "the ratios of steps per second"; else failed "ratios: $got (expected 2.5 1.5)"; fi
got=$(summary all 's["train_step"]["bf16"]["ours"]["profiled_seconds_by_kind"], s["goals"]')
expected="{'attention': 0.02, 'gemm': 0.01} {'ratio_at_least_1.5': True, 'half_the_bf16_peak': False, 'peak_memory_at_most_16_GB': True}"
if [ "$got" = "$expected" ]; then pass "time by op kind and the goals"; else failed "profile / goals: $got"; fi
got=$(summary all 's["lora"]')
expected="{'bf16_lora4_over_full_step': 0.75, 'bf16_lora32_over_full_step': 0.75, 'bf16_lora4_checkpointing_over_full_step': 0.8, 'bf16_lora4_checkpointing_peak_gib': 13.5}"
if [ "$got" = "$expected" ]; then pass "the LoRA steps against the full ones"; else failed "lora: $got"; fi
got=$(summary all 's["train_step"]["bf16"]["ours"]["profiled_top_ops_tflops"]')
if [ "$got" = "{'linear_forward': 200.0}" ]; then pass "the top ops' TFLOP/s"; else failed "top ops' TFLOP/s: $got"; fi
if tar -tzf "$work/all/results.tar.gz" | grep -q "ours_bf16_lora4_checkpointing.json" && tar -tzf "$work/all/results.tar.gz" | grep -q "peer_bf16.log"; then
  pass "results.tar.gz holds the reports and logs"
else
  failed "results.tar.gz: $(tar -tzf "$work/all/results.tar.gz" | tr '\n' ' ')"
fi

BETA_FAILS=1 gpu_run failing tests
status=$?
if [ "$status" -eq 1 ]; then pass "a failing test makes the exit status 1"; else failed "exit status $status with a failing test"; fi
got=$(summary failing 'sorted(s["tests"]), s["train_step"]')
if [ "$got" = "['test_cuda_alpha', 'test_cuda_beta'] {}" ]; then pass "only the parts asked for ran"; else failed "parts: $got"; fi
if grep -q "test_cuda_beta: exit 1" "$work/failing/run.log"; then pass "run.log names the failure"; else failed "run.log: $(cat "$work/failing/run.log")"; fi
if ! grep -q "launch-blocking" "$work/failing/run.log"; then
  pass "a failing check is not run again"
else
  failed "a failing check ran again: $(cat "$work/failing/run.log")"
fi

BETA_FAULTS=1 gpu_run faulting tests
if grep -q "group_norm_kernel: an illegal memory access" "$work/faulting/run.log"; then
  pass "a fault inside a kernel is run again with synchronous launches, which name the kernel"
else
  failed "fault: $(cat "$work/faulting/run.log")"
fi
finish
