#!/usr/bin/env bash
# CI checks of deploy/ (docs/deployment.md):
#   .ci/deploy.sh unit    systemd-analyze verify deploy/wss.service (its ExecStart pointed at the
#                         freshly built binary, since /usr/local/bin/wss is not installed here);
#                         installs the `systemd` package when systemd-analyze is missing and
#                         apt-get is usable as root, else says why it is skipped.
#   .ci/deploy.sh config  wss config check deploy/wss.toml (the real configuration loader).
set -euo pipefail
cd "$(dirname "$0")/.."

unit() {
  if ! command -v systemd-analyze >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get install -y --no-install-recommends systemd >/dev/null
    else
      echo "SKIPPED: systemd-analyze is missing and cannot be installed here (needs root and apt-get)"
      return 0
    fi
  fi
  cargo build --quiet --locked --bin wss
  local dir
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  sed "s#/usr/local/bin/wss#$PWD/target/debug/wss#g" deploy/wss.service >"$dir/wss.service"
  # verify prints problems as warnings and exits 0 on some of them: fail on any output.
  local out
  out=$(systemd-analyze verify "$dir/wss.service" 2>&1) || { echo "$out"; return 1; }
  if [ -n "$out" ]; then
    echo "$out"
    return 1
  fi
  echo "deploy/wss.service: systemd-analyze verify found nothing to report"
}

config() {
  cargo run --quiet --locked --bin wss -- config check deploy/wss.toml
}

case "${1:-}" in
  unit) unit ;;
  config) config ;;
  *) echo "usage: $0 unit|config" >&2; exit 2 ;;
esac
