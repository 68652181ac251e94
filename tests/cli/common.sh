# What the CLI test scripts share (sourced): a scratch folder removed on exit, and the pass / fail tally that the
# script's last line turns into its exit status (finish).
set -u
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0 passes=0
pass() { echo "ok: $1"; passes=$((passes + 1)); }
failed() { echo "FAILED: $1"; failures=$((failures + 1)); }
finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}
