#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the integration tests against the
# real local stack. Starts the stack if it is not running (and stops it again afterwards in
# that case), so it works the same on a fresh machine, a developer's laptop and CI.
#
# Env: CARGO_TARGET_DIR as usual; TOPK_KEEP_STACK=1 leaves a stack it started running.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { echo "==> $*" >&2; }

started_stack=0
# (Each status is read whole first: with pipefail, `grep -q` ending a pipe early fails it.)
stack_status=$(scripts/stack.sh status)
if ! grep -q "clickhouse: running" <<<"$stack_status" ||
   ! grep -q "kafka: running" <<<"$stack_status" ||
   ! grep -q "s3: running" <<<"$stack_status"; then
  started_stack=1
fi
# tests/cluster starts the local ClickHouse cluster itself; stopped again if it was not running.
started_cluster=0
cluster_status=$(scripts/stack.sh status cluster)
if grep -qv ": running" <<<"$cluster_status"; then
  started_cluster=1
fi
cleanup() {
  if [ "$started_stack" = 1 ] && [ "${TOPK_KEEP_STACK:-0}" != 1 ]; then
    scripts/stack.sh down || true
  fi
  if [ "$started_cluster" = 1 ] && [ "${TOPK_KEEP_STACK:-0}" != 1 ]; then
    scripts/stack.sh down cluster || true
  fi
}
trap cleanup EXIT

step "local stack"
scripts/stack.sh up
# shellcheck disable=SC1091
source .stack/env

step "schemathesis (PyPI; tests/it/api/conformance.rs runs it against the live API)"
TOPK_SCHEMATHESIS=$(scripts/install-schemathesis.sh)
export TOPK_SCHEMATHESIS

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --bins (integration tests run the binaries as processes)"
cargo build --workspace --bins --locked

step "cargo test (unit and integration tests; tests/outage, which stops services, runs alone: cargo runs test binaries one at a time)"
results=$(mktemp)
trap 'rm -f "$results"; cleanup' EXIT
set +e
cargo test --workspace --locked -- --test-threads 4 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo's last line is the last crate's doc-tests).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
exit "$status"
