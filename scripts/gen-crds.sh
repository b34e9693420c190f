#!/usr/bin/env bash
# Regenerates crds/ (and the Helm chart's copy when present) from the Rust types.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked --bin fhirguard-operator -- crds >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run --quiet --locked --bin fhirguard-operator -- crds | python3 -c '
import sys, re, os
out = sys.argv[1]
docs = [d for d in sys.stdin.read().split("---\n") if d.strip()]
for d in docs:
    name = re.search(r"^  name: (\S+)$", d, re.M).group(1)
    open(os.path.join(out, name + ".yaml"), "w").write(d)
' "$tmp"
rm -f crds/*.yaml
cp "$tmp"/*.yaml crds/
if [ -d charts/fhirguard/crds ]; then
  rm -f charts/fhirguard/crds/*.yaml
  cp "$tmp"/*.yaml charts/fhirguard/crds/
fi
ls crds/
