#!/usr/bin/env bash
# The demo (tools/demo.sh, docs/demo.md), shortened: the bundled pretrained model (examples/demo-model) fine-tuned with
# prior preservation as the demo does, with fewer class pictures and samples and no run without prior preservation;
# demo-report --check passes only if the subject's samples came closer to the instance photos (the fidelity gain,
# measured by the run) by 0.1 or more. Then the report's files, and a check that fails on a run that learned nothing
# (the base model's samples in place of the fine-tuned model's).
# Usage: test_demo.sh DREAMBOOTH_BINARY PROJECT_SOURCE_DIR
source "$(dirname "$0")/common.sh"
bin=$1
cd "$2"

if DEMO_SAMPLES=4 DEMO_COMPARE=0 DEMO_CHECK=1 bash tools/demo.sh "$bin" "$work/demo" trainer.max_steps=800 \
  model.data.num_reg_images=8 model.validation.every_n_steps=0 trainer.checkpoint_every_n_steps=0 >"$work/log" 2>&1; then
  pass "the shortened demo's fidelity rose: $(grep "fidelity gain" "$work/log" | sed 's/.*(fidelity/(fidelity/')"
else
  failed "the shortened demo: $(tail -n 5 "$work/log")"
fi
for f in report.json grid.png loss.png; do
  [ -s "$work/demo/$f" ] && pass "the demo wrote $f" || failed "the demo wrote no $f"
done
grep -q '"fidelity_gain"' "$work/demo/report.json" && pass "report.json has the fidelity gain" || failed "report.json: $(head -c 300 "$work/demo/report.json")"

# the check can fail: with the base model's samples as the "fine-tuned" ones, nothing was learned
rm -rf "$work/demo/samples/prior" && cp -r "$work/demo/samples/base" "$work/demo/samples/prior"
"$bin" demo-report --demo-dir "$work/demo" --check >"$work/nothing.log" 2>&1
status=$?
[ $status -eq 1 ] && grep -q "check failed: fidelity gain" "$work/nothing.log" && pass "demo-report --check fails when nothing was learned" ||
  failed "demo-report --check on unchanged samples: exit $status, $(tail -n 2 "$work/nothing.log")"
finish
