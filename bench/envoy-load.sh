#!/usr/bin/env bash
# End-to-end load: wrk → real Envoy (direct_response, so only the auth path differs) with
# ext_authz → an authorization server. Rows:
#   none     ext_authz disabled on the route (Envoy alone)
#   null     a do-nothing tonic ext_authz server (examples/null_authz.rs: same tonic, tokio and
#            server setup as fhirguard, answers OK without looking): the yardstick
#   floor    fhirguard with an unauthenticatedAccess policy (classification, no credentials)
#   basic    Basic credentials, SHA-512-crypt (cached after the first request)
#   token    an RS256 bearer token (cached after the first request), user/*.rs
#   module   the same token, decided in-process by the fhirguard dynamic module (no ext_authz)
#   jwt      Envoy's own jwt_authn filter, same token, with its jwt_cache
#   jwt-nc   Envoy's own jwt_authn filter without a cache (a signature check per request)
# For every row: requests/s, p99 latency, and for the ext_authz rows the server's own CPU time
# per Check (utime+stime from /proc over the run, divided by the requests wrk completed).
# Then fhirguard against the yardstick: CPU ratio (target ≤ 1.10), throughput ratio (≥ 0.95)
# and p99 difference (≤ +0.3 ms). Every row also shows Envoy's own CPU per request, and the
# in-process rows (module, jwt, jwt-nc) their throughput against no auth: the module's goal is
# to be at least as fast as Envoy's cached jwt_authn in the same run.
# INPROCESS_ONLY=1 runs only the rows without an ext_authz server (none, module, jwt, jwt-nc).
# Needs wrk (apt) and openssl. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
scripts/setup-envoy.sh
inprocess_only=${INPROCESS_ONLY:-0}
[ "$inprocess_only" = 1 ] || cargo build -q --release -p fhirguard-authz --bin fhirguard-authz --example null_authz
cargo build -q --release -p fhirguard-envoy-module
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
openssl genrsa -out "$work/key.pem" 2048 2>/dev/null
n=$(openssl rsa -in "$work/key.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
jwks="{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"bench\",\"alg\":\"RS256\",\"use\":\"sig\",\"n\":\"$n\",\"e\":\"AQAB\"}]}"
now=$(date +%s)
header=$(printf '{"alg":"RS256","kid":"bench","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"https://idp.bench","aud":"fhir","sub":"bench","scope":"user/*.rs","exp":%d}' $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$work/key.pem" | b64url)
token="$header.$payload.$sig"
hash=$(openssl passwd -6 -salt benchsal bench-pw)

mkdir -p "$work/config"
python3 - "$work/config/config.json" "$hash" "$jwks" <<'PY'
import json, sys
path, h, jwks = sys.argv[1:4]
def policy(name, **auth):
    return {"namespace": "bench", "name": name, "basePath": "/fhir", **auth}
cfg = {"version": 1, "generation": 1, "policies": [
    policy("floor", hosts=["floor.test"], unauthenticatedAccess=True),
    policy("ehr", hosts=["ehr.test"], authentication={
        "basic": {"htpasswd": f"bench:{h}\n"},
        "jwt": {"providers": [{"name": "idp", "issuer": "https://idp.bench", "audiences": ["fhir"],
                               "algorithms": ["RS256"], "jwks": {"document": jwks}}]}}),
]}
open(path, "w").write(json.dumps(cfg))
PY

# One listener: name (also its stat prefix), port, virtual hosts and HTTP filters before the
# router, as YAML already indented for their places.
listener() {
  cat <<YAML
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            virtual_hosts:
$3
          http_filters:
$4
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
YAML
}
# A virtual host answering 200 "ok" itself (direct_response: only the auth path differs).
ok_host() {
  printf '            - name: %s\n              domains: [%s]\n              routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: "ok"}}}]\n' "$1" "$2"
}
ext_authz() {
  cat <<YAML
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {code: 503}
              grpc_service: {envoy_grpc: {cluster_name: $1}, timeout: 2s}
YAML
}
# Envoy's own jwt_authn for the token's issuer; $1 adds provider settings (the cache).
jwt_authn() {
  cat <<YAML
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: https://idp.bench
                  audiences: [fhir]
                  local_jwks: {inline_string: '$jwks'}$1
              rules: [{match: {prefix: "/"}, requires: {provider_name: idp}}]
YAML
}
module_filter='          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {name: fhirguard_envoy_module}
              filter_name: fhirguard
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '"'"'{"config_dir": "'"$work"'/config"}'"'"
no_authz_host="$(ok_host none '"none.test"')
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  disabled: true
$(ok_host authz '"*"')"

{
cat <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 19901}}}
static_resources:
  listeners:
YAML
listener l 18000 "$no_authz_host" "$(ext_authz authz)"
listener yard 18001 "$(ok_host yardstick '"*"')" "$(ext_authz null_authz)"
listener module 18002 "$(ok_host all '"*"')" "$module_filter"
listener jwt 18003 "$(ok_host all '"*"')" "$(jwt_authn $'\n                  jwt_cache_config: {jwt_cache_size: 1000}')"
listener jwtnc 18004 "$(ok_host all '"*"')" "$(jwt_authn '')"
cat <<YAML
  clusters:
  - name: null_authz
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: null_authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 19002}}}}]}]
  - name: authz
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 19001}}}}]}]
YAML
} > "$work/envoy.yaml"

if [ "$inprocess_only" != 1 ]; then
  RUST_LOG=warn target/release/fhirguard-authz serve --config-dir "$work/config" --grpc-addr 127.0.0.1:19001 --http-addr 127.0.0.1:19090 2>"$work/authz.log" & pids+=($!)
  fhirguard_pid=$!
  target/release/examples/null_authz 127.0.0.1:19002 2>"$work/null.log" & pids+=($!)
  null_pid=$!
fi
touch "$work/authz.log"
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/release" .venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id 77 2>"$work/envoy.log" & pids+=($!)
envoy_pid=$!
for _ in $(seq 1 100); do
  { [ "$inprocess_only" = 1 ] || curl -sf http://127.0.0.1:19090/readyz >/dev/null 2>&1; } \
    && curl -sf http://127.0.0.1:19901/ready >/dev/null 2>&1 && break
  sleep 0.2
done

tck=$(getconf CLK_TCK)
# utime+stime of a process (and all its threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
basic="Basic $(printf 'bench:bench-pw' | base64 -w0)"
declare -A rps p99 cpu ecpu
run() {
  local name=$1 pid=$2 url=$3; shift 3
  local code
  code=$(curl -s -o /dev/null -w "%{http_code}" "$@" "$url" || true)
  [ "$code" = 200 ] || { echo "$name: expected 200, got $code"; cat "$work/envoy.log" "$work/authz.log" | tail -20; exit 1; }
  local before after out requests
  local ebefore eafter
  before=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  ebefore=$(cpu_ticks "$envoy_pid")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" "$url" 2>&1)
  eafter=$(cpu_ticks "$envoy_pid")
  after=$( [ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
  rps[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  # p99 in milliseconds, whatever unit wrk chose.
  p99[$name]=$(awk '$1=="99%" { v=$2; u=v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    f = (u=="us") ? 0.001 : (u=="s") ? 1000 : 1; printf "%.3f", v*f }' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  if [ "$pid" = - ]; then
    cpu[$name]=-
  else
    cpu[$name]=$(awk -v d=$((after - before)) -v t="$tck" -v n="$requests" 'BEGIN { printf "%.1f", d / t * 1e6 / n }')
  fi
  ecpu[$name]=$(awk -v d=$((eafter - ebefore)) -v t="$tck" -v n="$requests" 'BEGIN { printf "%.1f", d / t * 1e6 / n }')
  printf '%-6s %10s req/s   p99 %7s ms   server CPU %6s µs/Check   Envoy CPU %6s µs/req   non-2xx %s\n' \
    "$name" "${rps[$name]}" "${p99[$name]}" "${cpu[$name]}" "${ecpu[$name]}" "${non2xx:-0}"
}
echo "wrk -t1 -c$CONNS -d$DURATION, Envoy --concurrency 1, release builds"
run none  -            http://127.0.0.1:18000/fhir/Observation/1 -H "Host: none.test"
if [ "$inprocess_only" != 1 ]; then
  run null  "$null_pid"  http://127.0.0.1:18001/fhir/Observation/1
  run floor "$fhirguard_pid" http://127.0.0.1:18000/fhir/Observation/1 -H "Host: floor.test"
  run basic "$fhirguard_pid" http://127.0.0.1:18000/fhir/Observation/1 -H "Host: ehr.test" -H "Authorization: $basic"
  run token "$fhirguard_pid" http://127.0.0.1:18000/fhir/Observation/1 -H "Host: ehr.test" -H "Authorization: Bearer $token"
fi
run module -           http://127.0.0.1:18002/fhir/Observation/1 -H "Host: ehr.test" -H "Authorization: Bearer $token"
# How many of the module's decisions were made inline on Envoy's worker, and how many had to
# wait on the module's runtime (a cached token should never park).
curl -s "http://127.0.0.1:19901/stats?filter=fhirguard_(decisions|parked|check_duration)" | sed 's/^/         module stat: /'
run jwt    -           http://127.0.0.1:18003/fhir/Observation/1 -H "Authorization: Bearer $token"
run jwt-nc -           http://127.0.0.1:18004/fhir/Observation/1 -H "Authorization: Bearer $token"
echo "against no auth: throughput ratio and Envoy CPU added per request (module goal: ≥ jwt)"
for row in null token module jwt jwt-nc; do
  [ -n "${rps[$row]:-}" ] || continue
  awk -v r="$row" -v q="${rps[$row]}" -v q0="${rps[none]}" -v e="${ecpu[$row]}" -v e0="${ecpu[none]}" 'BEGIN {
    printf "%-6s throughput %.2f x   Envoy CPU %+.1f µs/req\n", r, q/q0, e-e0 }'
done
[ "$inprocess_only" = 1 ] && exit 0
echo "fhirguard against the do-nothing server (targets: CPU ≤ 1.10, throughput ≥ 0.95, p99 ≤ +0.30 ms)"
for row in floor basic token; do
  awk -v r="$row" -v c="${cpu[$row]}" -v c0="${cpu[null]}" -v q="${rps[$row]}" -v q0="${rps[null]}" \
      -v p="${p99[$row]}" -v p0="${p99[null]}" 'BEGIN {
    printf "%-6s CPU %.2f x   throughput %.2f x   p99 %+.2f ms\n", r, c/c0, q/q0, p-p0 }'
done
