#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, in-process gRPC, real Envoy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-envoy.sh
export FHIRGUARD_REQUIRE_ENVOY=1
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the config types build without the server feature (what the operator links)"
cargo check -p fhirguard-authz --no-default-features --locked
echo "== cargo test"
cargo test --workspace --locked
