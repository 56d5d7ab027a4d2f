#!/usr/bin/env bash
# Installs the real services observer's tests run against, caching everything built or
# downloaded under ~/.cache/observer (override with OBSERVER_CACHE): a second run only
# checks that each piece is there. Versions are in tools/versions.env.
#
#   Debian packages   etcd-server, prometheus (with promtool), prometheus-alertmanager, openssl
#   Go module proxy   kube-apiserver (tools/kube-apiserver), helm
#   Maven Central     an Elasticsearch 8 node (tools/elasticsearch)
set -euo pipefail

tools=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$tools/versions.env"
cache=${OBSERVER_CACHE:-$HOME/.cache/observer}
bin=$cache/bin
mkdir -p "$bin"

step() {  # step NAME COMMAND...: run a step and say how long it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "install-services: $name ready ($((SECONDS - start))s)"
}

need() {
  command -v "$1" >/dev/null || { echo "install-services: $1 is required ($2)" >&2; exit 1; }
}

debian_packages() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    # The packages' init scripts must not start system-wide daemons: tests run their own.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

go_env() {
  need go "Go 1.22 or newer"
  export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
}

kube_apiserver() {
  local target=$bin/kube-apiserver-v$KUBERNETES_VERSION
  [ -x "$target" ] && return
  go_env
  # -checklinkname=0: Kubernetes 1.30's dependencies predate newer Go's linkname checks.
  (cd "$tools/kube-apiserver" && go build -trimpath -ldflags='-s -w -checklinkname=0' -o "$target.tmp" .)
  mv "$target.tmp" "$target"
}

helm() {
  local target=$bin/helm-v$HELM_VERSION
  [ -x "$target" ] && return
  go_env
  local gobin
  gobin=$(mktemp -d)
  GOBIN=$gobin go install -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  mv "$gobin/helm" "$target"
  rmdir "$gobin"
}

elasticsearch() {
  need java "Java 17"
  need mvn "Maven 3"
  "$tools/elasticsearch/build.sh" >/dev/null
}

step "Debian packages" debian_packages
step "kube-apiserver v$KUBERNETES_VERSION" kube_apiserver
step "helm v$HELM_VERSION" helm
step "Elasticsearch" elasticsearch
