#!/usr/bin/env bash
# Validates deploy/ (see deploy/validate.py for the checks): every Kubernetes object against the
# API schemas of Kubernetes 1.30 (the oldest version the manifests support: native sidecars and
# the preStop sleep action are on by default from there) and 1.37, the overlays rendered with
# kustomize when a renderer is on PATH, and `amity-gateway check-config` on the gateway.toml the
# ConfigMap carries, with each workload's environment.
#
# Installs what it needs: python3-venv from Debian when missing, the pinned
# deploy/requirements.txt (kubernetes-validate and its dependencies) from PyPI into a cached
# virtualenv. Builds the gateway binary with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.30.0 1.37.0)
venv="${AMITY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/amity-gateway/deploy-venv}"

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "deploy: python3 >= 3.11 is needed (tomllib); on Debian: apt-get install python3" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "deploy: installing python3-venv"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
fi
# A no-op without network access once the pinned versions are installed.
"$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements.txt

# A kustomize renderer, if one is on PATH. Neither Debian bookworm (its kubernetes-client is
# 1.20, with kustomize v2, which reads none of these kustomizations) nor PyPI ships a usable
# one; without it validate.py reads the kustomizations with its own small stand-in.
renderer=""
if command -v kustomize >/dev/null; then
  renderer="kustomize build"
elif command -v kubectl >/dev/null; then
  minor=$(kubectl version --client -o json 2>/dev/null |
    "$venv/bin/python" -c 'import json,re,sys; print(re.sub(r"\D.*", "", json.load(sys.stdin)["clientVersion"]["minor"]))' ||
    echo 0)
  if ((minor >= 27)); then
    renderer="kubectl kustomize"
  else
    echo "deploy: kubectl 1.$minor embeds a kustomize older than v5; not used"
  fi
fi

cargo build -q --bin amity-gateway
gateway="${CARGO_TARGET_DIR:-target}/debug/amity-gateway"

args=()
for v in "${K8S_VERSIONS[@]}"; do args+=(--k8s "$v"); done
exec "$venv/bin/python" deploy/validate.py --gateway "$gateway" --renderer "$renderer" "${args[@]}"
