#!/usr/bin/env bash
# Fails when a module of authz-service imports a layer it must not (ARCHITECTURE.md, "Who may
# import whom"): config ← core ← observe ← verify ← runtime ← server. Grep is enough because
# every cross-layer reference in the crate is spelled `crate::<layer>`.
set -euo pipefail
cd "$(dirname "$0")/../authz-service/src"
fail=0
check() { # layer, forbidden layers...
  local layer=$1; shift
  local paths=("$layer")
  [ -f "$layer.rs" ] && paths+=("$layer.rs")
  for f in "$@"; do
    if grep -rnE "crate::$f\b" "${paths[@]}" 2>/dev/null; then
      echo "layer violation: $layer must not use crate::$f"; fail=1
    fi
  done
}
check config core observe verify runtime server
check core verify runtime server observe
check observe verify runtime server
check verify runtime server
check runtime server
# The core and verification name no async runtime, network or metrics library.
if grep -rnE "\b(tokio|tonic|reqwest|prometheus_client|envoy_types|axum|hyper)::" core config observe.rs verify; then
  echo "layer violation: the core, config and verify layers must not name tokio, tonic, reqwest, prometheus, envoy-types or axum"; fail=1
fi
[ $fail = 0 ] && echo "layers: ok"
exit $fail
