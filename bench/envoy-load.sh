#!/usr/bin/env bash
# End-to-end load: wrk → real Envoy (direct_response, so only the auth path differs) with
# ext_authz → fhirguard-authz (release build). Prints requests/s and latency for
#   none     ext_authz disabled on the route (Envoy alone)
#   floor    fhirguard with an unauthenticatedAccess policy: the cost of any ext_authz call
#   basic    Basic credentials, SHA-512-crypt (cached after the first request)
#   token    an RS256 bearer token (cached after the first request), user/*.rs
# and the ratios basic/floor and token/floor: what fhirguard's own work costs beyond the
# ext_authz round trip. Needs wrk (apt) and openssl. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
scripts/setup-envoy.sh
cargo build -q --release -p fhirguard-authz
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

cat > "$work/envoy.yaml" <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 19901}}}
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 18000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: none
              domains: ["none.test"]
              routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: "ok"}}}]
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  disabled: true
            - name: authz
              domains: ["*"]
              routes: [{match: {prefix: "/"}, direct_response: {status: 200, body: {inline_string: "ok"}}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {code: 503}
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 2s}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
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

RUST_LOG=warn target/release/fhirguard-authz serve --config-dir "$work/config" --grpc-addr 127.0.0.1:19001 --http-addr 127.0.0.1:19090 2>"$work/authz.log" & pids+=($!)
.venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --log-level error --base-id 77 2>"$work/envoy.log" & pids+=($!)
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:19090/readyz >/dev/null 2>&1 && curl -sf http://127.0.0.1:19901/ready >/dev/null 2>&1 && break
  sleep 0.2
done

url=http://127.0.0.1:18000/fhir/Observation/1
basic="Basic $(printf 'bench:bench-pw' | base64 -w0)"
declare -A rps p99
run() {
  local name=$1; shift
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")
  [ "$code" = 200 ] || { echo "$name: expected 200, got $code"; exit 1; }
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" "$url" 2>&1 | sed 's/^-H //')
  rps[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99[$name]=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  printf '%-6s %10s req/s   p99 %8s   non-2xx %s\n' "$name" "${rps[$name]}" "${p99[$name]}" "${non2xx:-0}"
}
echo "wrk -t1 -c$CONNS -d$DURATION, Envoy --concurrency 1, fhirguard release build"
run none  -H "Host: none.test"
run floor -H "Host: floor.test"
run basic -H "Host: ehr.test" -H "Authorization: $basic"
run token -H "Host: ehr.test" -H "Authorization: Bearer $token"
awk -v n="${rps[none]}" -v f="${rps[floor]}" -v b="${rps[basic]}" -v t="${rps[token]}" 'BEGIN {
  printf "ratio floor/none %.2f   basic/floor %.2f   token/floor %.2f\n", f/n, b/f, t/f }'
