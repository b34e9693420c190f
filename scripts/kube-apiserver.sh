#!/usr/bin/env bash
# Build (once) a real kube-apiserver from Debian's `kubernetes` source package and print the
# path of the cached binary on stdout. Everything comes from the machine's configured Debian
# archive; no mirror is named here. See docs/testing.md for why this server and its limits.
#
# Cache: ${FHIRGUARD_CACHE:-~/.cache/fhirguard}/kube-apiserver-<srcversion>-<patch hash>
set -euo pipefail

CACHE=${FHIRGUARD_CACHE:-$HOME/.cache/fhirguard}
HERE=$(cd "$(dirname "$0")" && pwd)
PATCH="$HERE/kube-apiserver/reflect2-go119.patch"
mkdir -p "$CACHE"
log() { echo "kube-apiserver.sh: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

install_pkgs() {
  [ $# -gt 0 ] || return 0
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}

# To run the tests: etcd, always. To build the server: Go, rsync, dpkg-dev and make, only when
# no cached binary exists.
run_pkgs=()
command -v etcd >/dev/null || run_pkgs+=(etcd-server)
build_pkgs=()
command -v go >/dev/null || build_pkgs+=(golang-go)
command -v rsync >/dev/null || build_pkgs+=(rsync)
command -v dpkg-source >/dev/null || build_pkgs+=(dpkg-dev)
command -v make >/dev/null || build_pkgs+=(make)

patch_hash=$(sha256sum "$PATCH" | cut -c1-12)

# Fast path: a cached binary for any source version with this patch.
existing=$(ls -1 "$CACHE"/kube-apiserver-*-"$patch_hash" 2>/dev/null | head -n1 || true)
install_pkgs "${run_pkgs[@]}"
if [ -n "$existing" ] && [ -x "$existing" ]; then
  echo "$existing"
  exit 0
fi
install_pkgs "${build_pkgs[@]}"

# deb-src for the main archive only, derived from the machine's own sources file.
src_list=/etc/apt/sources.list.d/fhirguard-deb-src.sources
if [ ! -f "$src_list" ]; then
  log "enabling deb-src from /etc/apt/sources.list.d/debian.sources"
  python3 - "$src_list" <<'PY' | $SUDO tee "$src_list" >/dev/null
import sys
text = open("/etc/apt/sources.list.d/debian.sources").read()
out = []
for stanza in text.strip().split("\n\n"):
    lines = stanza.splitlines()
    uris = [l for l in lines if l.startswith("URIs:")]
    if not uris or "security" in uris[0]:
        continue
    out.append("\n".join("Types: deb-src" if l.startswith("Types:") else l for l in lines))
print("\n\n".join(out))
PY
  $SUDO apt-get update -qq >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fhirguard-k8s-src.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading the kubernetes source package"
apt-get source --download-only -qq kubernetes >&2
orig=$(ls -1 kubernetes_*.orig.tar.* | head -n1)
version=$(echo "$orig" | sed -E 's/^kubernetes_(.*)\.orig\.tar\..*$/\1/')
tar -xf "$orig"
src=$(find . -maxdepth 1 -mindepth 1 -type d | head -n1)
cd "$src"
log "patching vendored reflect2 for Go >= 1.18"
patch -p1 <"$PATCH" >&2
export GOPATH=$PWD/.go CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$CACHE/go-build
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
log "building kube-apiserver $version (about 6 minutes on 2 cores)"
make WHAT=cmd/kube-apiserver >&2
out="$CACHE/kube-apiserver-$version-$patch_hash"
cp _output/bin/kube-apiserver "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
