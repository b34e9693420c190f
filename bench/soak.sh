#!/usr/bin/env bash
# Soak (not part of CI): fhirguard-authz (release build) under distinct ~14 KiB tokens with
# 600 scopes, each verified and cached, and wrong Basic passwords, for MINUTES (default 8).
# Prints the service's RSS every 10 s next to what its caches account for, then the plateau
# against the chart's memory limit (256 MiB). Everything on 127.0.0.1.
#
#   bench/soak.sh                                   # 8 minutes, default budget (64 MiB)
#   MINUTES=2 SOAK_ARGS="--cache-memory-mib 32" bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-8}
cargo build -q --release -p fhirguard-authz --bin fhirguard-authz --example soak
# shellcheck disable=SC2086
exec target/release/examples/soak --authz-bin target/release/fhirguard-authz \
  --minutes "$MINUTES" --limit-mib 256 ${SOAK_ARGS:-}
