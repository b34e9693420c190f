#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, in-process gRPC, real Envoy,
# real kube-apiserver + etcd).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-envoy.sh
export FHIRGUARD_REQUIRE_ENVOY=1
echo "== kube-apiserver (built once from Debian's kubernetes source package, then cached)"
FHIRGUARD_KUBE_APISERVER=$(scripts/kube-apiserver.sh)
export FHIRGUARD_KUBE_APISERVER FHIRGUARD_REQUIRE_KUBE=1
echo "using $FHIRGUARD_KUBE_APISERVER"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the config types build without the server feature (what the operator links)"
cargo check -p fhirguard-authz --no-default-features --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "TOTAL: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$log"
