#!/usr/bin/env bash
# Build `crdserver`: the upstream apiextensions-apiserver (Kubernetes' CRD server) as one binary,
# for tests that need a real API server with the TrainJob CRD (see tests/k8s/README.md).
#
# Go sources and toolchain come from Debian sid packages, downloaded with a private apt state
# (nothing is installed system-wide) and unpacked under a build dir. The binary is cached
# outside the clone, keyed by the source package version and main.go, so CI rebuilds only
# when either changes. Prints the path of the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${SFT_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-provider-sft}
W=$CACHE/crdserver-build
mkdir -p "$W"/apt/lists/partial "$W"/apt/cache/archives/partial "$W"/debs "$W"/root .build
MIRROR=$(grep -hoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR%/} sid main" > "$W/apt/sources.list"
A=(-o Dir::State::Lists="$W/apt/lists" -o Dir::Etc::SourceList="$W/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o Dir::Cache="$W/apt/cache" -o APT::Sandbox::User=root -q)
apt-get "${A[@]}" update >/dev/null
VERSION=$(apt-cache "${A[@]}" show golang-k8s-apiextensions-apiserver-dev | awk '/^Version:/{print $2; exit}')
KEY=$(printf '%s\n' "$VERSION" | cat - crdserver/main.go | sha256sum | cut -c1-16)
BIN=$CACHE/crdserver-$KEY
if [ ! -x "$BIN" ]; then
  PKGS=$(apt-cache "${A[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances golang-k8s-apiextensions-apiserver-dev | grep -E '^golang-.*-dev$' | sort -u)
  GOV=$(apt-cache "${A[@]}" depends golang-go | grep -oE "golang-1\.[0-9]+" | head -1)
  rm -rf "$W/debs"/* "$W/root"; mkdir -p "$W/root"
  (cd "$W/debs" && apt-get "${A[@]}" download $PKGS "$GOV-go" "$GOV-src" >/dev/null)
  for f in "$W"/debs/*.deb; do dpkg-deb -x "$f" "$W/root"; done
  export GOROOT="$W/root/usr/lib/go-${GOV#golang-}" GOPATH="$W/root/usr/share/gocode" GOCACHE="$W/gocache" \
         GO111MODULE=off GOFLAGS= GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0
  (cd crdserver && "$GOROOT/bin/go" build -ldflags='-s -w' -o "$BIN.tmp" .)
  mv "$BIN.tmp" "$BIN"
  # 2+ GB unpacked and 1.5 GB of Go build cache: a rebuild (a new source version or main.go)
  # is rare, and a CI machine's disk is not ours to fill.
  rm -rf "$W/debs" "$W/root" "$W/gocache"
fi
ln -sf "$BIN" .build/crdserver
echo "$BIN"
