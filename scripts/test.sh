#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, in-process gRPC, real Envoy,
# real kube-apiserver + etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
# A test whose real binary is missing fails; the opt-outs for local runs must not reach this
# run, which installs every binary itself.
unset FHIRGUARD_SKIP_MISSING FHIRGUARD_SKIP_ENVOY FHIRGUARD_SKIP_HELM FHIRGUARD_SKIP_KUBE
scripts/setup-envoy.sh
scripts/setup-helm.sh
echo "== kube-apiserver (built once from Debian's kubernetes source package, then cached)"
FHIRGUARD_KUBE_APISERVER=$(scripts/kube-apiserver.sh)
export FHIRGUARD_KUBE_APISERVER
echo "using $FHIRGUARD_KUBE_APISERVER"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== layers import only the layers beneath them (ARCHITECTURE.md)"
scripts/check-layers.sh
echo "== the layers build alone: config + core (what the operator links), then + verify (what an in-process host links)"
cargo check -p fhirguard-authz --no-default-features --locked
cargo check -p fhirguard-authz --no-default-features --features verify --locked
# The core and CPU-only verification must not pull in an async runtime, gRPC, HTTP clients or
# metrics: a host that brings its own threads links exactly this. (The Envoy dynamic module,
# envoy-module/, links the runtime layer on a tokio runtime of its own; its tests, run by the
# workspace test below, load the .so the same cargo run builds into real Envoy.)
forbidden='^(tokio|tonic|reqwest|prometheus-client|hyper|axum|notify|envoy-types) '
if cargo tree -p fhirguard-authz --no-default-features --features verify -e normal --prefix none --locked \
    | grep -E "$forbidden"; then
  echo "the core + verify build depends on the crates listed above"; exit 1
fi
echo "== cargo test (property tests: ${PROPTEST_CASES:=256} cases each)"
export PROPTEST_CASES
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --skip fhirguard_under_faults 2>&1 | tee "$log"
echo "== the fault suite: two replicas behind real Envoy while their dependencies fail"
cargo test --workspace --locked --test faults -- --nocapture 2>&1 | tee -a "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "TOTAL: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$log"
echo "== the local demo (README's first command), transcript checked"
transcript=$(mktemp)
trap 'rm -f "$log" "$transcript"' EXIT
scripts/demo.sh 2>&1 | tee "$transcript"
for want in "^  200  GET /Patient/1 as alice " "^  400  GET /Patient/%2e%2e/admin" "^  401  GET /Patient/1, no credentials " \
    "^  403  DELETE /Patient/1 as bob" "^  200  token: GET /Observation?patient=123 " "^  403  token: GET /Observation?patient=456" \
    "^  401  token: expired" "^all 16 requests answered as expected$"; do
  grep -q -- "$want" "$transcript" || { echo "demo transcript lacks: $want"; exit 1; }
done
echo "demo transcript: ok"
